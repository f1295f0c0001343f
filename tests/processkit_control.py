"""Running `capsync run` as a real process for a test, and stopping it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def running_agent(tmp_path: Path, config: dict) -> Iterator[Path]:
    """Write `config`, run `capsync run` on it until its control endpoint answers, yield the config
    path, then SIGTERM it and check it exited 0."""
    path = tmp_path / "robot.json"
    path.write_text(json.dumps(config))
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "capsync", "run", str(path), "--log-format", "json"],
                                stdout=out, stderr=out, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 30
        while "control endpoint listening" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()
