"""The example test from docs/simulation.md (kept identical to the doc by test_simulation_doc.py)."""

from capsync.testing import FaultKind, FaultPlan, Simulation

CONFIG = {
    "components": [{
        "name": "thermometer", "type": "sensor", "model": "fake",
        "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": [
            {"method": "Readings", "capture_frequency_hz": 1}]}}],
    }],
    "services": [{"name": "dm", "type": "data_manager", "attributes": {"sync_interval_mins": 1}}],
}


async def test_an_hour_offline_with_a_flaky_sensor_loses_nothing(tmp_path, autojump_clock):
    faults = FaultPlan()
    faults.add("collector sensor/thermometer/*", "before_call", FaultKind.RAISE, probability=0.1)
    async with Simulation(tmp_path, CONFIG, faults=faults) as sim:
        await sim.advance(600)                # ten minutes online
        sim.cloud_down()
        await sim.advance(3600)               # an hour offline: capture goes on
        assert sim.status().sync.backlog_files > 0
        sim.cloud_up()
        await sim.drain()                     # everything goes up once the cloud is back
        report = await sim.accounting()
        status = sim.status()

    assert report.lost == 0 and report.duplicated == 0
    assert report.committed == report.captured > 3000        # every reading written went up
    assert status.failed == faults.fired("before_call") > 0   # the flaky reads were counted, not fatal
