"""Tests against the real facenet-pytorch and insightface (run by ``ci/real_libs.sh`` in a venv of
their own; each test module skips with a reason where its library is not installed).

The seeded model builders of the main suite (``tests/``) are shared: that folder goes on the path.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
