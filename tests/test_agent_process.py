"""The agent as a real process: SIGTERM finishes every file; SIGKILL then restart loses and duplicates nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import capture_files, fake_component, leftover_progs, records_by_method, robot_config, write_config

SENSOR = "sensor/env/Readings"
ARM = "arm/arm1/JointPositions"


def _config(tmp_path: Path) -> Path:
    comps = [
        fake_component("env", "sensor", [{"method": "Readings", "capture_frequency_hz": 10}]),
        fake_component("arm1", "arm", [{"method": "JointPositions", "capture_frequency_hz": 1}]),
    ]
    return write_config(tmp_path / "robot.json", robot_config(tmp_path / "capture", comps))


def _runs(log: Path) -> int:
    return log.read_text().count("agent running") if log.exists() else 0


def _start(config: Path, log: Path) -> tuple[subprocess.Popen, float]:
    """Start `capsync run` logging to `log`; returns it once it says it is running, and when that was."""
    before = _runs(log)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "capsync", "run", str(config), "--log-format", "json"],
                                stdout=out, stderr=out, env=env)
    deadline = time.monotonic() + 30
    while _runs(log) == before:
        assert proc.poll() is None, f"agent exited early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"agent did not start:\n{log.read_text()}"
        time.sleep(0.02)
    return proc, time.monotonic()


def _assert_on_grid(records: list, period_ns: int) -> None:
    """Requested times increase by exactly one period (no drift, no duplicates, no holes)."""
    times = [r.requested_ns for r in records]
    assert all(abs((b - a) - period_ns) < 1_000 for a, b in zip(times, times[1:])), "off the tick grid"
    assert all(r.received_ns >= r.requested_ns for r in records)


def test_sigterm_finishes_every_file_with_expected_counts(tmp_path):
    config, log = _config(tmp_path), tmp_path / "agent.log"
    proc, _ = _start(config, log)
    time.sleep(10.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0, log.read_text()
    capture = tmp_path / "capture"
    assert not leftover_progs(capture)
    recs = records_by_method(capture)
    assert 98 <= len(recs[SENSOR]) <= 102, len(recs[SENSOR])
    assert 9 <= len(recs[ARM]) <= 11, len(recs[ARM])
    _assert_on_grid(recs[SENSOR], 100_000_000)
    _assert_on_grid(recs[ARM], 1_000_000_000)


def test_sigkill_then_restart_recovers_without_loss_or_duplicates(tmp_path):
    config, log = _config(tmp_path), tmp_path / "agent.log"
    capture = tmp_path / "capture"
    proc, t0 = _start(config, log)
    time.sleep(3.0)
    proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    proc.wait(timeout=5)
    assert leftover_progs(capture), "a kill -9 mid-capture should leave an open .prog"

    proc, _ = _start(config, log)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0, log.read_text()
    assert not leftover_progs(capture)
    assert "recovered capture file left by a crash" in log.read_text()

    recs = records_by_method(capture)[SENSOR]
    times = [r.requested_ns for r in recs]
    assert len(times) == len(set(times)), "a record was duplicated"
    # The first run's records are a gap-free run of 100 ms ticks: kill -9 lost nothing appended
    # (each record reaches the OS before the next tick). The restart opens a new grid.
    gaps = [b - a for a, b in zip(times, times[1:])]
    restart_gap = max(gaps)
    first_run = times[: gaps.index(restart_gap) + 1]
    assert all(abs(g - 100_000_000) < 1_000 for g in gaps[: len(first_run) - 1])
    expected = (killed_at - t0) * 10
    assert expected - 3 <= len(first_run) <= expected + 12
