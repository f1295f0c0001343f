"""Remote parts on loopback: part B serves a fake board and camera, part A captures them through
`remotes` with the documented JSON, syncs under B's resource names, rides out B being killed, and
refuses (and reports) a wrong secret. Real sockets and the real clock; a few seconds each."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from capsync.actors.agent import Agent
from capsync.runtime.config import parse_config
from tests.cloudkit import InProcessCloud, all_pages
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
B_SECRET = "b-part-secret"
CAM = "ReadImage(mime_type=image/jpeg,reader_name=cam1)"
REMOTE_METHODS = ("Analogs(reader_name=A1)", "Analogs(reader_name=A2)", "Gpios(pin_name=27)", CAM)


def part_b_config(port: int, secret: str | None = B_SECRET) -> dict:
    """Part B: a fake board (like the documented ESP32) and a fake camera; no data manager of its own."""
    cfg: dict = {
        "network": {"bind_address": f"127.0.0.1:{port}"},
        "components": [
            {"name": "my-esp32", "namespace": "rdk", "type": "board", "model": "fake",
             "attributes": {"pins": [27], "analogs": [{"pin": "34", "name": "A1"}, {"pin": "35", "name": "A2"}]}},
            {"name": "cam", "namespace": "rdk", "type": "camera", "model": "fake", "attributes": {}},
            {"name": "slow", "namespace": "rdk", "type": "sensor", "model": "fake", "attributes": {"latency_ms": 600}},
        ],
    }
    if secret is not None:
        cfg["cloud"] = {"id": "part-b", "secret": secret}
    return cfg


def remote_entry(address: str, secret: str, *, hz: float = 10, cam_hz: float = 1) -> dict:
    """The `remotes[]` entry of the documented examples (board readers A1, A2, pin 27, and a camera)."""
    board = "rdk:component:board/my-esp32"
    methods = [
        {"method": "Analogs", "capture_frequency_hz": hz, "cache_size_kb": 10, "name": board,
         "additional_params": {"reader_name": "A1"}, "disabled": False},
        {"method": "Analogs", "capture_frequency_hz": hz, "cache_size_kb": 10, "name": board,
         "additional_params": {"reader_name": "A2"}, "disabled": False},
        {"method": "Gpios", "capture_frequency_hz": hz, "cache_size_kb": 10, "name": board,
         "additional_params": {"pin_name": "27"}, "disabled": False},
        {"capture_frequency_hz": cam_hz, "name": "rdk:component:camera/cam", "disabled": False, "method": "ReadImage",
         "additional_params": {"mime_type": "image/jpeg", "reader_name": "cam1"}},
    ]
    return {"name": "part-b", "address": address, "secret": secret,
            "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": methods}}]}


def part_a_config(tmp_path: Path, remote: dict, cloud_secret: str = "", **dm) -> dict:
    """Part A: a data manager, one local fake sensor at 10 Hz, and part B as a remote."""
    return {
        "cloud": {"id": "part-a", "secret": cloud_secret, "app_address": "http://cloud.test"},
        "network": {"bind_address": f"127.0.0.1:{free_port()}"},
        "services": [{"name": "data_manager", "type": "data_manager",
                      "attributes": {"capture_dir": str(tmp_path / "capture-a"), "tags": ["remote-test"], **dm}}],
        "components": [{"name": "local-env", "namespace": "rdk", "type": "sensor", "model": "fake", "attributes": {},
                        "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": [
                            {"method": "Readings", "capture_frequency_hz": 10}]}}]}],
        "remotes": [remote],
    }


async def until(predicate, timeout: float, what: str, step: float = 0.05) -> None:
    """Wait until `predicate()` is true; fail the test with `what` after `timeout` seconds."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(step)
        return
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def by_method(agent: Agent) -> dict[str, object]:
    """Collector stats keyed by the tail of the collector name (method and params)."""
    return {c.name.split("/", 2)[-1]: c for c in agent.statistics().collectors}


