"""A finished capture file damaged afterwards (SD card rot) keeps its good records: they sync exactly
once, the damaged bytes stay aside in failed/ with a report naming the file and byte offset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from capsync.actors.sync_scheduler import SyncScheduler
from capsync.runtime.capture_file import read_capture
from capsync.runtime.cloud_client import CloudClient
from tests.cloudkit import InProcessCloud, committed_records
from tests.test_cloud_support import tabular_capture


def _damage(path: Path, how: str) -> bytes:
    data = path.read_bytes()
    if how == "torn last frame":
        damaged = data[:-5]
    elif how == "flipped byte in the last frame":
        damaged = data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:]
    else:  # garbage appended
        damaged = data + b"\x13\x37garbage that is not a frame"
    path.write_bytes(damaged)
    return damaged


@pytest.mark.parametrize("how", ["torn last frame", "flipped byte in the last frame", "garbage appended"])
async def test_intact_records_sync_once_and_the_damaged_tail_is_kept_with_a_report(tmp_path: Path, how: str) -> None:
    capture_dir = tmp_path / "capture"
    fid, _ = tabular_capture(capture_dir, part="p1", n=8)
    (path,) = capture_dir.rglob("*.capture")
    damaged = _damage(path, how)
    intact = 7 if how != "garbage appended" else 8
    cloud = InProcessCloud(tmp_path / "cloud")
    secret = await cloud.add_part("p1")
    client = CloudClient(cloud.url, "p1", secret, transport=cloud.transport)
    scheduler = SyncScheduler(client, capture_dirs=lambda: [capture_dir], sync_paths=[], interval_s=3600,
                              max_uploads=2, wall_time=lambda: 4_000_000_000.0)
    first = await scheduler._pass()
    await trio.sleep(0)
    again = await scheduler._pass()
    await client.aclose()
    async with cloud.client("p1", secret) as c:
        held = await committed_records(c)  # it also checks that no record is held twice
    assert held == {(fid, i) for i in range(intact)}
    assert (first.uploaded, again.uploaded) == (1, 0) and not path.exists()
    stats = scheduler.statistics()
    assert (stats.salvaged, stats.set_aside) == (1, 0)
    (report_path,) = (capture_dir / "failed").rglob("*.damaged-tail.json")
    report = json.loads(report_path.read_text())
    tail = report_path.with_name(report_path.name[: -len(".json")]).read_bytes()
    assert report["file_id"] == fid and report["intact_records"] == intact and report["reason"]
    assert damaged[report["offset"]:] == tail and report["damaged_bytes"] == len(tail) > 0


async def test_a_file_with_an_unreadable_header_is_still_set_aside_whole(tmp_path: Path) -> None:
    capture_dir = tmp_path / "capture"
    tabular_capture(capture_dir, part="p1", n=3)
    (path,) = capture_dir.rglob("*.capture")
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF  # inside the header frame
    path.write_bytes(bytes(data))
    cloud = InProcessCloud(tmp_path / "cloud")
    secret = await cloud.add_part("p1")
    client = CloudClient(cloud.url, "p1", secret, transport=cloud.transport)
    scheduler = SyncScheduler(client, capture_dirs=lambda: [capture_dir], sync_paths=[], interval_s=3600,
                              max_uploads=2, wall_time=lambda: 4_000_000_000.0)
    await scheduler._pass()
    await client.aclose()
    stats = scheduler.statistics()
    assert (stats.salvaged, stats.set_aside) == (0, 1)
    (aside,) = (capture_dir / "failed").rglob("*.capture")
    assert aside.read_bytes() == bytes(data)
    with pytest.raises(Exception):
        read_capture(aside)
