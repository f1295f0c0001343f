"""Filtered capture: the `filtered-camera` model, "nothing to capture" as a skip (not a failure),
and the acceptance run: a 10 Hz camera behind a tomato filter with a 1 s window, under the
simulation harness, where only matching frames and their windows reach the cloud, each once."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from capsync.actors.agent_metrics import agent_registry
from capsync.actors.collector import Collector, CollectorSettings
from capsync.actors.sim import CLOUD_URL, Simulation
from capsync.runtime.blocking import inline_blocking
from capsync.runtime.capture_file import read_capture
from capsync.runtime.config import parse_config
from capsync.runtime.resources.fake_camera import fake_detection_draws
from capsync.runtime.resources.filtered_camera import FilteredCamera
from capsync.runtime.resources.resource import Binary, NoCapture, ResourceError
from capsync.runtime.wallclock import WallClock
from tests.helpers import capture_files, fake_component, robot_config


class _Vision:
    """A vision service whose next answers a test sets: lists of (class_name, confidence)."""

    type, name, model = "vision", "v", "stub"

    def __init__(self) -> None:
        self.next: list[tuple[str, float]] = []
        self.n = 0

    async def capture(self, method: str, params: dict) -> Binary:
        self.n += 1
        dets = [{"class_name": c, "confidence": p} for c, p in self.next]
        return Binary(b"img%d" % self.n, "image/jpeg", {"detections": dets, "classifications": []})

    async def close(self) -> None:
        pass


class _Lookup:
    def __init__(self, vision: _Vision) -> None:
        self.vision = vision

    def get(self, name: str) -> _Vision:
        return self.vision


def _filtered(vision: _Vision, **attrs) -> FilteredCamera:
    return FilteredCamera("fc", {"camera": "cam", "vision": "v", **attrs}, _Lookup(vision))


async def test_only_frames_whose_labels_meet_their_confidence_pass(autojump_clock):
    vision = _Vision()
    cam = _filtered(vision, objects={"tomato": 0.7})
    inverse = _filtered(_Vision(), objects={"tomato": 0.7}, inverse=True)
    anything = _filtered(vision, classifications={}, objects={"*": 0.95})
    for dets, passes in ([("tomato", 0.8)], True), ([("tomato", 0.6)], False), ([("leaf", 0.99)], False), ([], False):
        vision.next = dets
        if passes:
            assert (await cam.capture("ReadImage", {})).data.startswith(b"img")
        else:
            with pytest.raises(NoCapture):
                await cam.capture("ReadImage", {})
        inverse.lookup.vision.next = dets
        if passes:
            with pytest.raises(NoCapture):
                await inverse.capture("ReadImage", {})
        else:
            assert isinstance(await inverse.capture("ReadImage", {}), Binary)
    vision.next = [("leaf", 0.99)]
    assert isinstance(await anything.capture("GetImages", {}), list)
    assert (cam.matched, cam.declined) == (1, 3)
    with pytest.raises(ResourceError, match="objects.*classifications"):
        _filtered(vision)
    with pytest.raises(ResourceError, match="0..1"):
        _filtered(vision, objects={"tomato": 1.5})
    with pytest.raises(ResourceError, match="NextPointCloud"):
        await cam.capture("NextPointCloud", {})


async def test_a_match_brings_the_window_before_and_after_each_frame_once(autojump_clock):
    vision = _Vision()
    cam = _filtered(vision, objects={"tomato": 0.7}, window_seconds=0.3)
    got: list[tuple[bytes, float]] = []  # (frame, time it was taken)

    async def tick(tomato: bool) -> None:
        vision.next = [("tomato", 0.9)] if tomato else []
        try:
            result = await cam.capture("ReadImage", {})
        except NoCapture:
            return
        for b in result if isinstance(result, list) else [result]:
            got.append((b.data, round(trio.current_time() - b.age_s, 6)))

    t0 = trio.current_time()
    for i in range(12):  # frames 1..12 at 10 Hz; tomatoes in 6 and 8
        await tick(i + 1 in (6, 8))
        await trio.sleep(0.1)
    frames = [int(d[3:]) for d, _ in got]
    assert frames == [3, 4, 5, 6, 7, 8, 9, 10, 11]  # 0.3 s before 6, then everything up to 0.3 s after 8
    assert [t for _, t in got] == [round(t0 + (f - 1) * 0.1, 6) for f in frames]  # each with its own time
    assert (cam.frames, cam.matched, cam.declined) == (12, 2, 6)


class _Declining:
    """A sensor that has nothing to capture on odd calls."""

    type, name, model = "sensor", "s", "stub"

    def __init__(self) -> None:
        self.n = 0

    async def capture(self, method: str, params: dict) -> dict:
        self.n += 1
        if self.n % 2:
            raise NoCapture()
        return {"n": self.n}

    async def close(self) -> None:
        pass


async def test_no_capture_is_a_skip_not_a_failure_and_is_not_logged(tmp_path, autojump_clock, caplog):
    cfg = parse_config(json.dumps(robot_config(tmp_path, [fake_component("s", "sensor", [
        {"method": "Readings", "capture_frequency_hz": 10}])])))
    [plan] = cfg.capture_plan()
    resource = _Declining()
    collector = Collector(plan, resource, CollectorSettings(tmp_path, "p"), WallClock())
    caplog.set_level(logging.DEBUG)
    with inline_blocking():
        await _run_for(collector, 1.95)
    s = collector.statistics()
    assert resource.n == 20 and (s.skipped, s.captured, s.failed, s.missed_ticks) == (10, 10, 0, 0)
    assert s.last_error is None and not [r for r in caplog.records if r.levelno > logging.DEBUG]
    records = [r for p in capture_files(tmp_path) for r in read_capture(p).records]
    assert [r.payload["n"] for r in records] == list(range(2, 21, 2))


async def _run_for(collector: Collector, seconds: float) -> None:
    async with trio.open_nursery() as n:
        await n.start(collector.run)
        await trio.sleep(seconds)
        n.cancel_scope.cancel()


def _tomato_config(seconds_per_file: float) -> dict:
    camera = {"name": "cam", "type": "camera", "model": "fake", "attributes": {"fps": 10}}
    detector = {"name": "detector", "type": "vision", "model": "fake",
                "attributes": {"fake_detections": [{"class_name": "tomato", "rate": 0.05, "confidence": 0.9}]}}
    filtered = {"name": "tomatoes", "type": "camera", "model": "filtered-camera",
                "attributes": {"camera": "cam", "vision": "detector", "objects": {"tomato": 0.7}, "window_seconds": 1},
                "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": [
                    {"method": "ReadImage", "capture_frequency_hz": 10, "additional_params": {"mime_type": "image/jpeg"}}]}}]}
    return {"components": [camera, filtered], "services": [
        detector, {"name": "dm", "type": "data_manager", "attributes": {"sync_interval_mins": seconds_per_file / 60}}]}


async def test_acceptance_only_tomatoes_and_their_windows_reach_the_cloud_once(tmp_path: Path, autojump_clock):
    async with Simulation(tmp_path, _tomato_config(5)) as sim:
        await sim.advance(60)
        sim.agent.collectors[next(iter(sim.agent.collectors))].request_stop()  # no tick after the count below
        await sim.advance(1)
        calls = sim.agent._registry.get("detector").calls
        await sim.drain()
        report = await sim.accounting()
        [stats] = sim.status().collectors
        scraped = {(m.name, x.name): x.value for m in text_string_to_metric_families(
            generate_latest(agent_registry(sim.agent)).decode()) for x in m.samples}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app), base_url=CLOUD_URL,
                                     auth=(sim.part_id, sim.secret)) as client:
            items = (await client.get("/v1/binary", params={"limit": 1000})).json()["items"]
    # What the detector found in each of its calls (one per 10 Hz tick), predicted independently.
    hits = list(itertools.islice(fake_detection_draws("detector", "tomato", 0.05), calls))
    matches = [k for k, hit in enumerate(hits) if hit]
    after = {k for m in matches for k in range(m + 1, m + 11)} - set(matches)
    declined = [k for k in range(calls) if k not in matches and k not in after]
    before = {k for m in matches for k in range(m - 10, m) if k in declined}
    expected = set(matches) | {k for k in after if k < calls} | before
    assert 10 <= len(matches) <= 60 and len(expected) < calls - 100  # the filter did filter
    # Every frame in the cloud, by its own time on the 10 Hz grid, exactly once.
    tomato_times = sorted(i["requested_ns"] for i in items
                          if any(d["class_name"] == "tomato" for d in i["metadata"]["detections"]))
    assert len(tomato_times) == len(matches)
    t0 = tomato_times[0] - matches[0] * 100_000_000
    frames = [round((i["requested_ns"] - t0) / 100_000_000) for i in items]
    assert sorted(frames) == sorted(expected)
    assert all(abs(i["requested_ns"] - t0 - f * 100_000_000) < 1_000_000 for i, f in zip(items, frames))
    assert report.lost == 0 and report.duplicated == 0 and report.committed == len(expected)
    assert stats.skipped == len(declined) and stats.failed == 0 and stats.missed_ticks == 0
    assert stats.captured == calls - len(declined)
    assert scraped[("capsync_agent_collector_skipped", "capsync_agent_collector_skipped_total")] == len(declined)
    assert scraped[("capsync_agent_skipped", "capsync_agent_skipped_total")] == len(declined)
    assert scraped[("capsync_agent_collector_failures", "capsync_agent_collector_failures_total")] == 0
