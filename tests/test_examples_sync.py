"""The example configs sync as they are, and the demo keeps its part's secret and its port from one run to
the next (issue 16 item 14): real demo processes (an embedded cloud plus an agent), real `capsync sync`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from capsync.actors.demo import DEFAULT_PORT, demo_port
from capsync.runtime.config import load_config, parse_config
from tests.helpers import free_port
from tests.processkit import REPO, CloudReader, wait_for

CONFIGS = REPO / "configs"
_QUERY = re.compile(r"curl -u ([^:\s]+):(\S+) (http://\S+)/v1/files")


class Demo:
    """`python -m capsync.actors.demo --config CONFIG` in `cwd`, until stop()."""

    def __init__(self, cwd: Path, config: Path, *args: str) -> None:
        self.log = cwd / "demo.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "capsync.actors.demo", "--config", str(config), *args],
                                     cwd=cwd, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        m = wait_for(lambda: _QUERY.search(self.log.read_text()), 30, "the demo to start")
        self.part, self.secret, self.url = m.group(1), m.group(2), m.group(3)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=30) == 0, self.log.read_text()
        return self.log.read_text()


def _workdir(tmp_path: Path) -> Path:
    (tmp_path / "configs").symlink_to(CONFIGS)  # the examples' relative paths (sample images) as in the repo
    return tmp_path


@pytest.mark.parametrize("name", ["image-replay.json", "system-monitor.json", "remote-main.json"])
def test_an_example_config_syncs_as_it_is(tmp_path: Path, name: str) -> None:
    config = load_config(CONFIGS / name)
    demo = Demo(_workdir(tmp_path), CONFIGS / name, "--port", "0")
    try:
        assert (demo.part, demo.secret) == (config.cloud.id, config.cloud.secret)  # the config's own, unchanged
        with CloudReader(demo.url, config.cloud.secret, config.cloud.id) as cloud:
            def synced() -> bool:
                # `capsync sync` asks the demo's agent for a pass; its files may still be open on the first asks
                done = subprocess.run([sys.executable, "-m", "capsync", "sync", str(CONFIGS / name), "--json"],
                                      capture_output=True, text=True, timeout=60, cwd=tmp_path)
                assert done.returncode in (0, 1) and json.loads(done.stdout)["failed"] == 0, (done.stdout, done.stderr)
                return bool(cloud.files())
            wait_for(synced, 60, f"{name}'s files in the cloud")
    finally:
        demo.stop()


def test_the_demo_keeps_its_secret_and_port_across_runs(tmp_path: Path) -> None:
    doc = json.loads((CONFIGS / "demo.json").read_text())
    del doc["cloud"]["secret"]  # without a secret in the config, the demo makes one once and keeps it
    config = tmp_path / "robot.json"
    config.write_text(json.dumps(doc))
    port = str(free_port())
    first = Demo(_workdir(tmp_path), config, "--port", port)
    assert "can be read by other users" not in first.stop()  # the demo makes its cloud dir private, as serve does
    second = Demo(tmp_path, config, "--port", port)
    try:
        assert (second.secret, second.url) == (first.secret, first.url)
        assert httpx.get(f"{second.url}/v1/files", auth=(second.part, first.secret)).status_code == 200
    finally:
        second.stop()
    assert (tmp_path / ".demo" / "cloud" / "demo-secrets" / "demo-part").stat().st_mode & 0o077 == 0


def test_the_demo_port_comes_from_the_config() -> None:
    def cfg(address: str) -> object:
        return parse_config(json.dumps({"cloud": {"id": "p", "secret": "s", "app_address": address}}))

    assert demo_port(cfg("http://127.0.0.1:8080"), None) == 8080
    assert demo_port(cfg("https://cloud.example.com"), None) == DEFAULT_PORT
    assert demo_port(cfg("http://127.0.0.1:8080"), 0) == 0