def start_part_b(tmp_path: Path, port: int, run: int) -> subprocess.Popen:
    """`capsync run` part B's config in its own process; returns once it accepts connections."""
    path = tmp_path / "part-b.json"
    path.write_text(json.dumps(part_b_config(port)))
    log = open(tmp_path / f"part-b-{run}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "capsync", "run", str(path), "--status-interval", "0"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"part B did not start: {(tmp_path / f'part-b-{run}.log').read_text()}")


async def test_capture_from_remote_part_survives_it_being_killed(tmp_path):
    cloud = InProcessCloud(tmp_path / "cloud")
    secret = await cloud.add_part("part-a")
    port = free_port()
    b = start_part_b(tmp_path, port, 1)
    try:
        cfg = part_a_config(tmp_path, remote_entry(f"127.0.0.1:{port}", B_SECRET), secret, sync_interval_mins=0.02)
        agent = Agent(parse_config(json.dumps(cfg)), cloud_transport=cloud.transport, control=False)
        async with trio.open_nursery() as n:
            await n.start(agent.run)
            await until(lambda: all(by_method(agent)[m].captured >= 1 for m in REMOTE_METHODS), 5, "first captures")
            await trio.sleep(2)
            before = by_method(agent)
            b.send_signal(signal.SIGKILL)
            b.wait()
            await until(lambda: agent.statistics().remotes[0].state != "connected", 3, "A to notice B is gone")
            await trio.sleep(3)
            down = by_method(agent)
            for m in REMOTE_METHODS:  # failures counted, nothing captured, schedule kept
                assert down[m].captured - before[m].captured <= 1, m
                assert down[m].failed - before[m].failed >= (20 if m != CAM else 2), (m, down[m])
                assert "part-b" in down[m].last_error
            local = down["Readings"]
            assert local.failed == 0 and local.captured - before["Readings"].captured >= 25
            b = start_part_b(tmp_path, port, 2)
            await until(lambda: agent.statistics().remotes[0].state == "connected", 15, "A to reconnect to B")
            await until(lambda: all(by_method(agent)[m].captured > down[m].captured for m in REMOTE_METHODS), 5,
                        "captures to resume")
            await trio.sleep(1.5)
            back = by_method(agent)
            result = await agent.sync.sync_now()
            n.cancel_scope.cancel()
    finally:
        b.kill()
        b.wait()
    assert result.failed == 0
    link = agent.statistics().remotes[0]
    assert link.connects == 2 and link.disconnects >= 1
    for m in REMOTE_METHODS[:3]:
        assert back[m].captured - down[m].captured >= 10, (m, back[m])
    async with cloud.client("part-a", secret) as c:
        rows = await all_pages(c, "/v1/tabular", resource_name="my-esp32")
        images = await all_pages(c, "/v1/binary", resource_name="cam")
        files = [f for f in await all_pages(c, "/v1/files") if f["resource_name"] in ("my-esp32", "cam")]
    readers = {(r["method"], r["params"].get("reader_name") or r["params"].get("pin_name")) for r in rows}
    assert readers == {("Analogs", "A1"), ("Analogs", "A2"), ("Gpios", "27")}
    assert all(r["resource_type"] == "board" for r in rows) and {"value", "step_size"} <= set(
        next(r for r in rows if r["method"] == "Analogs")["payload"])
    assert images and all(i["mime_type"] == "image/jpeg" and i["resource_type"] == "camera" for i in images)
    assert files and all(f["metadata"].get("remote_part") == "part-b" for f in files)
    assert len(rows) >= sum(back[m].captured for m in REMOTE_METHODS[:3]) - 3


async def test_wrong_remote_secret_is_refused_and_reported(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    port = free_port()
    part_b = Agent(parse_config(json.dumps(part_b_config(port))))
    cfg = part_a_config(tmp_path, remote_entry(f"127.0.0.1:{port}", "not-the-secret"), sync_disabled=True)
    agent = Agent(parse_config(json.dumps(cfg)), control=False)
    async with trio.open_nursery() as n:
        await n.start(part_b.run)
        await until(lambda: part_b.control.bound_port is not None, 5, "part B to listen")
        await n.start(agent.run)
        await until(lambda: agent.statistics().remotes[0].state == "refused", 5, "the refusal")
        await trio.sleep(2.5)  # several retries and ~25 failed captures per board method
        stats = by_method(agent)
        link = agent.statistics().remotes[0]
        for m in REMOTE_METHODS:
            assert stats[m].captured == 0 and stats[m].failed >= 1
            assert "refused this part's secret" in stats[m].last_error and "cloud.secret" in stats[m].last_error
        assert "401" in link.last_error
        assert part_b.statistics().served.refused >= 2 and part_b.statistics().served.accepted == 0
        refusal_logs = [r for r in caplog.records if "refused this part's secret" in r.getMessage()]
        server_logs = [r for r in caplog.records if "resource client refused" in r.getMessage()]
        assert len(refusal_logs) == 1 and len(server_logs) == 1  # once per change of state, not per retry
        # the operator fixes the secret: the running agent picks it up without restarting collectors
        fixed = dict(cfg, remotes=[remote_entry(f"127.0.0.1:{port}", B_SECRET)])
        await agent.apply_config(parse_config(json.dumps(fixed)), 2)
        await until(lambda: all(by_method(agent)[m].captured >= 3 for m in REMOTE_METHODS[:3]), 5,
                    "captures with the right secret")
        assert {c.name for c in agent.statistics().collectors} == {c.name for c in stats.values()}
        n.cancel_scope.cancel()


async def test_part_without_secret_serves_nothing_and_says_why(tmp_path):
    port = free_port()
    part_b = Agent(parse_config(json.dumps(part_b_config(port, secret=None))))
    cfg = part_a_config(tmp_path, remote_entry(f"127.0.0.1:{port}", "anything"), sync_disabled=True)
    agent = Agent(parse_config(json.dumps(cfg)), control=False)
    async with trio.open_nursery() as n:
        await n.start(part_b.run)
        await until(lambda: part_b.control.bound_port is not None, 5, "part B to listen")
        await n.start(agent.run)
        await until(lambda: agent.statistics().remotes[0].state == "refused", 5, "the refusal")
        assert "403" in agent.statistics().remotes[0].last_error
        assert "no cloud.secret" in agent.statistics().remotes[0].last_error
        n.cancel_scope.cancel()


async def test_remote_address_change_and_removal_follow_the_config(tmp_path):
    port1, port2 = free_port(), free_port()
    b1 = Agent(parse_config(json.dumps(part_b_config(port1))))
    b2 = Agent(parse_config(json.dumps(part_b_config(port2))))
    cfg = part_a_config(tmp_path, remote_entry(f"127.0.0.1:{port1}", B_SECRET, cam_hz=5), sync_disabled=True)
    agent = Agent(parse_config(json.dumps(cfg)), control=False)
    async with trio.open_nursery() as n:
        for b in (b1, b2):
            await n.start(b.run)
            await until(lambda: b.control.bound_port is not None, 5, "part B to listen")
        await n.start(agent.run)
        await until(lambda: by_method(agent)[CAM].captured >= 2, 5, "captures from B1")
        moved = dict(cfg, remotes=[remote_entry(f"127.0.0.1:{port2}", B_SECRET, cam_hz=5)])
        await agent.apply_config(parse_config(json.dumps(moved)), 2)
        await until(lambda: b2.statistics().served.calls >= 5, 5, "captures from B2")
        assert agent.statistics().remotes[0].address == f"127.0.0.1:{port2}"
        gone = dict(cfg, remotes=[])
        await agent.apply_config(parse_config(json.dumps(gone)), 3)
        stats = agent.statistics()
        assert stats.remotes == () and [c.name.split("/", 2)[-1] for c in stats.collectors] == ["Readings"]
        n.cancel_scope.cancel()
