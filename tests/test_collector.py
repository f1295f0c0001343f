"""Collector timing, error handling and file rotation, under Trio's virtual clock."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import trio

from capsync.actors.collector import Collector, CollectorSettings
from capsync.runtime.config import parse_config
from capsync.runtime.resources.registry import ResourceRegistry
from capsync.runtime.wallclock import WallClock
from capsync.runtime.blocking import inline_blocking
from capsync.runtime.capture_file import read_capture
from tests.helpers import capture_files, fake_component, leftover_progs, records_by_method, robot_config


@pytest.fixture(autouse=True)
def _blocking_inline():
    """Finishing a file runs in a worker thread; inline, the autojumping clock cannot skip past it."""
    with inline_blocking():
        yield


def _collector(tmp_path: Path, type_: str, method: str, hz: float, params=None, attributes=None, **settings):
    comp = fake_component("r", type_, [{"method": method, "capture_frequency_hz": hz,
                                        "additional_params": params or {}}], **(attributes or {}))
    cfg = parse_config(json.dumps(robot_config(tmp_path, [comp])))
    (plan,) = cfg.capture_plan()
    registry = ResourceRegistry()
    registry.build_all(cfg.resources())
    base = dict(capture_dir=tmp_path, part_id="p", tags=("t1",), fsync_interval_s=math.inf)
    base.update(settings)
    return Collector(plan, registry.get("r"), CollectorSettings(**base), WallClock(epoch_ns=0))


async def _run_for(collector: Collector, seconds: float) -> None:
    """Run the collector and stop it just before `seconds`, so no tick races the stop."""
    async with trio.open_nursery() as n:
        await n.start(collector.run)
        await trio.sleep(seconds - 1e-3)
        n.cancel_scope.cancel()


async def test_ticks_stay_on_the_grid_without_drift(tmp_path, autojump_clock):
    c = _collector(tmp_path, "sensor", "Readings", 10)
    await _run_for(c, 10.0)
    (recs,) = records_by_method(tmp_path).values()
    assert len(recs) == 100  # ticks at 0.0, 0.1, ... 9.9
    gaps = {recs[i + 1].requested_ns - recs[i].requested_ns for i in range(len(recs) - 1)}
    assert gaps == {100_000_000}
    assert recs[0].requested_ns == 0
    assert c.statistics().late_ticks == 0 and c.statistics().captured == 100
    assert not leftover_progs(tmp_path)


async def test_header_names_resource_method_tags_and_kind(tmp_path, autojump_clock):
    c = _collector(tmp_path, "board", "Analogs", 2, params={"reader_name": "A1"})
    await _run_for(c, 1.0)
    (path,) = capture_files(tmp_path)
    h = read_capture(path).header
    assert (h.resource_type, h.resource_name, h.method) == ("board", "r", "Analogs")
    assert h.params == {"reader_name": "A1"} and h.tags == ("t1",) and h.part_id == "p"
    assert h.kind.value == "tabular"
    assert path.relative_to(tmp_path).parts[:3] == ("board", "r", "Analogs")


async def test_slow_resource_misses_ticks_but_keeps_the_grid(tmp_path, autojump_clock):
    # each call takes 250 ms at 10 Hz: 2 of every 3 ticks are missed, the rest are on the grid
    c = _collector(tmp_path, "sensor", "Readings", 10, attributes={"latency_ms": 250})
    await _run_for(c, 3.0)
    stats = c.statistics()
    (recs,) = records_by_method(tmp_path).values()
    assert stats.missed_ticks > 0 and stats.late_ticks > 0
    assert all(r.requested_ns % 100_000_000 == 0 for r in recs)
    assert all(r.received_ns - r.requested_ns >= 250_000_000 for r in recs)
    assert stats.captured == len(recs)


async def test_failing_resource_is_counted_and_schedule_goes_on(tmp_path, autojump_clock):
    c = _collector(tmp_path, "sensor", "Readings", 5, attributes={"fail_rate": 1.0})
    await _run_for(c, 2.0)
    stats = c.statistics()
    assert stats.failed == 10 and stats.captured == 0
    assert stats.last_error and "ResourceError" in stats.last_error
    assert capture_files(tmp_path) == []


async def test_resource_timeout_counts_as_failure(tmp_path, autojump_clock):
    c = _collector(tmp_path, "sensor", "Readings", 1, attributes={"latency_ms": 3000}, resource_timeout_s=0.5)
    await _run_for(c, 3.0)
    assert c.statistics().failed == 3
    assert "timed out after 0.5 s" in c.statistics().last_error


async def test_files_finish_by_size_and_at_shutdown(tmp_path, autojump_clock):
    c = _collector(tmp_path, "sensor", "Readings", 50, max_file_bytes=2048)
    await _run_for(c, 4.0)
    files = capture_files(tmp_path)
    assert len(files) > 3
    sizes = [f.stat().st_size for f in files]
    assert all(s < 2048 + 1024 for s in sizes[:-1])
    assert sum(len(read_capture(f).records) for f in files) == 200
    assert not leftover_progs(tmp_path)


async def test_files_finish_by_age(tmp_path, autojump_clock):
    c = _collector(tmp_path, "sensor", "Readings", 1, max_file_age_s=5.0)
    async with trio.open_nursery() as n:
        await n.start(c.run)
        await trio.sleep(12.5)
        assert len(capture_files(tmp_path)) == 2  # finished at t=5 and t=10, without a tick needed
        n.cancel_scope.cancel()


async def test_binary_capture_is_one_file_per_image(tmp_path, autojump_clock):
    c = _collector(tmp_path, "camera", "ReadImage", 2, params={"mime_type": "image/png"})
    await _run_for(c, 2.0)
    files = capture_files(tmp_path)
    assert len(files) == 4
    content = read_capture(files[0])
    assert content.header.kind.value == "binary" and content.header.mime_type == "image/png"
    assert content.records[0].payload[:8] == b"\x89PNG\r\n\x1a\n"


async def test_frequency_change_keeps_open_file(tmp_path, autojump_clock):
    c = _collector(tmp_path, "sensor", "Readings", 1)
    async with trio.open_nursery() as n:
        await n.start(c.run)
        await trio.sleep(2.5)  # ticks at 0, 1, 2
        open_before = c.statistics().open_file
        c.set_frequency(10)
        await trio.sleep(0.95)  # new grid through the tick at 2.0: ticks at 2.5 ... 3.4
        assert c.statistics().open_file == open_before
        n.cancel_scope.cancel()
    (recs,) = records_by_method(tmp_path).values()
    times = [r.requested_ns / 1e9 for r in recs]
    assert times[:5] == pytest.approx([0.0, 1.0, 2.0, 2.5, 2.6])
    assert len(recs) == 3 + 10
    assert len(capture_files(tmp_path)) == 1


async def test_finish_request_rotates_the_file(tmp_path, autojump_clock):
    c = _collector(tmp_path, "sensor", "Readings", 10)
    async with trio.open_nursery() as n:
        await n.start(c.run)
        await trio.sleep(1.05)
        await c.finish_open_file()
        assert len(capture_files(tmp_path)) == 1
        assert c.statistics().open_file is None
        n.cancel_scope.cancel()


async def test_measured_rate_follows_a_rate_change(tmp_path, autojump_clock):
    c = _collector(tmp_path, "sensor", "Readings", 2)
    async with trio.open_nursery() as n:
        await n.start(c.run)
        await trio.sleep(3.2)
        assert c.statistics().measured_hz == pytest.approx(2.0, abs=0.05)
        c.set_frequency(20)
        await trio.sleep(2.1)
        assert c.statistics().measured_hz == pytest.approx(20.0, abs=1.0)
        n.cancel_scope.cancel()


async def test_request_stop_finishes_after_the_capture_in_flight(tmp_path, autojump_clock):
    c = _collector(tmp_path, "sensor", "Readings", 1, attributes={"latency_ms": 400})
    async with trio.open_nursery() as n:
        await n.start(c.run)
        await trio.sleep(1.1)  # the call for the tick at 1.0 is in flight until 1.4
        c.request_stop()
        await c.stopped.wait()
        assert trio.current_time() == pytest.approx(1.4)
    (recs,) = records_by_method(tmp_path).values()
    assert len(recs) == 2 and not leftover_progs(tmp_path)
