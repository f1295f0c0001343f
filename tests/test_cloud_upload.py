"""The upload side of the sync protocol against the in-process cloud app."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsync.runtime.sync_protocol import ErrorBody, FileStatus
from tests.test_cloud_support import (
    BACKENDS, CloudEnv, binary_capture, committed_bytes, declaration, holds_partial, open_env, tabular_capture, upload,
)


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CloudEnv]:
    """The protocol's promises hold on every backend the cloud runs on."""
    with open_env(request.param, tmp_path) as e:
        yield e


async def test_full_upload_commits_and_the_query_returns_exactly_the_records(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path, n=7)
    async with env.client() as c:
        assert (await c.get(f"/v1/files/{fid}")).json()["state"] == "unknown"
        r = await upload(c, fid, data, chunk=50)
        assert r.status_code == 200
        status = FileStatus.model_validate_json(r.content)
        assert (status.state.value, status.offset, status.size, status.records) == ("committed", len(data), len(data), 7)
        rows = (await c.get("/v1/tabular")).json()["items"]
    assert [(r["file_id"], r["record_index"], r["payload"]["i"]) for r in rows] == [(fid, i, i) for i in range(7)]
    assert rows[3]["requested_ns"] == 1_000_003_000 and rows[3]["received_ns"] == 1_000_003_007
    assert rows[0]["requested"] == "1970-01-01T00:00:01.000000000Z"
    assert rows[0]["resource_type"] == "sensor" and rows[0]["tags"] == ["t1"]
    stats = await env.store.statistics()
    assert (stats.files, stats.tabular_rows, stats.uploads) == (1, 7, 0)
    assert committed_bytes(env, "part-a", fid) == data
    assert not holds_partial(env, "part-a", fid)


async def test_an_interrupted_upload_resumes_at_the_clouds_offset(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path, n=20)
    async with env.client() as c:
        await upload(c, fid, data[:150], commit=False)  # declares the size of the prefix only...
        r = await c.post(f"/v1/files/{fid}", json=declaration(data))  # ...a new declaration restarts
        assert r.json()["offset"] == 0
        await c.put(f"/v1/files/{fid}/data", params={"offset": 0}, content=data[:123])
        # The agent restarts and asks where to resume: the same declaration keeps the bytes.
        r = await c.post(f"/v1/files/{fid}", json=declaration(data))
        assert (r.json()["state"], r.json()["offset"], r.json()["size"]) == ("partial", 123, len(data))
        assert (await c.get(f"/v1/files/{fid}")).json()["offset"] == 123
        r = await c.put(f"/v1/files/{fid}/data", params={"offset": 123}, content=data[123:])
        assert r.json()["offset"] == len(data)
        r = await c.post(f"/v1/files/{fid}/commit")
    assert r.status_code == 200 and r.json()["records"] == 20


async def test_a_stale_offset_gets_409_with_the_offset_the_cloud_holds(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path)
    async with env.client() as c:
        await upload(c, fid, data, commit=False, chunk=40)  # everything sent, not committed
        await c.post(f"/v1/files/{fid}", json=declaration(data))
        for wrong in (0, 10, len(data) + 5):
            r = await c.put(f"/v1/files/{fid}/data", params={"offset": wrong}, content=b"x")
            assert r.status_code == 409, (wrong, r.text)
            err = ErrorBody.model_validate_json(r.content)
            assert err.error == "stale offset" and err.status is not None
            assert (err.status.state.value, err.status.offset) == ("partial", len(data))
        assert (await c.post(f"/v1/files/{fid}/commit")).status_code == 200


async def test_data_before_declaring_and_commit_before_all_bytes_are_409(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path)
    async with env.client() as c:
        r = await c.put(f"/v1/files/{fid}/data", params={"offset": 0}, content=data)
        assert r.status_code == 409 and r.json()["status"]["state"] == "unknown"
        r = await c.post(f"/v1/files/{fid}/commit")
        assert r.status_code == 409 and r.json()["status"]["state"] == "unknown"
        await c.post(f"/v1/files/{fid}", json=declaration(data))
        await c.put(f"/v1/files/{fid}/data", params={"offset": 0}, content=data[:10])
        r = await c.post(f"/v1/files/{fid}/commit")
        assert r.status_code == 409 and r.json()["error"] == "upload incomplete"
        assert r.json()["status"]["offset"] == 10


async def test_a_chunk_beyond_the_declared_size_is_refused(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path)
    async with env.client() as c:
        await c.post(f"/v1/files/{fid}", json=declaration(data))
        r = await c.put(f"/v1/files/{fid}/data", params={"offset": 0}, content=data + b"!")
        assert r.status_code == 400 and r.json()["error"] == "chunk exceeds declared size"
        assert (await c.get(f"/v1/files/{fid}")).json()["offset"] == 0


async def test_checksum_mismatch_is_422_and_the_upload_is_forgotten(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path)
    corrupt = bytearray(data)
    corrupt[-3] ^= 0xFF
    async with env.client() as c:
        r = await c.post(f"/v1/files/{fid}", json=declaration(data))  # declares the good checksum
        await c.put(f"/v1/files/{fid}/data", params={"offset": 0}, content=bytes(corrupt))
        r = await c.post(f"/v1/files/{fid}/commit")
        assert r.status_code == 422
        err = ErrorBody.model_validate_json(r.content)
        assert err.error == "checksum mismatch" and err.status is not None and err.status.state.value == "unknown"
        assert (await c.get(f"/v1/files/{fid}")).json() == {
            "file_id": fid, "state": "unknown", "offset": 0, "size": None, "records": None}  # a client without Capsync-Protocol: 2
        assert not holds_partial(env, "part-a", fid)
        assert (await upload(c, fid, data)).json()["state"] == "committed"  # the retry succeeds
    assert (await env.store.statistics()).tabular_rows == 5


