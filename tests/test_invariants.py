"""Stateful invariant tests: whatever happens, every reading the agent wrote is on disk, committed in
the cloud exactly once, or deleted by the disk rule and counted as such.

Hypothesis generates programs of steps (capture for a while, sync, cloud outages, uploader crashes,
agent restarts over the same capture dir, disk-full episodes, ENOSPC on writes, config reloads);
each program runs in a fresh simulation under a fresh MockClock (the fixture clock is shared
between examples, see DESIGN.md), and the invariant is checked after every step.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from capsync.actors.sim import Simulation
from capsync.actors.uploader import upload_file
from capsync.runtime.faults import FaultKind, FaultPlan

STEPS = st.one_of(
    st.tuples(st.just("advance"), st.integers(1, 120)),
    st.tuples(st.just("sync"), st.just(0)),
    st.tuples(st.just("cloud_down"), st.just(0)),
    st.tuples(st.just("cloud_up"), st.just(0)),
    st.tuples(st.just("uploader_crash"), st.integers(1, 3)),
    st.tuples(st.just("restart"), st.just(0)),
    st.tuples(st.just("disk_full"), st.just(0)),
    st.tuples(st.just("enospc"), st.integers(1, 5)),
    st.tuples(st.just("reload"), st.sampled_from([1, 2, 5, 10])),
)
PROGRAMS = st.lists(STEPS, min_size=1, max_size=8)


def _config() -> dict:
    return {
        "components": [
            {"name": "env", "type": "sensor", "model": "fake",
             "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": [
                 {"method": "Readings", "capture_frequency_hz": 2}]}}]},
            {"name": "cam", "type": "camera", "model": "fake", "attributes": {"width": 32, "height": 24},
             "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": [
                 {"method": "ReadImage", "capture_frequency_hz": 0.2, "additional_params": {"mime_type": "image/png"}}]}}]},
        ],
        "services": [{"name": "dm", "type": "data_manager",
                      "attributes": {"sync_interval_mins": 0.5, "max_file_size_kb": 2}}],
    }


async def _step(sim: Simulation, plan: FaultPlan, action: str, arg: int) -> None:
    if action == "advance":
        await sim.advance(arg)
    elif action == "sync":
        await sim.sync_now()
    elif action == "cloud_down":
        sim.cloud_down()
    elif action == "cloud_up":
        sim.cloud_up()
    elif action == "uploader_crash":
        plan.add("uploader *", "before_chunk", FaultKind.RAISE, times=arg)
    elif action == "restart":
        await sim.restart_agent()
    elif action == "disk_full":
        used = sim.disk.usage(sim.capture_dir).used
        total = sim.disk.total
        sim.disk.total = max(int(used / 0.95), 1)  # 95 % full, all of it capture data
        await sim.advance(3)
        sim.disk.total = total
    elif action == "enospc":
        plan.add("collector *", "before_write", FaultKind.ENOSPC, times=arg)
    elif action == "reload":
        def rate(cfg: dict) -> None:
            cfg["components"][0]["service_configs"][0]["attributes"]["capture_methods"][0]["capture_frequency_hz"] = arg
        await sim.reload(rate)


def run_program(root, steps: list[tuple[str, int]], upload=None) -> None:
    """Run `steps` in a fresh simulation; assert the invariant after each one and after a final drain."""

    async def main() -> str | None:
        plan = FaultPlan(seed=len(steps))
        sim = Simulation(root, _config(), faults=plan, governor_interval_s=1.0)
        sim.upload = upload
        async with sim:
            for i, (action, arg) in enumerate(steps):
                await _step(sim, plan, action, arg)
                report = await sim.accounting()
                if report.lost or report.duplicated:
                    return f"after step {i} {action}: {report}"
            sim.cloud_up()
            plan.clear()
            await sim.drain()
            report = await sim.accounting()
            if report.lost or report.duplicated or report.on_disk \
                    or report.committed + report.deleted_by_disk_rule != report.captured:
                return f"after the final drain: {report}"
        return None

    # The verdict is raised outside the simulation, so it is a plain AssertionError, not an ExceptionGroup.
    violation = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert violation is None, violation


def invariant_property(upload=None, max_examples: int = 40, shrink: bool = True):
    """The property, with a given uploader (None: the real one)."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if shrink else [])

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True, phases=phases,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(steps=PROGRAMS)
    def prop(tmp_path_factory, steps):
        run_program(tmp_path_factory.mktemp("sim"), steps, upload)

    return prop


def test_every_reading_is_accounted_for(tmp_path_factory):
    invariant_property()(tmp_path_factory)


async def deletes_before_commit(client, f, **kw):
    """A broken uploader: it takes the file out of the capture dir before the cloud has committed it,
    and drops it when the upload fails."""
    inflight = f.path.with_name(f.path.name + ".inflight")
    os.replace(f.path, inflight)
    try:
        return await upload_file(client, dataclasses.replace(f, path=inflight), **kw)
    finally:
        inflight.unlink(missing_ok=True)


def test_the_invariant_catches_an_uploader_that_deletes_before_commit(tmp_path_factory):
    with pytest.raises(AssertionError, match="lost"):
        # no shrinking: finding the loss is the point, and shrinking would rerun it many times
        invariant_property(upload=deletes_before_commit, max_examples=30, shrink=False)(tmp_path_factory)
