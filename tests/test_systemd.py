"""Running as a systemd service: `capsync run --notify` against a real AF_UNIX datagram notify socket,
journald-style logs, and the unit in configs/ checked by Debian's `systemd-analyze verify`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from capsync.runtime.sd_notify import SdNotifier, watchdog_interval_s
from tests.helpers import fake_component, free_port, robot_config, write_config
from tests.processkit import Process
from tests.test_metrics import samples

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "configs" / "capsync-agent.service"


def notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    return sock


def receive(sock: socket.socket) -> dict[str, str]:
    """One notification as KEY -> value."""
    data = sock.recv(65536).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def receive_until(sock: socket.socket, key: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Notifications until one carries `key`: (that one, those before it)."""
    before = []
    while True:
        msg = receive(sock)
        if key in msg:
            return msg, before
        before.append(msg)


def test_capsync_run_notify_speaks_sd_notify_with_watchdog_and_journal_logs(tmp_path: Path) -> None:
    sock = notify_socket(tmp_path / "notify.sock")
    cfg = robot_config(tmp_path / "capture", [fake_component("env", "sensor", [
        {"method": "Readings", "capture_frequency_hz": 5}])])
    config = write_config(tmp_path / "robot.json", cfg)
    log = tmp_path / "agent.log"
    log.touch()
    st = log.stat()  # the child's stderr is this file: as journald's stream would be
    metrics_port = free_port()
    agent = Process([sys.executable, "-m", "capsync", "run", str(config), "--notify", "--status-interval", "0",
                     "--metrics-address", f"127.0.0.1:{metrics_port}"], log,
                    env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000",
                         "WATCHDOG_PID": None, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    try:
        ready, before = receive_until(sock, "READY")
        assert ready["READY"] == "1" and not before
        assert ready["STATUS"].startswith("collectors 1 | readings ")
        pings = [receive_until(sock, "WATCHDOG")[0] for _ in range(3)]
        assert all(p["WATCHDOG"] == "1" and p["STATUS"].startswith("collectors 1 |") for p in pings)
        with httpx.Client(base_url=f"http://127.0.0.1:{metrics_port}") as c:
            health = c.get("/v1/health")
            metrics = samples(c.get("/metrics").text)
        assert health.status_code == 200 and health.json()["healthy"] is True
        assert metrics[("capsync_agent_collector_target_hz", (("collector", "sensor/env/Readings"),))] == 5
        assert metrics[("process_resident_memory_bytes", ())] > 0
        agent.proc.send_signal(signal.SIGTERM)
        stopping, _ = receive_until(sock, "STOPPING")
        assert stopping["STOPPING"] == "1" and stopping["STATUS"].startswith("stopping")
        assert agent.proc.wait(timeout=20) == 0
    finally:
        agent.kill()
        sock.close()
    lines = [line for line in log.read_text().splitlines() if line]
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines[:5]
    assert any(line.startswith("<6>INFO    capsync.agent: agent running") for line in lines), lines[:5]
    assert not any(re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line) for line in lines)  # journald stamps them


def test_without_journal_the_text_log_keeps_its_timestamps(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "capsync", "run", str(tmp_path / "missing.json")],
                         capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, "JOURNAL_STREAM": "1:2"})
    assert out.returncode == 2
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ERROR", out.stderr), out.stderr


def test_notifier_reaches_an_abstract_socket_and_reads_the_watchdog_rules() -> None:
    name = f"capsync-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        notifier = SdNotifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"})
        assert notifier.enabled and notifier.watchdog_s == 2.0
        assert notifier.send(STATUS="two\nlines", WATCHDOG=1)
        assert sock.recv(1024) == b"STATUS=two lines\nWATCHDOG=1"
        notifier.close()
    finally:
        sock.close()
    assert not SdNotifier({}).enabled and not SdNotifier({}).send(READY=1)
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, pid=2) is None  # another process's
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "7"}, pid=7) == 0.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    gone = SdNotifier({"NOTIFY_SOCKET": "/nonexistent/notify.sock"})
    assert gone.enabled and gone.send(READY=1) is False  # logged once, never raised


def _verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)


def test_the_unit_in_configs_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package; ./scripts/test installs it when it can)")
    text = UNIT.read_text()
    program = re.search(r"^ExecStart=(\S+) ", text, re.M)
    assert program is not None and program.group(1) == "/usr/local/bin/capsync"
    capsync = Path(sys.executable).with_name("capsync")  # test rewrites: the installed program
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(f"ExecStart={program.group(1)} ", f"ExecStart={capsync} ", 1))
    result = _verify(unit)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    assert "--notify" in text and re.search(r"^Type=notify$", text, re.M) and re.search(r"^WatchdogSec=\d+", text, re.M)
    # The check can fail: a mistyped setting is reported.
    bad = tmp_path / "bad.service"
    bad.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    assert "notifyy" in (_verify(bad).stdout + _verify(bad).stderr)