async def test_a_second_commit_inserts_nothing(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path, n=4)
    async with env.client() as c:
        first = (await upload(c, fid, data)).json()
        before = await env.store.statistics()
        again = await c.post(f"/v1/files/{fid}/commit")
        after = await env.store.statistics()
    assert again.status_code == 200 and again.json() == first
    assert before == after and after.tabular_rows == 4 and after.files == 1


async def test_re_uploading_a_committed_file_answers_committed_without_storing_twice(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path, n=3)
    async with env.client() as c:
        await upload(c, fid, data)
        # The agent crashed before deleting its copy and starts over: every step says committed.
        r = await c.post(f"/v1/files/{fid}", json=declaration(data))
        assert (r.status_code, r.json()["state"], r.json()["records"]) == (200, "committed", 3)
        r = await c.put(f"/v1/files/{fid}/data", params={"offset": 0}, content=data)
        assert r.status_code == 409 and r.json()["status"]["state"] == "committed"
        assert (await c.post(f"/v1/files/{fid}/commit")).json()["state"] == "committed"
    stats = await env.store.statistics()
    assert (stats.files, stats.tabular_rows, stats.uploads) == (1, 3, 0)


async def test_a_capture_file_naming_another_part_or_file_is_rejected_and_discarded(env: CloudEnv, tmp_path: Path) -> None:
    other_part_fid, other_part = tabular_capture(tmp_path, part="part-b")
    _, other_file = tabular_capture(tmp_path)
    async with env.client() as c:
        r = await upload(c, other_part_fid, other_part)
        assert r.status_code == 422 and "part 'part-b'" in r.json()["detail"]
        assert r.json()["error"] == "capture file rejected" and r.json()["status"]["state"] == "unknown"
        r = await upload(c, "some-other-file-id", other_file)
        assert r.status_code == 422 and "names file" in r.json()["detail"]
    assert (await env.store.statistics()).uploads == 0


async def test_damaged_and_non_capture_bytes_are_rejected_with_a_reason(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path)
    async with env.client() as c:
        r = await upload(c, fid, data[:-5])  # torn tail, but with a matching checksum
        assert r.status_code == 422 and "damaged" in r.json()["detail"]
        r = await upload(c, "junk-file-0001", b"this is not a capture file")
        assert r.status_code == 422 and "not a readable capture file" in r.json()["detail"]
        assert str(env.data_dir) not in r.json()["detail"]  # no server paths in answers


async def test_a_plain_file_becomes_one_binary_item(env: CloudEnv) -> None:
    data = b"col1,col2\n1,2\n"
    async with env.client() as c:
        r = await upload(c, "plainfile-0001", data, kind="file", name="logs/run.csv")
        assert (r.json()["state"], r.json()["records"]) == ("committed", 1)
        (item,) = (await c.get("/v1/binary")).json()["items"]
        assert (item["id"], item["name"], item["mime_type"], item["size"]) == (
            "plainfile-0001-0", "logs/run.csv", "text/csv", len(data))
        got = await c.get(item["url"])
    assert got.content == data and got.headers["content-type"].startswith("text/csv")


async def test_an_empty_file_can_be_declared_and_committed(env: CloudEnv) -> None:
    async with env.client() as c:
        r = await upload(c, "emptyfile-001", b"", kind="file", name="empty.bin")
    assert (r.status_code, r.json()["state"], r.json()["size"]) == (200, "committed", 0)


async def test_binary_capture_items_serve_their_bytes_and_metadata(env: CloudEnv, tmp_path: Path) -> None:
    images = [b"\xff\xd8jpeg-one\xff\xd9", b"\xff\xd8jpeg-two-longer\xff\xd9"]
    meta = [None, {"detections": [{"label": "cat", "confidence": 0.9}]}]
    fid, data = binary_capture(tmp_path, images, metadata=meta)
    async with env.client() as c:
        assert (await upload(c, fid, data)).json()["records"] == 2
        items = (await c.get("/v1/binary", params={"resource_type": "camera"})).json()["items"]
        assert [i["id"] for i in items] == [f"{fid}-0", f"{fid}-1"]
        assert items[1]["metadata"] == meta[1] and items[1]["size"] == len(images[1])
        for item, img in zip(items, images):
            r = await c.get(f"/v1/binary/{item['id']}")
            assert (r.status_code, r.content, r.headers["content-type"]) == (200, img, "image/jpeg")
        assert (await c.get(f"/v1/binary/{fid}-2")).status_code == 404


async def test_the_checksum_is_computed_over_exactly_the_bytes_sent(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path, n=50)
    async with env.client() as c:
        await upload(c, fid, data, chunk=333)
        (f,) = (await c.get("/v1/files")).json()["items"]
    assert (f["file_id"], f["sha256"], f["size"], f["records"]) == (fid, hashlib.sha256(data).hexdigest(), len(data), 50)
