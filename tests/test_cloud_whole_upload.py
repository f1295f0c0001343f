"""The one-request upload of small files (`PUT /v1/files/{id}?...`) and group commit, on every backend."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from capsync.cloud.group_commit import GroupCommitter
from capsync.cloud.store import Commit
from capsync.runtime.sync_protocol import PROTOCOL_HEADER, PROTOCOL_VERSION, FileStatus
from tests.test_cloud_support import (
    BACKENDS, PART_B, CloudEnv, binary_capture, declaration, open_env, tabular_capture, upload,
)


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CloudEnv]:
    """The one-request path's promises hold on every backend."""
    with open_env(request.param, tmp_path) as e:
        yield e


async def put_whole(c: httpx.AsyncClient, file_id: str, data: bytes, *, kind: str = "capture",
                    **override: object) -> httpx.Response:
    """One-request upload of `data` as `file_id`; `override` replaces or adds query parameters."""
    params = {k: str(v) for k, v in {**declaration(data, kind), **override}.items()}
    return await c.put(f"/v1/files/{file_id}", params=params, content=data,
                       headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION)})


async def test_one_request_commits_a_capture_file_with_all_its_records(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path, n=9)
    async with env.client() as c:
        r = await put_whole(c, fid, data)
        assert r.status_code == 200, r.text
        status = FileStatus.model_validate_json(r.content)
        assert (status.state.value, status.size, status.records) == ("committed", len(data), 9)
        assert status.sha256 == hashlib.sha256(data).hexdigest()
        rows = (await c.get("/v1/tabular")).json()["items"]
        assert [row["payload"]["i"] for row in rows] == list(range(9))
        assert (await c.get(f"/v1/files/{fid}")).json()["state"] == "committed"
    stats = await env.store.statistics()
    assert (stats.files, stats.tabular_rows, stats.uploads) == (1, 9, 0)


async def test_repeating_the_request_stores_nothing_twice(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path, n=4)
    async with env.client() as c:
        first = await put_whole(c, fid, data)
        again = await put_whole(c, fid, data)
        # A committed file is answered committed, whatever the retry sends (even a wrong body).
        other = await put_whole(c, fid, b"x" * 10)
    assert first.json() == again.json() == other.json()
    assert (await env.store.statistics()).tabular_rows == 4


async def test_a_resumable_upload_in_progress_is_finished_by_a_whole_request(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path, n=6)
    async with env.client() as c:
        await upload(c, fid, data[:40], commit=False)
        r = await put_whole(c, fid, data)
        assert r.json()["state"] == "committed"
        # The old upload is forgotten: its commit now only says committed.
        assert (await c.post(f"/v1/files/{fid}/commit")).json()["records"] == 6
    stats = await env.store.statistics()
    assert (stats.files, stats.tabular_rows, stats.uploads) == (1, 6, 0)


@pytest.mark.parametrize("problem, status, error", [
    ("sha256", 422, "checksum mismatch"),
    ("short body", 400, "wrong Content-Length"),
    ("missing size", 400, "invalid upload declaration"),
    ("unknown parameter", 400, "invalid upload declaration"),
    ("damaged", 422, "capture file rejected"),
])
async def test_a_bad_request_is_refused_with_a_reason_and_stores_nothing(env: CloudEnv, tmp_path: Path,
                                                                         problem: str, status: int, error: str) -> None:
    fid, data = tabular_capture(tmp_path, n=5)
    async with env.client() as c:
        if problem == "sha256":
            r = await put_whole(c, fid, data, sha256="0" * 64)
        elif problem == "short body":
            r = await c.put(f"/v1/files/{fid}", params={k: str(v) for k, v in declaration(data).items()},
                            content=data[:-1])
        elif problem == "missing size":
            params = {k: str(v) for k, v in declaration(data).items() if k != "size"}
            r = await c.put(f"/v1/files/{fid}", params=params, content=data)
        elif problem == "unknown parameter":
            r = await put_whole(c, fid, data, colour="blue")
        else:
            damaged = data[:-3] + b"\xff\xff\xff"
            r = await put_whole(c, fid, damaged)
        assert r.status_code == status, r.text
        assert r.json()["error"] == error and r.json()["detail"]
        assert (await c.get(f"/v1/files/{fid}")).json()["state"] == "unknown"
    stats = await env.store.statistics()
    assert (stats.files, stats.tabular_rows) == (0, 0)


