"""Vision capture end to end: `CaptureAllFromCamera` is stored as an image with its detections and
classifications (filtered by `min_confidence_score`) in the item's metadata, synced to the cloud
where the query API shows them next to the image's bytes; the same through a remote part."""

from __future__ import annotations

import io
import json
from pathlib import Path

import trio
from PIL import Image

from capsync.actors.agent import Agent
from capsync.runtime.capture_file import read_capture
from capsync.runtime.config import parse_config
from tests.cloudkit import InProcessCloud, all_pages
from tests.helpers import capture_files, fake_component, free_port, robot_config
from tests.test_remote import B_SECRET, until

VISION_PARAMS = {"camera_name": "cam", "mime_type": "image/jpeg", "min_confidence_score": "0.5"}


def _vision_service(methods: list[dict]) -> dict:
    return {"name": "detector", "namespace": "rdk", "type": "vision", "model": "fake", "attributes": {},
            "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": methods}}]}


def _check_item(meta: dict) -> None:
    assert {"detections", "classifications"} <= set(meta)
    assert meta["detections"] and all(d["confidence"] >= 0.5 for d in meta["detections"])
    assert {"class_name", "x_min", "y_min", "x_max", "y_max"} <= set(meta["detections"][0])
    assert all(c["confidence"] >= 0.5 for c in meta["classifications"])


async def test_detections_travel_with_the_image_to_the_cloud(tmp_path: Path):
    cloud = InProcessCloud(tmp_path / "cloud")
    secret = await cloud.add_part("part-v")
    comps = [fake_component("cam", "camera", [], width=200, height=150)]
    cfg = robot_config(tmp_path / "cap", comps, sync_interval_mins=60)
    cfg["services"].append(_vision_service([{"method": "CaptureAllFromCamera", "capture_frequency_hz": 4,
                                             "additional_params": VISION_PARAMS}]))
    cfg["cloud"] = {"id": "part-v", "secret": secret, "app_address": cloud.url}
    agent = Agent(parse_config(json.dumps(cfg)), cloud_transport=cloud.transport, control=False)
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        await trio.sleep(1.6)
        local = [read_capture(p) for p in capture_files(tmp_path / "cap")]
        result = await agent.sync.sync_now()
        n.cancel_scope.cancel()
    assert local and all(c.header.kind.value == "binary" and c.header.mime_type == "image/jpeg" for c in local)
    assert all(c.header.resource_type == "vision" and c.header.method == "CaptureAllFromCamera" for c in local)
    _check_item(local[0].records[0].metadata)
    assert result.uploaded >= 5 and result.failed == 0
    async with cloud.client("part-v", secret) as c:
        items = await all_pages(c, "/v1/binary", resource_name="detector")
        assert len(items) >= 5
        for item in items:
            assert item["mime_type"] == "image/jpeg" and item["method"] == "CaptureAllFromCamera"
            _check_item(item["metadata"])
        resp = await c.get(items[0]["url"])
        resp.raise_for_status()
    with Image.open(io.BytesIO(resp.content)) as img:
        assert img.format == "JPEG" and img.size == (200, 150)
    box = items[0]["metadata"]["detections"][0]
    assert 0 <= box["x_min"] < box["x_max"] <= 200 and 0 <= box["y_min"] < box["y_max"] <= 150


async def test_vision_on_a_remote_part_keeps_its_detections(tmp_path: Path):
    port = free_port()
    part_b = Agent(parse_config(json.dumps({
        "cloud": {"id": "part-b", "secret": B_SECRET}, "network": {"bind_address": f"127.0.0.1:{port}"},
        "components": [{"name": "cam", "type": "camera", "model": "fake", "attributes": {}}],
        "services": [{"name": "detector", "type": "vision", "model": "fake", "attributes": {}}],
    })))
    remote = {"name": "part-b", "address": f"127.0.0.1:{port}", "secret": B_SECRET, "service_configs": [
        {"type": "data_manager", "attributes": {"capture_methods": [
            {"method": "CaptureAllFromCamera", "capture_frequency_hz": 5, "name": "rdk:service:vision/detector",
             "additional_params": VISION_PARAMS}]}}]}
    cfg = robot_config(tmp_path / "cap", [], sync_disabled=True)
    cfg["remotes"] = [remote]
    agent = Agent(parse_config(json.dumps(cfg)), control=False)
    async with trio.open_nursery() as n:
        await n.start(part_b.run)
        await until(lambda: part_b.control.bound_port is not None, 5, "part B to listen")
        await n.start(agent.run)
        await until(lambda: agent.statistics().collectors[0].captured >= 3, 5, "remote vision captures")
        n.cancel_scope.cancel()
    files = [read_capture(p) for p in capture_files(tmp_path / "cap")]
    assert len(files) >= 3
    for f in files:
        assert (f.header.resource_type, f.header.resource_name) == ("vision", "detector")
        assert f.header.metadata["remote_part"] == "part-b" and f.header.mime_type == "image/jpeg"
        assert f.records[0].payload[:2] == b"\xff\xd8"
        _check_item(f.records[0].metadata)
