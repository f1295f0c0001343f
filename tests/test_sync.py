"""The agent's sync against the real cloud app in-process: exactly once, outages, rejects, the 10 s rule.

These run on the real clock (a few seconds each): every upload step crosses a worker thread
(file reads, SQLite), and an autojumping virtual clock would race capture ahead of sync.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import trio

from capsync.actors.agent import Agent
from capsync.runtime.capture_file import read_capture
from capsync.runtime.config import parse_config
from capsync.runtime.sync_files import FAILED_DIR
from tests.cloudkit import InProcessCloud, all_pages, committed_records
from tests.helpers import capture_files, fake_component, robot_config


def _config(tmp_path: Path, secret: str, **dm) -> dict:
    comps = [
        fake_component("env", "sensor", [{"method": "Readings", "capture_frequency_hz": 20}]),
        fake_component("cam", "camera", [{"method": "ReadImage", "capture_frequency_hz": 2,
                                          "additional_params": {"mime_type": "image/jpeg"}}]),
    ]
    cfg = robot_config(tmp_path / "capture", comps, **{"sync_interval_mins": 0.01, **dm})
    cfg["cloud"] = {"id": "part-a", "secret": secret, "app_address": "http://cloud.test"}
    return cfg


def _local_records(capture_dir: Path) -> set[tuple[str, int]]:
    out = set()
    for p in capture_files(capture_dir):
        c = read_capture(p)
        out |= {(c.header.file_id, i) for i in range(len(c.records))}
    return out


async def test_everything_captured_reaches_the_cloud_exactly_once(tmp_path):
    cloud = InProcessCloud(tmp_path / "cloud")
    secret = await cloud.add_part("part-a")
    agent = Agent(parse_config(json.dumps(_config(tmp_path, secret))), cloud_transport=cloud.transport)
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        await trio.sleep(5)
        n.cancel_scope.cancel()
    stats = agent.statistics()
    async with cloud.client("part-a", secret) as c:
        in_cloud = await committed_records(c)
    local = _local_records(tmp_path / "capture")
    assert stats.sync.passes >= 5 and stats.sync.files_synced > 0
    assert in_cloud and not (in_cloud & local)
    # every reading the agent captured is in exactly one place (camera captures hold one record each)
    assert len(in_cloud) + len(local) == stats.captured
    # and what stays local is only what was captured after the last pass
    last_pass_ns = stats.sync.last_pass.started_ns
    assert all(read_capture(p).header.created_ns >= last_pass_ns - 700_000_000
               for p in capture_files(tmp_path / "capture"))


async def test_outage_backs_off_then_drains_without_loss(tmp_path):
    cloud = InProcessCloud(tmp_path / "cloud")
    secret = await cloud.add_part("part-a")
    down = trio.Event()

    class Flaky(type(cloud.transport)):  # the real app, unreachable while `down` is not set
        async def handle_async_request(self, request):
            if not down.is_set():
                import httpx
                raise httpx.ConnectError("connection refused (test outage)")
            return await super().handle_async_request(request)

    agent = Agent(parse_config(json.dumps(_config(tmp_path, secret))), cloud_transport=Flaky(app=cloud.app))
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        await trio.sleep(3)
        during = agent.statistics().sync
        assert during.files_synced == 0 and during.cloud_error and "test outage" in during.cloud_error
        down.set()
        await trio.sleep(4)
        await agent.sync.sync_now()
        n.cancel_scope.cancel()
    async with cloud.client("part-a", secret) as c:
        in_cloud = await committed_records(c)
    local = _local_records(tmp_path / "capture")
    assert len(in_cloud) + len(local) == agent.statistics().captured
    assert not (in_cloud & local)


async def test_file_the_cloud_refuses_is_set_aside_not_deleted(tmp_path):
    cloud = InProcessCloud(tmp_path / "cloud")
    secret = await cloud.add_part("part-a")
    cfg = _config(tmp_path, secret)
    agent = Agent(parse_config(json.dumps(cfg)), cloud_transport=cloud.transport)
    bogus = tmp_path / "capture" / "sensor" / "x" / "Readings" / "bogus.capture"
    bogus.parent.mkdir(parents=True)
    bogus.write_bytes(b"this is not a capture file")
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        await agent.sync.sync_now()
        n.cancel_scope.cancel()
    moved = list((tmp_path / "capture" / FAILED_DIR).rglob("bogus.capture"))
    assert len(moved) == 1 and moved[0].read_bytes() == b"this is not a capture file"
    assert agent.statistics().sync.set_aside >= 1


async def test_additional_sync_paths_wait_for_ten_quiet_seconds(tmp_path):
    cloud = InProcessCloud(tmp_path / "cloud")
    secret = await cloud.add_part("part-a")
    extra = tmp_path / "extra"
    (extra / "logs").mkdir(parents=True)
    fresh, old = extra / "logs" / "fresh.log", extra / "old.bin"
    fresh.write_text("still being written")
    old.write_bytes(os.urandom(3000))
    past = time.time() - 60
    os.utime(old, (past, past))
    now = [time.time()]
    cfg = _config(tmp_path, secret, additional_sync_paths=[str(extra)])
    agent = Agent(parse_config(json.dumps(cfg)), cloud_transport=cloud.transport)
    agent.sync._wall_time = lambda: now[0]
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        await agent.sync.sync_now()
        assert not old.exists() and fresh.exists()  # the quiet file went up, the fresh one waits
        now[0] += 9.0
        await agent.sync.sync_now()
        assert fresh.exists()
        now[0] += 1.5
        await agent.sync.sync_now()
        assert not fresh.exists()
        n.cancel_scope.cancel()
    async with cloud.client("part-a", secret) as c:
        names = {i["name"] for i in await all_pages(c, "/v1/binary") if i["name"]}
    assert {"logs/fresh.log", "old.bin"} <= names
