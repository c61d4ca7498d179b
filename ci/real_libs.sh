#!/usr/bin/env bash
# Parity against the real facenet-pytorch and insightface, in a venv of their own.
#
# facenet-pytorch 2.6.0 pins torch<2.3 and insightface pulls opencv-python next to facekd's
# opencv-python-headless (two wheels writing one cv2 module), so neither goes into the project's
# .venv: this job builds .venv-real-libs (no --system-site-packages), installs facekd, facenet-pytorch
# with --no-deps and insightface, and runs tests_real_libs/ there.
# Exit 0 with "SKIPPED: reason" when the packages cannot be installed (no network, a failed build);
# exit 1 on a test failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
venv=${FACEKD_REAL_LIBS_VENV:-.venv-real-libs}
INSIGHTFACE=${FACEKD_INSIGHTFACE_VERSION:-2.1}
FACENET=2.6.0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

skip() {
  echo "real-libs: SKIPPED: $1" >&2
  tail -n 5 "$log" | sed 's/^/real-libs:   /' >&2
  exit 0
}

python3 -m venv "$venv" >"$log" 2>&1 || skip "cannot create a virtual environment"
py="$venv/bin/python"
"$py" -m pip install -q --no-compile "torch==2.13.0" -e . pytest >"$log" 2>&1 \
  || skip "facekd and its dependencies cannot be installed"
"$py" -m pip install -q --no-compile "insightface==$INSIGHTFACE" >"$log" 2>&1 \
  || skip "insightface==$INSIGHTFACE or one of its dependencies cannot be installed or built"
# --no-deps last: it pins torch<2.3, numpy<2 and torchvision, none of which its network needs
"$py" -m pip install -q --no-compile --no-deps "facenet-pytorch==$FACENET" >"$log" 2>&1 \
  || skip "facenet-pytorch==$FACENET cannot be installed (no network or index?)"
"$py" -c "import insightface.app, insightface.model_zoo" >"$log" 2>&1 \
  || skip "insightface==$INSIGHTFACE installed but does not import"

# The tests themselves: any failure fails the job.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$py" -m pytest -q -p no:cacheprovider \
  -W 'ignore:`estimate` is deprecated:FutureWarning' tests_real_libs
status=$?
if [ "$status" -ne 0 ]; then
  echo "real-libs: FAILED (pytest status $status)" >&2
  exit 1
fi
echo "real-libs: ok"
