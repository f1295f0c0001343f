"""Supervision under faults, on the whole agent in the simulation harness."""

from __future__ import annotations

import pytest

from capsync.actors.sim import Simulation
from capsync.runtime.faults import FaultKind, FaultPlan


def _sensors(names_hz: dict[str, float], **attributes) -> dict:
    return {
        "components": [
            {"name": n, "type": "sensor", "model": "fake", "attributes": dict(attributes.get(n, {})),
             "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": [
                 {"method": "Readings", "capture_frequency_hz": hz}]}}]}
            for n, hz in names_hz.items()
        ],
        "services": [{"name": "dm", "type": "data_manager", "attributes": {"sync_disabled": True}}],
    }


async def test_a_failing_resource_does_not_stop_other_collectors(tmp_path, autojump_clock):
    cfg = _sensors({"broken": 10, "fine": 10}, broken={"fail_rate": 1.0})
    async with Simulation(tmp_path, cfg) as sim:
        await sim.advance(59.95)  # ticks at 0.0 ... 59.9
        stats = {c.name.split("/")[1]: c for c in sim.status().collectors}
        restarts = sim.restarts()
    assert stats["broken"].failed == 600 and stats["broken"].captured == 0
    assert stats["fine"].captured == 600 and stats["fine"].failed == 0
    assert all(n == 0 for n in restarts.values()), restarts  # errors are counted, nothing crashed


async def test_a_crash_looping_collector_escalates_to_a_capture_restart(tmp_path, autojump_clock, caplog):
    plan = FaultPlan()
    plan.add("collector sensor/buggy/*", "tick", FaultKind.RAISE)  # a bug on every tick
    async with Simulation(tmp_path, _sensors({"buggy": 1, "fine": 1}), faults=plan) as sim:
        await sim.advance(90)
        restarts = sim.restarts()
    assert restarts["collector sensor/buggy/Readings"] > 5
    assert restarts["capture"] >= 1  # the capture supervisor gave up and the agent restarted it
    assert "supervisor capture giving up" in caplog.text


@pytest.mark.parametrize("collectors", [60])
async def test_shutdown_under_load_finishes_every_file(tmp_path, autojump_clock, collectors):
    async with Simulation(tmp_path, _sensors({f"s{i}": 50 for i in range(collectors)})) as sim:
        await sim.advance(3.3)
        captured = sim.status().captured
    assert captured >= collectors * 150
    assert not list((tmp_path / "capture").rglob("*.prog"))
    assert sum(sim.disk_records().values()) == sum(sim.ledger.values())
