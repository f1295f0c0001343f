"""Hot reload: the agent follows edits of its config file, rejects bad ones, and loses nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from capsync.actors.agent import Agent
from capsync.runtime.capture_file import read_capture
from capsync.runtime.config import load_config
from tests.cloudkit import InProcessCloud, committed_records
from tests.helpers import capture_files, fake_component, leftover_progs, records_by_method, robot_config, write_config


@pytest.fixture
def thread_safe_clock():
    """Virtual time that jumps only after 20 ms of real idleness, so the watcher's and governor's
    worker threads finish before time moves on (see DESIGN.md, Time)."""
    return trio.testing.MockClock(autojump_threshold=0.02)


def _sensor(name: str, hz: float) -> dict:
    return fake_component(name, "sensor", [{"method": "Readings", "capture_frequency_hz": hz}])


def _agent(path: Path, **kw) -> Agent:
    return Agent(load_config(path), config_path=path, config_text=path.read_text(), control=False,
                 config_poll_s=0.1, **kw)


def _write_atomically(path: Path, config: dict) -> None:
    """Write as editors do: a new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config))
    os.replace(tmp, path)


async def test_rate_change_applies_within_two_seconds_without_losing_records(tmp_path, thread_safe_clock):
    cfg = robot_config(tmp_path / "cap", [_sensor("env", 1)], sync_disabled=True)
    path = write_config(tmp_path / "robot.json", cfg)
    agent = _agent(path)
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        await trio.sleep(5.5)
        cfg["components"][0]["service_configs"][0]["attributes"]["capture_methods"][0]["capture_frequency_hz"] = 20
        _write_atomically(path, cfg)
        await trio.sleep(2.0)
        (c,) = agent.statistics().collectors
        assert c.target_hz == 20 and c.measured_hz == pytest.approx(20, abs=1)
        assert agent.statistics().revision == 2
        n.cancel_scope.cancel()
    (recs,) = records_by_method(tmp_path / "cap").values()
    times = [(r.requested_ns - recs[0].requested_ns) / 1e9 for r in recs]
    assert times[:6] == pytest.approx([0, 1, 2, 3, 4, 5])  # nothing before the change was lost
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) <= 1.0 + 1e-6 and min(gaps) >= 0.05 - 1e-6
    assert len(capture_files(tmp_path / "cap")) == 1  # the change kept the open file


async def test_broken_edit_is_rejected_and_the_last_good_config_keeps_running(tmp_path, thread_safe_clock, caplog):
    cfg = robot_config(tmp_path / "cap", [_sensor("env", 20)], sync_disabled=True)
    path = write_config(tmp_path / "robot.json", cfg)
    agent = _agent(path)
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        await trio.sleep(1.0)
        bad = json.loads(json.dumps(cfg))
        bad["services"][0]["attributes"]["sync_interval_mins"] = "soon"
        path.write_text(json.dumps(bad))
        await trio.sleep(2.0)
        stats = agent.statistics()
        assert stats.revision == 1 and stats.config.rejected.revision == 2
        assert "services[0].attributes.sync_interval_mins" in stats.config.rejected.issues[0]
        assert any("services[0].attributes.sync_interval_mins" in getattr(r, "problem", "") for r in caplog.records)
        assert stats.collectors[0].measured_hz == pytest.approx(20, abs=1)
        path.write_text("{ not json")
        await trio.sleep(0.5)
        assert agent.statistics().config.rejected.revision == 3
        cfg["components"][0]["service_configs"][0]["attributes"]["capture_methods"][0]["capture_frequency_hz"] = 5
        path.write_text(json.dumps(cfg))
        await trio.sleep(0.5)
        stats = agent.statistics()
        assert stats.revision == 4 and stats.config.rejected is None and stats.collectors[0].target_hz == 5
        n.cancel_scope.cancel()


async def test_add_a_method_then_remove_the_first(tmp_path, thread_safe_clock):
    cfg = robot_config(tmp_path / "cap", [_sensor("first", 10)], sync_disabled=True)
    path = write_config(tmp_path / "robot.json", cfg)
    agent = _agent(path)
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        await trio.sleep(2.0)
        cfg["components"].append(_sensor("second", 10))
        path.write_text(json.dumps(cfg))
        await trio.sleep(2.0)
        assert len(agent.collectors) == 2
        cfg["components"] = cfg["components"][1:]
        path.write_text(json.dumps(cfg))
        await trio.sleep(2.0)
        assert [c.name for c in agent.statistics().collectors] == ["collector sensor/second/Readings"]
        assert not leftover_progs(tmp_path / "cap" / "sensor" / "first")  # the removed one finished its file
        n.cancel_scope.cancel()
    recs = records_by_method(tmp_path / "cap")
    assert 38 <= len(recs["sensor/first/Readings"]) <= 42 and 38 <= len(recs["sensor/second/Readings"]) <= 42


async def test_new_capture_dir_while_old_files_still_sync(tmp_path):
    cloud = InProcessCloud(tmp_path / "cloud")
    secret = await cloud.add_part("part-a")
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    cfg = robot_config(old_dir, [_sensor("env", 20)], sync_interval_mins=60)  # no pass unless asked
    cfg["cloud"] = {"id": "part-a", "secret": secret, "app_address": cloud.url}
    path = write_config(tmp_path / "robot.json", cfg)
    agent = _agent(path, cloud_transport=cloud.transport)
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        await trio.sleep(1.0)
        await agent.finish_open_files()
        assert capture_files(old_dir)
        cfg["services"][0]["attributes"]["capture_dir"] = str(new_dir)
        path.write_text(json.dumps(cfg))
        with trio.fail_after(5):
            while agent.statistics().revision < 2:
                await trio.sleep(0.05)
        await trio.sleep(0.5)
        assert capture_files(new_dir) or agent.statistics().collectors[0].open_file.startswith(str(new_dir))
        result = await agent.sync.sync_now()
        assert result.uploaded >= 2
        assert not capture_files(old_dir) and not leftover_progs(old_dir)  # old files synced, then deleted
        n.cancel_scope.cancel()
    async with cloud.client("part-a", secret) as c:
        in_cloud = await committed_records(c)
    local = {(read_capture(p).header.file_id, i) for p in capture_files(new_dir)
             for i in range(len(read_capture(p).records))}
    assert in_cloud and not (in_cloud & local)
    assert len(in_cloud) + len(local) == agent.statistics().captured  # every reading, in one place
