"""`capsync run` interrupted again while stopping (issue 16, item 11): one line, exit 130, no
KeyboardInterrupt traceback. The stop is made slow the way a robot's can be: its MongoDB sink
drains queued readings to a server that accepts connections and never answers."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.processkit import REPO, wait_for


def test_a_second_ctrl_c_while_stopping_is_one_line_and_exit_130(tmp_path: Path) -> None:
    with socket.socket() as silent:  # a "MongoDB" that takes connections and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        config = tmp_path / "robot.json"
        config.write_text(json.dumps({
            "network": {"bind_address": "127.0.0.1:0"},
            "services": [{"name": "dm", "type": "data_manager", "attributes": {
                "capture_dir": str(tmp_path / "capture"), "sync_disabled": True,
                "mongo_capture_config": {"uri": f"mongodb://127.0.0.1:{silent.getsockname()[1]}/?directConnection=true"}}}],
            "components": [{"name": "env", "type": "sensor", "model": "fake", "service_configs": [
                {"type": "data_manager", "attributes": {"capture_methods": [
                    {"method": "Readings", "capture_frequency_hz": 20}]}}]}],
        }))
        log = tmp_path / "agent.log"
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "capsync", "run", str(config), "--status-interval", "0"],
                                    stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            wait_for(lambda: "agent running" in log.read_text(), 30, "the agent to start")
            time.sleep(1.0)  # readings queue up for the sink that never gets an answer
            proc.send_signal(signal.SIGINT)
            wait_for(lambda: "stopping: finishing open capture files" in log.read_text(), 10, "the stop to begin")
            time.sleep(0.3)  # the sink's drain now waits for the silent server (up to 2 s)
            assert proc.poll() is None, log.read_text()
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=15)
        finally:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert code == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert "interrupted again while stopping; the next start recovers every open capture file" in text.splitlines()[-1]
    assert list((tmp_path / "capture").rglob("*.prog")) or list((tmp_path / "capture").rglob("*.capture"))
