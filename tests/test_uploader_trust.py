"""The uploader deletes a local file only when the cloud's "committed" states exactly its bytes.

A fake cloud (an httpx MockTransport speaking the sync protocol) lies in the ways a stray server,
a buggy cloud or an older cloud would: "committed" for everything, with no sha256, with another
sha256 or size. The agent must keep every file, count and log it once. Against the real cloud a
plain file whose content changed under an unchanged size and mtime is uploaded as new content,
and a file that changes between the commit and the delete is kept.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import httpx
import pytest
import trio

from capsync.actors.sync_scheduler import SyncScheduler
from capsync.actors.uploader import UnverifiedCommit, upload_file
from capsync.runtime.cloud_client import CloudClient, CloudUnavailable
from capsync.runtime.sync_files import find_ready_files, fingerprint
from tests.cloudkit import InProcessCloud, committed_records
from tests.test_cloud_support import tabular_capture


def _lying_cloud(answer) -> tuple[httpx.MockTransport, list[str]]:
    """A transport that answers every request 200 with `answer(declared_start_or_None, file_id)`."""
    seen: list[str] = []
    declared: dict[str, dict] = {}

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        file_id = request.url.path.split("/")[3]
        if request.method == "POST" and not request.url.path.endswith("/commit"):
            declared[file_id] = json.loads(request.content)
        elif request.method == "PUT" and not request.url.path.endswith("/data"):  # the one-request upload
            declared[file_id] = {**request.url.params, "size": int(request.url.params["size"])}
        return httpx.Response(200, json={"file_id": file_id, **answer(declared.get(file_id), file_id)})

    return httpx.MockTransport(handle), seen


def _eight_files(tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    """Four finished capture files and four plain files, all ready to sync."""
    capture_dir, extra = tmp_path / "capture", tmp_path / "extra"
    for i in range(4):
        tabular_capture(capture_dir, part="p1", n=3 + i)
    extra.mkdir()
    for i in range(4):
        p = extra / f"plain{i}.bin"
        p.write_bytes(os.urandom(1000 + i))
        os.utime(p, (1_000_000, 1_000_000))
    files = sorted(capture_dir.rglob("*.capture")) + sorted(extra.iterdir())
    assert len(files) == 8
    return capture_dir, extra, files


LIES = {
    "committed, nothing else": lambda d, fid: {"state": "committed"},
    "committed, declared size, no sha256": lambda d, fid: {"state": "committed", "size": d and d["size"]},
    "committed, declared size, other sha256": lambda d, fid: {"state": "committed", "size": d and d["size"],
                                                              "sha256": "0" * 64},
    "committed, declared sha256, other size": lambda d, fid: {"state": "committed", "size": (d["size"] + 1) if d else 1,
                                                              "sha256": d and d["sha256"]},
    "committed, another file id": lambda d, fid: {"state": "committed", "size": d and d["size"],
                                                  "sha256": d and d["sha256"], "file_id": "someone-elses-file"},
}


@pytest.mark.parametrize("lie", list(LIES))
async def test_a_cloud_that_lies_about_the_commit_deletes_nothing(tmp_path, lie, caplog, autojump_clock):
    capture_dir, extra, files = _eight_files(tmp_path)
    before = {p: p.read_bytes() for p in files}
    transport, seen = _lying_cloud(LIES[lie])
    client = CloudClient("http://fake-cloud", "p1", "secret", transport=transport)
    scheduler = SyncScheduler(client, capture_dirs=lambda: [capture_dir], sync_paths=[extra], interval_s=3600,
                              max_uploads=2, wall_time=lambda: 2_000_000.0)
    caplog.set_level(logging.WARNING, logger="capsync.sync")
    result = await scheduler._pass()
    await trio.sleep(10)  # past every file's first backoff
    again = await scheduler._pass()  # still nothing deleted, and the warning is not repeated
    await client.aclose()
    assert seen, "the fake cloud was never asked"
    assert {p: p.read_bytes() for p in files if p.exists()} == before  # every file kept, unchanged
    stats = scheduler.statistics()
    assert (result.uploaded, result.failed, again.failed, stats.files_synced) == (0, 8, 8, 0)
    assert stats.unverified_commits == 16
    assert stats.set_aside == 0
    warnings = [r for r in caplog.records if "commit answer does not match" in r.getMessage()]
    assert len(warnings) == 1  # loud, but once per change of state, not once per file


async def test_an_older_cloud_without_sha256_keeps_files_and_says_why(tmp_path):
    _, extra, files = _eight_files(tmp_path)
    transport, _ = _lying_cloud(lambda d, fid: {"state": "committed", "size": d and d["size"], "offset": d and d["size"]})
    client = CloudClient("http://old-cloud", "p1", "secret", transport=transport)
    (f, *_) = find_ready_files([], [extra], now_s=2_000_000)
    with pytest.raises(UnverifiedCommit, match="does not state the sha256"):
        await upload_file(client, f)
    await client.aclose()
    assert f.path.exists()


@pytest.fixture
async def cloud(tmp_path):
    c = InProcessCloud(tmp_path / "cloud")
    c.secret = await c.add_part("p1")
    client = CloudClient(c.url, "p1", c.secret, transport=c.transport)
    yield c, client
    await client.aclose()


async def test_a_changed_plain_file_with_the_same_size_and_mtime_is_uploaded_as_new_content(tmp_path, cloud):
    c, client = cloud
    extra = tmp_path / "extra"
    extra.mkdir()
    path = extra / "notes.txt"
    first, second = b"A" * 4096, b"B" * 4096
    for content in (first, second):
        path.write_bytes(content)
        os.utime(path, (1_000_000, 1_000_000))  # same size, same mtime: only the bytes differ
        (f,) = find_ready_files([], [extra], now_s=2_000_000)
        result = await upload_file(client, f)
        assert result.bytes_sent == len(content) and not path.exists()
    async with httpx.AsyncClient(base_url=c.url, transport=c.transport, auth=("p1", c.secret)) as http:
        listed = (await http.get("/v1/files")).json()["items"]
        bodies = sorted([(await http.get(f"/v1/binary/{i['file_id']}-0")).content for i in listed])
    assert bodies == [first, second]


async def test_a_file_that_changes_after_the_commit_is_kept_and_uploaded_again(tmp_path, cloud):
    c, client = cloud
    extra = tmp_path / "extra"
    extra.mkdir()
    path = extra / "log.bin"
    path.write_bytes(b"old" * 1000)
    os.utime(path, (1_000_000, 1_000_000))
    (f,) = find_ready_files([], [extra], now_s=2_000_000)
    real_put_whole = client.put_whole

    async def commit_then_the_file_changes(*args):
        status = await real_put_whole(*args)
        path.write_bytes(b"new" * 1000)  # written between the commit and the delete
        os.utime(path, (1_000_000, 1_000_000))
        return status

    client.put_whole = commit_then_the_file_changes
    with pytest.raises(UnverifiedCommit, match="changed after it was committed"):
        await upload_file(client, f)
    client.put_whole = real_put_whole
    assert path.read_bytes() == b"new" * 1000
    (again,) = find_ready_files([], [extra], now_s=2_000_000)
    result = await upload_file(client, again)
    assert result.bytes_sent == 3000 and not path.exists()


async def test_a_capture_file_is_deleted_once_the_real_cloud_commits_its_bytes(tmp_path, cloud):
    c, client = cloud
    capture_dir = tmp_path / "capture"
    file_id, data = tabular_capture(capture_dir, part="p1", n=4)
    (f,) = find_ready_files([capture_dir], [], now_s=0)
    assert fingerprint(f.path)[0] == len(data)
    await upload_file(client, f)
    assert not f.path.exists()
    async with httpx.AsyncClient(base_url=c.url, transport=c.transport, auth=("p1", c.secret)) as http:
        assert len(await committed_records(http)) == 4


async def test_a_cloud_that_never_makes_progress_cannot_hold_the_uploader_forever(tmp_path):
    _, extra, _ = _eight_files(tmp_path)
    transport, seen = _lying_cloud(lambda d, fid: {"state": "partial", "offset": 0, "size": d and d["size"]})
    client = CloudClient("http://stuck-cloud", "p1", "secret", transport=transport)
    (f, *_) = find_ready_files([], [extra], now_s=2_000_000)
    with trio.fail_after(10):
        with pytest.raises(CloudUnavailable, match="no progress"):
            await upload_file(client, f, chunk_bytes=256)
    await client.aclose()
    assert f.path.exists()
    assert 10 < len(seen) <= 4 * (f.size // 256 + 1) + 17  # bounded by the size, not by the cloud's patience
