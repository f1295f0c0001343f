"""The store and the bytes on disk under concurrency and crashes; secrets and times."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio

from capsync.cloud import ingest
from capsync.cloud.auth import check_secret, hash_secret, parse_basic
from capsync.cloud.store import Store, Upload
from capsync.cloud.timefmt import iso_from_ns, parse_time
from capsync.runtime.sync_protocol import FileKind
from tests.test_cloud_support import (  # noqa: F401
    PART_A, PART_B, CloudEnv, committed_bytes, declaration, env, holds_partial, tabular_capture, upload,
)


async def test_sqlite_store_implements_the_store_interface(env: CloudEnv) -> None:
    assert isinstance(env.store, Store)


async def test_committing_the_same_file_twice_in_the_store_inserts_nothing(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path, n=6)
    (path,) = tmp_path.rglob("*.capture")
    u = Upload(PART_A, fid, FileKind.CAPTURE, len(data), "0" * 64)
    rows = ingest.capture_file(u, path, len(data), time.time_ns())
    assert await env.store.commit(rows.file, rows.tabular, rows.binary) is True
    first = await env.store.statistics()
    assert await env.store.commit(rows.file, rows.tabular, rows.binary) is False
    assert await env.store.statistics() == first and first.tabular_rows == 6


async def test_many_concurrent_uploads_from_two_parts_all_commit_exactly(env: CloudEnv, tmp_path: Path) -> None:
    files = {part: [tabular_capture(tmp_path / f"{part}{k}", part=part, n=10 + k) for k in range(6)]
             for part in (PART_A, PART_B)}

    async def push(part: str, fid: str, data: bytes) -> None:
        async with env.client(part) as c:
            r = await upload(c, fid, data, chunk=300)
            assert r.status_code == 200, r.text

    async with trio.open_nursery() as n:
        for part, caps in files.items():
            for fid, data in caps:
                n.start_soon(push, part, fid, data)
    stats = await env.store.statistics()
    assert (stats.files, stats.uploads, stats.tabular_rows) == (12, 0, 2 * sum(10 + k for k in range(6)))
    assert len(env.app.state.cloud.locks) == 0  # every per-file lock was released


async def test_racing_chunks_for_one_offset_store_it_once(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path, n=10)
    codes: list[int] = []
    async with env.client() as c:
        await c.post(f"/v1/files/{fid}", json=declaration(data))

        async def put() -> None:
            codes.append((await c.put(f"/v1/files/{fid}/data", params={"offset": 0}, content=data[:200])).status_code)

        async with trio.open_nursery() as n:
            for _ in range(4):
                n.start_soon(put)
        assert sorted(codes) == [200, 409, 409, 409]
        assert (await c.get(f"/v1/files/{fid}")).json()["offset"] == 200
        await c.put(f"/v1/files/{fid}/data", params={"offset": 200}, content=data[200:])
        assert (await c.post(f"/v1/files/{fid}/commit")).json()["records"] == 10


async def test_a_crash_between_publishing_bytes_and_the_store_commit_is_repaired(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path, n=3)
    blobs = env.app.state.cloud.blobs
    async with env.client() as c:
        await upload(c, fid, data, commit=False)
        blobs.publish(PART_A, fid)  # the committed bytes exist, the database never heard of them
        assert (await c.get(f"/v1/files/{fid}")).json()["state"] == "partial"
        r = await c.post(f"/v1/files/{fid}/commit")
        assert (r.json()["state"], r.json()["records"]) == ("committed", 3)
    assert committed_bytes(env, PART_A, fid) == data


async def test_a_partial_file_left_after_a_commit_is_cleaned_up_by_the_next_request(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path, n=3)
    blobs = env.app.state.cloud.blobs
    async with env.client() as c:
        await upload(c, fid, data)
        blobs.append(PART_A, fid, 0, data)  # as if the process died before removing it
        assert holds_partial(env, PART_A, fid)
        assert (await c.post(f"/v1/files/{fid}", json=declaration(data))).json()["state"] == "committed"
    assert not holds_partial(env, PART_A, fid)


async def test_a_data_dir_of_the_layout_before_the_blobs_interface_keeps_working(env: CloudEnv, tmp_path: Path) -> None:
    """LocalBlobs keeps the on-disk layout: `uploads/<part>/<id>.part` and `files/<part>/<id>`."""
    fid, data = tabular_capture(tmp_path, n=4)
    async with env.client() as c:
        await c.post(f"/v1/files/{fid}", json=declaration(data))
        (env.data_dir / "uploads" / PART_A / f"{fid}.part").write_bytes(data[:100])  # written by the older cloud
        assert (await c.get(f"/v1/files/{fid}")).json()["offset"] == 100
        r = await c.put(f"/v1/files/{fid}/data", params={"offset": 100}, content=data[100:])
        assert (await c.post(f"/v1/files/{fid}/commit")).json()["records"] == 4
        assert (env.data_dir / "files" / PART_A / fid).read_bytes() == data
        assert r.status_code == 200 and not (env.data_dir / "uploads" / PART_A / f"{fid}.part").exists()


def test_both_blobs_implement_the_interface(tmp_path: Path) -> None:
    from capsync.cloud.blobs import Blobs, LocalBlobs
    from capsync.cloud.s3_blobs import S3Blobs
    from capsync.cloud.s3_client import S3Settings

    assert isinstance(LocalBlobs(tmp_path), Blobs)
    assert isinstance(S3Blobs("capsync-any", "p", S3Settings(endpoint_url="http://127.0.0.1:9", region_name="x",
                                                              access_key_id="k", secret_access_key="s"),
                              scratch_dir=tmp_path / "s"), Blobs)
    assert not isinstance(object(), Blobs)


def test_secrets_are_salted_scrypt_hashes() -> None:
    a, b = hash_secret("s3cret", n=2**10), hash_secret("s3cret", n=2**10)
    assert a != b and "s3cret" not in a and a.startswith("scrypt$1024$")
    assert check_secret("s3cret", a) and check_secret("s3cret", b)
    assert not check_secret("s3cret!", a) and not check_secret("s3cret", "garbage")


def test_basic_auth_parsing_rejects_malformed_headers() -> None:
    assert parse_basic("Basic cGFydC1hOnNlY3JldDpjb2xvbg==") is not None  # "part-a:secret:colon"
    assert parse_basic("Basic cGFydC1hOnNlY3JldDpjb2xvbg==").secret == "secret:colon"
    for bad in [None, "", "Bearer x", "Basic", "Basic !!!", "Basic bm9jb2xvbg==", "Basic Oi4u", "Basic Li46eA=="]:
        assert parse_basic(bad) is None, bad


@pytest.mark.parametrize("text, ns", [
    ("0", 0), ("1700000000123456789", 1_700_000_000_123_456_789),
    ("2023-11-14T22:13:20Z", 1_700_000_000 * 10**9), ("2023-11-14T23:13:20.5+01:00", 1_700_000_000_500_000_000),
    ("1970-01-01T00:00:00.000000001Z", 1),
])
def test_times_parse_from_rfc3339_or_nanoseconds(text: str, ns: int) -> None:
    assert parse_time(text) == ns
    assert parse_time(iso_from_ns(ns)) == ns


@pytest.mark.parametrize("bad", ["", "now", "2023-11-14", "2023-02-30T00:00:00Z", "2023-11-14T22:13:20", "9" * 25])
def test_bad_times_are_value_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_time(bad)


def test_local_blobs_hash_chunks_as_they_arrive_and_fall_back_to_the_file(tmp_path: Path, monkeypatch) -> None:
    import hashlib

    from capsync.cloud import blobs as blobs_module
    from capsync.cloud.blobs import LocalBlobs

    blobs = LocalBlobs(tmp_path)
    data = os.urandom(300_000)
    blobs.reset(PART_A, "abcdefgh01")
    for offset in range(0, len(data), 100_000):
        blobs.append(PART_A, "abcdefgh01", offset, data[offset:offset + 100_000])
    with monkeypatch.context() as m:
        m.setattr(blobs_module, "_file_chunks", None)  # the commit must not read the file back
        assert blobs.sha256(PART_A, "abcdefgh01") == hashlib.sha256(data).hexdigest()
    # Bytes changed behind its back (another writer, a crash and a truncation): the running hash no
    # longer covers the file, and the file is hashed instead.
    with open(blobs.partial_path(PART_A, "abcdefgh01"), "ab") as fh:
        fh.write(b"tail")
    assert blobs.sha256(PART_A, "abcdefgh01") == hashlib.sha256(data + b"tail").hexdigest()
    fresh = LocalBlobs(tmp_path)  # a restarted cloud has no running hash: it reads the file
    assert fresh.sha256(PART_A, "abcdefgh01") == hashlib.sha256(data + b"tail").hexdigest()
