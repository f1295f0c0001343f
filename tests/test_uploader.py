"""The uploader against the real cloud app: resume at the cloud's offset, committed files, checksum mismatch."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from capsync.actors.uploader import ChunkSizes, upload_file
from capsync.runtime.cloud_client import CloudClient
from capsync.runtime.sync_files import find_ready_files, stable_file_id
from capsync.runtime.sync_protocol import FileKind, FileState, UploadStart
from tests.cloudkit import InProcessCloud


@pytest.fixture
async def cloud(tmp_path):
    c = InProcessCloud(tmp_path / "cloud")
    secret = await c.add_part("p1")
    client = CloudClient(c.url, "p1", secret, transport=c.transport)
    yield c, client
    await client.aclose()


def _plain_file(tmp_path: Path, size: int) -> tuple:
    root = tmp_path / "extra"
    root.mkdir(exist_ok=True)
    path = root / "blob.bin"
    path.write_bytes(os.urandom(size))
    os.utime(path, (1_000_000, 1_000_000))
    (f,) = find_ready_files([], [root], now_s=2_000_000)
    return f, stable_file_id(f.path, f.size, f.mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())


async def test_resumes_at_the_clouds_offset(tmp_path, cloud):
    _, client = cloud
    f, file_id = _plain_file(tmp_path, 3 * 1024 * 1024 + 17)
    data = f.path.read_bytes()
    await client.start(file_id, UploadStart(kind=FileKind.FILE, size=f.size,
                                            sha256=hashlib.sha256(data).hexdigest(), name=f.name))
    await client.send(file_id, 0, data[:1_000_000])
    result = await upload_file(client, f, chunk_bytes=1024 * 1024)
    assert result.bytes_sent == f.size - 1_000_000
    assert (await client.status(file_id)).state is FileState.COMMITTED
    assert not f.path.exists()


async def test_already_committed_file_is_deleted_without_sending(tmp_path, cloud):
    _, client = cloud
    f, _ = _plain_file(tmp_path, 5000)
    content = f.path.read_bytes()
    first = await upload_file(client, f, chunk_bytes=4096)  # two chunks: the resumable path
    assert first.bytes_sent == 5000
    f.path.write_bytes(content)  # the same file again, e.g. a crash before the local delete
    os.utime(f.path, (1_000_000, 1_000_000))
    again = await upload_file(client, f, chunk_bytes=4096)
    assert again.bytes_sent == 0 and again.file_id == first.file_id and not f.path.exists()


async def test_a_small_file_goes_in_one_request_and_a_retry_stores_it_once(tmp_path, cloud):
    c, client = cloud
    f, _ = _plain_file(tmp_path, 5000)
    content = f.path.read_bytes()
    requests: list[str] = []
    client.start = _recording(client.start, "declare", requests)  # type: ignore[method-assign]
    first = await upload_file(client, f)
    assert requests == [] and first.bytes_sent == 5000 and not f.path.exists()
    f.path.write_bytes(content)  # a crash before the local delete: the file is sent again (it is small)...
    os.utime(f.path, (1_000_000, 1_000_000))
    again = await upload_file(client, f)
    assert again.file_id == first.file_id and not f.path.exists()
    stats = await c.app.state.cloud.store.statistics()
    assert (stats.files, stats.binary_items) == (1, 1)  # ...and stored once


def _recording(fn, name: str, log: list[str]):
    async def call(*args, **kw):
        log.append(name)
        return await fn(*args, **kw)
    return call


async def test_an_older_cloud_without_the_one_request_route_gets_the_resumable_upload(tmp_path, cloud):
    c, client = cloud
    from starlette.routing import Route

    c.app.router.routes = [r for r in c.app.router.routes
                           if not (isinstance(r, Route) and r.path == "/v1/files/{file_id}" and "PUT" in r.methods)]
    f, file_id = _plain_file(tmp_path, 5000)
    result = await upload_file(client, f)
    assert result.bytes_sent == 5000 and not f.path.exists() and client.one_request is False
    assert (await client.status(file_id)).state is FileState.COMMITTED


async def test_checksum_mismatch_starts_the_file_over(tmp_path, cloud):
    _, client = cloud
    f, file_id = _plain_file(tmp_path, 200_000)
    data = f.path.read_bytes()
    await client.start(file_id, UploadStart(kind=FileKind.FILE, size=f.size,
                                            sha256=hashlib.sha256(data).hexdigest(), name=f.name))
    await client.send(file_id, 0, b"\0" * f.size)  # wrong bytes, right length
    result = await upload_file(client, f)
    assert result.bytes_sent == f.size  # everything was sent again after the mismatch
    assert (await client.status(file_id)).state is FileState.COMMITTED


async def test_an_unchanged_file_is_deleted_without_being_read_again(tmp_path, cloud, monkeypatch):
    from capsync.actors import uploader

    _, client = cloud
    f, file_id = _plain_file(tmp_path, 3 * 1024 * 1024)

    def no_second_read(path):
        raise AssertionError("the file was hashed again although its stamp had not changed")

    monkeypatch.setattr(uploader, "fingerprint", no_second_read)
    result = await upload_file(client, f)
    assert result.bytes_sent == f.size and not f.path.exists()
    assert (await client.status(file_id)).state is FileState.COMMITTED


MIB = 1024 * 1024


class _BodyLimit(httpx.AsyncBaseTransport):
    """In front of the cloud like a proxy: records each chunk's size, answers 413 above `limit` bytes."""

    def __init__(self, inner: httpx.AsyncBaseTransport, limit: int | None) -> None:
        self.inner, self.limit, self.chunks = inner, limit, []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/data"):
            size = int(request.headers["content-length"])
            self.chunks.append(size)
            if self.limit is not None and size > self.limit:
                return httpx.Response(413, text="<html>413 Request Entity Too Large</html>")
        return await self.inner.handle_async_request(request)