async def test_a_file_naming_another_part_is_rejected(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path, PART_B, n=2)
    async with env.client() as c:
        r = await put_whole(c, fid, data)
    assert r.status_code == 422 and "part" in r.json()["detail"]


async def test_plain_and_binary_files_in_one_request_serve_their_bytes(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = binary_capture(tmp_path, [b"\xff\xd8one", b"\xff\xd8two"])
    async with env.client() as c:
        assert (await put_whole(c, fid, data)).json()["records"] == 2
        plain = b"hello, plain file"
        pid = "plain-" + hashlib.sha256(plain).hexdigest()[:20]
        assert (await put_whole(c, pid, plain, kind="file", name="notes/hello.txt")).json()["records"] == 1
        items = {i["file_id"]: i for i in (await c.get("/v1/binary")).json()["items"]}
        got = (await c.get(f"/v1/binary/{items[pid]['id']}")).content
        two = (await c.get(f"/v1/binary/{fid}-1")).content
    assert (got, two) == (plain, b"\xff\xd8two")


async def test_a_file_above_the_one_request_limit_is_413_naming_the_resumable_path(env: CloudEnv, monkeypatch) -> None:
    from capsync.cloud import whole_upload

    monkeypatch.setattr(whole_upload, "MAX_WHOLE_BYTES", 100)
    data = b"y" * 101
    async with env.client() as c:
        r = await put_whole(c, "bigfile-0001", data, kind="file", name="big.bin")
    assert r.status_code == 413 and "POST /v1/files/bigfile-0001" in r.json()["detail"]


async def test_concurrent_requests_share_commit_rounds_and_each_file_is_stored_once(env: CloudEnv,
                                                                                    tmp_path: Path) -> None:
    files = [tabular_capture(tmp_path, n=3) for _ in range(24)]
    async with env.client() as c:
        async with trio.open_nursery() as nursery:
            for fid, data in files + files[:6]:  # six of them twice at once
                nursery.start_soon(put_whole, c, fid, data)
    committer: GroupCommitter = env.app.state.cloud.committer
    assert committer.commits == 24  # a duplicate waits for its file's lock and is then answered committed
    assert committer.rounds < committer.commits  # some commits shared a round
    stats = await env.store.statistics()
    assert (stats.files, stats.tabular_rows) == (24, 72)


class _FailingOnce:
    """A store whose commit_many fails for any batch holding `bad`, to show a round's failure is its own."""

    def __init__(self, store, bad: str) -> None:
        self.store, self.bad = store, bad
        self.calls: list[int] = []

    async def commit_many(self, commits):
        self.calls.append(len(commits))
        if any(c.file.file_id == self.bad for c in commits):
            raise RuntimeError("a row this store refuses")
        return await self.store.commit_many(commits)


async def test_a_failing_commit_fails_only_its_own_request(env: CloudEnv, tmp_path: Path) -> None:
    from capsync.cloud import ingest
    from capsync.cloud.store import Upload
    from capsync.runtime.sync_protocol import FileKind

    rows = []
    for _ in range(5):
        fid, data = tabular_capture(tmp_path, n=2)
        u = Upload("part-a", fid, FileKind.CAPTURE, len(data), hashlib.sha256(data).hexdigest(), "", "", len(data), 1)
        rows.append(ingest.capture_file(u, data, len(data), 1))
    store = _FailingOnce(env.store, rows[2].file.file_id)
    committer = GroupCommitter(store)  # type: ignore[arg-type]
    results: dict[str, object] = {}

    async def one(r) -> None:
        try:
            results[r.file.file_id] = await committer.commit(Commit(r.file, r.tabular))
        except RuntimeError as exc:
            results[r.file.file_id] = exc

    async with trio.open_nursery() as nursery:
        for r in rows:
            nursery.start_soon(one, r)
    assert [type(results[r.file.file_id]) for r in rows] == [bool, bool, RuntimeError, bool, bool]
    assert (await env.store.statistics()).files == 4
    assert max(store.calls) > 1  # the commits were grouped before the failure split them up
