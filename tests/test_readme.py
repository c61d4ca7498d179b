"""The README's Python API snippet runs as written, on the workspace `facekd demo` builds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_the_readme_python_snippet_runs_as_written(tmp_path):
    code = re.search(r"## Python API.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    r = subprocess.run([sys.executable, "-m", "facekd.cli", "demo", "-w", "demo",
                        "--identities", "50", "--images", "6", "--request-images", "10"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "FACEKD_WORKSPACE": ""})
    assert r.returncode in (0, 3), r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "chance rank-1" in r.stdout and "photos" in r.stdout