def test_chunk_sizes_double_while_quick_halve_when_slow_and_fall_back_once_refused():
    s = ChunkSizes(MIB, 8 * MIB)
    for expected in (2, 4, 8, 8):
        s.took(0.01)
        assert s.size == expected * MIB
    s.took(ChunkSizes.SHRINK_ABOVE_S + 0.1)
    assert s.size == 4 * MIB
    s.took((ChunkSizes.GROW_BELOW_S + ChunkSizes.SHRINK_ABOVE_S) / 2)  # neither quick nor slow: kept
    assert s.size == 4 * MIB
    for _ in range(5):
        s.took(5.0)
    assert s.size == MIB  # never below the start
    s.took(0.01)
    assert s.refused() and (s.size, s.limit) == (MIB, MIB)
    s.took(0.01)
    assert s.size == MIB and not s.refused()  # at the start size a 413 is the cloud's own answer


async def _behind(tmp_path: Path, limit: int | None) -> tuple[CloudClient, _BodyLimit]:
    c = InProcessCloud(tmp_path / "cloud")
    link = _BodyLimit(c.transport, limit)
    return CloudClient(c.url, "p1", await c.add_part("p1"), transport=link), link


async def test_chunks_grow_on_a_quick_link(tmp_path):
    client, link = await _behind(tmp_path, None)
    f, file_id = _plain_file(tmp_path, 40 * MIB + 5)
    result = await upload_file(client, f)
    assert sum(link.chunks) == f.size == result.bytes_sent
    assert link.chunks[0] == MIB and max(link.chunks) > MIB  # in-process, a MiB takes milliseconds
    assert all(b in (MIB, 2 * MIB, 4 * MIB, 8 * MIB) for b in link.chunks[:-1]), link.chunks
    assert (await client.status(file_id)).state is FileState.COMMITTED
    await client.aclose()


async def test_a_proxy_refusing_big_chunks_gets_1_mib_chunks_from_then_on(tmp_path):
    client, link = await _behind(tmp_path, MIB)  # nginx's default client_max_body_size 1m
    f, file_id = _plain_file(tmp_path, 6 * MIB)
    await upload_file(client, f)
    assert (await client.status(file_id)).state is FileState.COMMITTED
    assert link.chunks[:3] == [MIB, 2 * MIB, MIB] and client.max_chunk_bytes == MIB, link.chunks
    link.chunks.clear()
    (tmp_path / "second").mkdir()
    g, _ = _plain_file(tmp_path / "second", 3 * MIB)
    await upload_file(client, g)
    await client.aclose()
    assert link.chunks == [MIB, MIB, MIB]  # remembered: no second refusal
