"""Files of additional_sync_paths: a `tag=<name>` folder tags what is under it in the cloud, and the
cloud keeps each plain file's name, size and modification time, by both upload paths; an agent
that does not state the time (an older one) still syncs, and a malformed time is refused."""

from __future__ import annotations

import hashlib
import os

import pytest

from capsync.actors.uploader import upload_file
from capsync.runtime.cloud_client import CloudClient
from capsync.runtime.sync_files import SyncFile
from capsync.runtime.sync_protocol import MTIME_HEADER, FileKind, folder_tags
from tests.cloudkit import InProcessCloud, all_pages

MTIME_NS = 1_767_322_245_123_456_789


def test_folder_tags_are_read_from_tag_folders_only():
    assert folder_tags("tag=tomato/day1/tag=ripe/img.jpg") == ("tomato", "ripe")
    assert folder_tags("tag=a/tag=a/x.txt") == ("a",)
    assert folder_tags("tag=a b/tag=/tagx/tag=ok/tag=not-a-folder.txt") == ("ok",)
    assert folder_tags("plain.txt") == ()


@pytest.mark.parametrize("size", [100, 300_000])  # one request; chunked and committed
async def test_tag_folders_and_the_files_name_size_and_mtime_reach_the_cloud(tmp_path, size):
    root = tmp_path / "extra"
    path = root / "tag=tomato" / "row-3" / "tag=ripe" / "img.jpg"
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(size))
    os.utime(path, ns=(MTIME_NS, MTIME_NS))
    cloud = InProcessCloud(tmp_path / "cloud")
    secret = await cloud.add_part("part-t")
    client = CloudClient(cloud.url, "part-t", secret, transport=cloud.transport)
    try:
        st = path.stat()
        await upload_file(client, SyncFile(path, root, FileKind.FILE, st.st_size, st.st_mtime_ns), chunk_bytes=128 * 1024)
    finally:
        await client.aclose()
    assert not path.exists()
    async with cloud.client("part-t", secret) as c:
        [item] = await all_pages(c, "/v1/binary", tag="tomato")
        assert await all_pages(c, "/v1/binary", tag="ripe") == [item]
        assert await all_pages(c, "/v1/binary", tag="row-3") == []
        [row] = await all_pages(c, "/v1/files")
    assert item["name"] == "tag=tomato/row-3/tag=ripe/img.jpg" and item["size"] == size
    assert sorted(item["tags"]) == ["ripe", "tomato"] and item["metadata"] == {"mtime_ns": MTIME_NS}
    assert row["size"] == size and row["metadata"] == {"mtime_ns": MTIME_NS}


async def test_an_agent_that_states_no_mtime_still_syncs_and_a_bad_one_is_refused(tmp_path):
    cloud = InProcessCloud(tmp_path / "cloud")
    secret = await cloud.add_part("part-t")
    data = b"hello"
    query = {"kind": "file", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "name": "tag=x/a.txt"}
    async with cloud.client("part-t", secret) as c:
        bad = await c.put("/v1/files/FILEWITHBADTIME1", params=query, content=data, headers={MTIME_HEADER: "-5"})
        old = await c.put("/v1/files/FILEWITHOUTTIME1", params=query, content=data)
        [item] = await all_pages(c, "/v1/binary")
    assert bad.status_code == 400 and MTIME_HEADER in bad.json()["error"]
    assert old.status_code == 200 and old.json()["state"] == "committed"
    assert item["tags"] == ["x"] and item["metadata"] == {}
