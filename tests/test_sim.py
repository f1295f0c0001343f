"""The simulation harness: long virtual runs in little real time, outages, faults and accounting."""

from __future__ import annotations

import pytest
import trio

from capsync.actors.sim import Simulation
from capsync.runtime.faults import FaultKind, FaultPlan


def _config(hz: float = 1.0, **dm) -> dict:
    return {
        "components": [{
            "name": "env", "type": "sensor", "model": "fake",
            "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": [
                {"method": "Readings", "capture_frequency_hz": hz}]}}],
        }],
        "services": [{"name": "dm", "type": "data_manager", "attributes": {"sync_interval_mins": 1, **dm}}],
    }


async def test_six_hours_of_1hz_capture_with_an_hour_outage(tmp_path, autojump_clock):
    async with Simulation(tmp_path, _config(1.0)) as sim:
        await sim.advance(2 * 3600)
        sim.cloud_down()
        await sim.advance(3600)
        assert sim.status().sync.cloud_error is not None
        assert sim.status().sync.backlog_files >= 50
        sim.cloud_up()
        await sim.advance(3 * 3600)
        t0 = trio.current_time()
        await sim.drain()
        drain_s = trio.current_time() - t0  # capture goes on while the last files go up
        report = await sim.accounting()
        stats = sim.status()
    assert report.lost == 0 and report.duplicated == 0
    assert report.captured == stats.captured
    expected = 6 * 3600 + drain_s
    assert expected - 2 <= report.captured <= expected + 2  # on time all along, outage or not
    assert report.committed == report.captured and report.on_disk == 0
    assert stats.collectors[0].missed_ticks == 0 and stats.collectors[0].late_ticks == 0


async def test_faults_are_counted_and_the_agent_recovers(tmp_path, autojump_clock):
    plan = FaultPlan(seed=1)
    plan.add("collector *", "before_call", FaultKind.RAISE, times=5)  # a flaky resource
    plan.add("collector *", "before_write", FaultKind.ENOSPC, after=20, times=3)  # a full disk for a moment
    plan.add("uploader *", "before_chunk", FaultKind.RAISE, times=2)  # an uploader bug: the scheduler restarts
    plan.add("scheduler", "pass", FaultKind.DROP_NETWORK, times=0)  # never fires: times=0
    async with Simulation(tmp_path, _config(2.0), faults=plan) as sim:
        await sim.advance(600)
        await sim.drain()
        report = await sim.accounting()
        stats, restarts = sim.status(), sim.restarts()
    assert stats.failed == 5 and stats.dropped == 3
    assert restarts.get("sync", 0) >= 2
    assert plan.fired("before_call") == 5 and plan.fired("pass") == 0
    assert report.lost == 0 and report.duplicated == 0 and report.committed == report.captured


async def test_disk_full_episode_deletes_every_nth_and_accounts_for_it(tmp_path, autojump_clock):
    async with Simulation(tmp_path, _config(20.0, sync_disabled=True, max_file_size_kb=4), disk_total=10**9,
                          governor_interval_s=2.0) as sim:
        await sim.advance(120)
        sim.disk.total = int(sim.disk.usage(sim.capture_dir).used / 0.95)  # now 95 % full, all of it capture data
        await sim.advance(5)
        sim.disk.total = 10**9
        report = await sim.accounting()
        gov = sim.status().governor
    assert gov.files_deleted > 0 and report.deleted_by_disk_rule > 0
    assert report.lost == 0 and report.on_disk + report.deleted_by_disk_rule == report.captured


async def test_restart_and_reload_lose_nothing(tmp_path, autojump_clock):
    async with Simulation(tmp_path, _config(5.0)) as sim:
        await sim.advance(30)
        await sim.restart_agent()
        await sim.advance(30)

        def faster(cfg: dict) -> None:
            cfg["components"][0]["service_configs"][0]["attributes"]["capture_methods"][0]["capture_frequency_hz"] = 10

        await sim.reload(faster)
        await sim.advance(30)
        t0 = trio.current_time()
        await sim.drain()
        drain_s = trio.current_time() - t0  # capture goes on while the last files go up
        report = await sim.accounting()
    assert report.lost == 0 and report.duplicated == 0
    expected = 5 * 60 + 10 * (30 + drain_s)
    assert expected - 5 <= report.captured <= expected + 5
