"""Progress on long work when stderr is not a terminal: periodic plain lines (facekd.progress)."""

from __future__ import annotations

import subprocess
import sys

from facekd.progress import LineProgress, tqdm


def test_a_log_gets_one_line_per_interval_with_count_rate_and_time_left(monkeypatch, capsys):
    monkeypatch.setenv("FACEKD_PROGRESS_INTERVAL", "0")
    with LineProgress(total=4, desc="enroll", unit="img") as bar:
        for _ in range(2):
            bar.update(1)
        bar.set_postfix(added=2)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("enroll: 1/4 img (25%)") and "img/s" in lines[0]
    assert "left" in lines[0] and "added=2" in lines[-1] and "done in" in lines[-1]


def test_a_short_task_prints_nothing(monkeypatch, capsys):
    monkeypatch.setenv("FACEKD_PROGRESS_INTERVAL", "10")
    assert list(LineProgress(range(3), desc="quick")) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_the_cli_reports_progress_in_a_log_and_not_with_json(tmp_path, synthetic_photos):
    env = {"FACEKD_PROGRESS": "1", "FACEKD_PROGRESS_INTERVAL": "0", "PATH": "/usr/bin:/bin"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "facekd.cli", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, env=env, timeout=300)
    ws = tmp_path / "ws"
    assert run("init", "--encoder", "samples", "--aligned", "-w", ws).returncode == 0
    r = run("enroll", synthetic_photos[0], "-w", ws)
    assert r.returncode == 0 and "enroll: " in r.stderr and "img/s" in r.stderr, r.stderr
    r = run("identities", "--json", "-w", ws)
    assert r.returncode == 0 and r.stderr == ""


def test_disabled_progress_is_tqdms_silent_bar():
    bar = tqdm(range(2), disable=True)
    assert list(bar) == [0, 1]
