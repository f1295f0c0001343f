"""The cloud's file bytes on an S3-API object store (cloud/s3_blobs.py), against moto's server mode,
a stand-in for S3 (tests/s3_standin.py): uploads resumed across cloud processes that share the store
and the bucket, big files composed by multipart upload, and an unusable object store as a 503."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trio

from capsync.cloud.app import DB_NAME, create_app
from capsync.cloud.blobs import BlobsUnavailable, OffsetMismatch
from capsync.cloud.cli import main as cli_main
from capsync.cloud.s3_blobs import S3Blobs
from capsync.cloud.sqlite_store import SqliteStore
from capsync.cloud.s3_compose import MIN_PART_BYTES
from capsync.cloud.s3_scratch import ScratchCopies
from tests.s3_standin import S3StandIn, s3_bucket, s3_standin  # noqa: F401
from tests.test_cloud_support import (
    PART_A, PART_B, SECRET_A, SECRET_B, TEST_SCRYPT_N, CloudEnv, binary_capture, committed_bytes, declaration,
    holds_partial, tabular_capture, upload,
)

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def _app(standin: S3StandIn, bucket: str, data_dir: Path, scratch: Path, **settings) -> CloudEnv:
    """One cloud "process": its own SqliteStore connection and its own S3Blobs, on a shared db and bucket."""
    store = SqliteStore(data_dir / DB_NAME, scrypt_n=TEST_SCRYPT_N)
    blobs = standin.blobs(bucket, scratch, **settings)
    return CloudEnv(create_app(data_dir, store, blobs=blobs), store, data_dir, backend="s3")


@pytest.fixture
def two_apps(s3_standin: S3StandIn, s3_bucket: str, tmp_path: Path) -> Iterator[tuple[CloudEnv, CloudEnv]]:
    """Two cloud apps sharing one SQLite database and one bucket, as two `serve` processes would."""
    data_dir = tmp_path / "cloud"
    first = _app(s3_standin, s3_bucket, data_dir, tmp_path / "scratch-1")
    first.store.add_part_sync(PART_A, SECRET_A)
    first.store.add_part_sync(PART_B, SECRET_B)
    second = _app(s3_standin, s3_bucket, data_dir, tmp_path / "scratch-2")
    yield first, second
    first.store.close_sync()
    second.store.close_sync()


async def _put(c: httpx.AsyncClient, fid: str, data: bytes, start: int, end: int, chunk: int) -> int:
    offset = start
    while offset < end:
        r = await c.put(f"/v1/files/{fid}/data", params={"offset": offset}, content=data[offset:min(end, offset + chunk)])
        assert r.status_code == 200, r.text
        offset = r.json()["offset"]
    return offset


async def test_an_upload_started_on_one_cloud_is_resumed_and_committed_on_another(two_apps, tmp_path: Path) -> None:
    one, two = two_apps
    fid, data = tabular_capture(tmp_path, n=60)
    third = len(data) // 3
    async with one.client() as c1, two.client() as c2:
        assert (await c1.post(f"/v1/files/{fid}", json=declaration(data))).json()["offset"] == 0
        await _put(c1, fid, data, 0, third, 100)
        # The agent's connection moves to the other process: it holds what the first acknowledged.
        status = (await c2.post(f"/v1/files/{fid}", json=declaration(data))).json()
        assert (status["state"], status["offset"]) == ("partial", third)
        await _put(c2, fid, data, third, 2 * third, 100)
        # ... and back: the first process sees the chunks the second stored after its own.
        assert (await c1.get(f"/v1/files/{fid}")).json()["offset"] == 2 * third
        r = await c1.put(f"/v1/files/{fid}/data", params={"offset": third}, content=data[third:third + 10])
        assert r.status_code == 409 and r.json()["status"]["offset"] == 2 * third  # a stale chunk is refused
        await _put(c1, fid, data, 2 * third, len(data), 100)
        # The first's running checksum missed the second's chunks: it must not be trusted at commit.
        r = await c1.post(f"/v1/files/{fid}/commit")
        assert (r.status_code, r.json()["state"], r.json()["records"]) == (200, "committed", 60), r.text
        assert (await c2.post(f"/v1/files/{fid}/commit")).json()["state"] == "committed"
        rows = (await c1.get("/v1/tabular", params={"limit": 1000})).json()["items"]
    assert [row["record_index"] for row in rows] == list(range(60))
    assert committed_bytes(one, PART_A, fid) == data and committed_bytes(two, PART_A, fid) == data
    assert not holds_partial(one, PART_A, fid)


async def test_a_reset_on_one_cloud_is_seen_by_the_other(two_apps, tmp_path: Path) -> None:
    one, two = two_apps
    fid, data = tabular_capture(tmp_path, n=10)
    async with one.client() as c1, two.client() as c2:
        await c1.post(f"/v1/files/{fid}", json=declaration(data[:200]))
        await _put(c1, fid, data[:200], 0, 200, 80)
        # Declared again with another size on the second process: the bytes start afresh...
        assert (await c2.post(f"/v1/files/{fid}", json=declaration(data))).json()["offset"] == 0
        await _put(c2, fid, data, 0, 50, 50)
        # ...and the first, which remembered 200 bytes of the old upload, answers from the object store.
        assert (await c1.get(f"/v1/files/{fid}")).json()["offset"] == 50
        await _put(c1, fid, data, 50, len(data), 1000)
        r = await c1.post(f"/v1/files/{fid}/commit")
    assert (r.json()["state"], r.json()["records"]) == ("committed", 10)
    assert committed_bytes(one, PART_A, fid) == data


def test_one_chunk_at_an_offset_wins_when_two_clouds_store_it_at_once(s3_standin, s3_bucket, tmp_path: Path) -> None:
    a = s3_standin.blobs(s3_bucket, tmp_path / "a")
    b = s3_standin.blobs(s3_bucket, tmp_path / "b")
    a.reset(PART_A, "file-0001")
    assert (a.held(PART_A, "file-0001"), b.held(PART_A, "file-0001")) == (0, 0)
    assert a.append(PART_A, "file-0001", 0, b"first") == 5
    with pytest.raises(OffsetMismatch) as exc:  # b had seen offset 0 before a's chunk landed: its PUT loses
        b.append(PART_A, "file-0001", 0, b"other bytes")
    assert exc.value.held == 5
    assert b.sha256(PART_A, "file-0001") == hashlib.sha256(b"first").hexdigest()


def _counting(blobs: S3Blobs) -> Counter:
    """Count the S3 operations `blobs` makes (botocore's event hooks: nothing of the client is replaced)."""
    calls: Counter = Counter()
    blobs.s3.meta.events.register("before-call.s3.*", lambda model, **_: calls.update([model.name]))
    return calls


@pytest.mark.parametrize("chunk", [1 * MiB, 5 * MiB + 17])
async def test_a_big_file_is_published_by_multipart_upload_and_served_back_whole(
        s3_standin, s3_bucket, tmp_path: Path, chunk: int) -> None:
    e = _app(s3_standin, s3_bucket, tmp_path / "cloud", tmp_path / "scratch")
    e.store.add_part_sync(PART_A, SECRET_A)
    calls = _counting(e.blobs)
    data = os.urandom(11 * MiB + 12345)
    async with e.client() as c:
        r = await upload(c, "bigfile-0001", data, kind="file", name="big.bin", chunk=chunk)
        assert (r.status_code, r.json()["state"], r.json()["size"]) == (200, "committed", len(data)), r.text
        got = await c.get("/v1/binary/bigfile-0001-0")
    assert got.status_code == 200 and got.headers["content-length"] == str(len(data))
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(data).digest()
    head = s3_standin.client().head_object(Bucket=s3_bucket, Key="cloud/files/part-a/bigfile-0001")
    chunks = -(-len(data) // chunk)
    parts = chunks if chunk >= MIN_PART_BYTES else -(-chunks // 5)  # five 1 MiB chunks make a 5 MiB part
    assert head["ETag"].strip('"').endswith(f"-{parts}")  # a multipart object of that many parts
    if chunk >= MIN_PART_BYTES:  # every chunk is a part: copied inside the object store, none sent again
        assert (calls["UploadPartCopy"], calls["UploadPart"]) == (parts, 0)
    else:
        assert (calls["UploadPartCopy"], calls["UploadPart"]) == (0, parts)
    # The running checksum of the chunks served the commit; only chunks sent again as parts were read back.
    assert calls["PutObject"] == chunks
    assert calls["GetObject"] == 1 + (0 if chunk >= MIN_PART_BYTES else chunks)  # 1: the GET that served the file
    e.store.close_sync()


async def test_a_small_file_costs_one_put_per_chunk_and_one_copy_to_publish(s3_standin, s3_bucket, tmp_path) -> None:
    e = _app(s3_standin, s3_bucket, tmp_path / "cloud", tmp_path / "scratch")
    e.store.add_part_sync(PART_A, SECRET_A)
    calls = _counting(e.blobs)
    async with e.client() as c:
        assert (await upload(c, "smallfile-01", b"x" * 500, kind="file", chunk=500)).json()["state"] == "committed"
    assert (calls["PutObject"], calls["CopyObject"], calls["GetObject"], calls["CreateMultipartUpload"]) == (1, 1, 0, 0)
    e.store.close_sync()


async def test_a_crash_between_publishing_and_the_store_commit_leaves_the_upload_intact(
        s3_standin, s3_bucket, tmp_path: Path) -> None:
    e = _app(s3_standin, s3_bucket, tmp_path / "cloud", tmp_path / "scratch")
    e.store.add_part_sync(PART_A, SECRET_A)
    fid, data = tabular_capture(tmp_path, n=30)
    async with e.client() as c:
        await upload(c, fid, data, chunk=300, commit=False)
        e.blobs.publish(PART_A, fid)  # the committed object exists, the database never heard of it
        assert (await c.get(f"/v1/files/{fid}")).json()["state"] == "partial"
        r = await c.post(f"/v1/files/{fid}/commit")  # publishes again, harmlessly
    assert (r.json()["state"], r.json()["records"]) == ("committed", 30)
    assert committed_bytes(e, PART_A, fid) == data and not holds_partial(e, PART_A, fid)
    e.store.close_sync()


def _unusable_env(tmp_path: Path, blobs: S3Blobs) -> CloudEnv:
    store = SqliteStore(tmp_path / "cloud" / DB_NAME, scrypt_n=TEST_SCRYPT_N)
    store.add_part_sync(PART_A, SECRET_A)
    return CloudEnv(create_app(tmp_path / "cloud", store, blobs=blobs), store, tmp_path / "cloud", backend="s3")


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_an_unreachable_object_store_is_a_503_with_a_reason_within_seconds(s3_standin, tmp_path: Path) -> None:
    blobs = S3Blobs("capsync-nowhere", "p", s3_standin.settings(endpoint_url=f"http://127.0.0.1:{_closed_port()}",
                                                                 connect_timeout_s=1.0, max_attempts=2),
                    scratch_dir=tmp_path / "scratch")
    e = _unusable_env(tmp_path, blobs)
    fid, data = tabular_capture(tmp_path, n=3)
    async with e.client() as c:
        with trio.fail_after(15):
            r = await c.post(f"/v1/files/{fid}", json=declaration(data))
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["error"] == "object store unavailable" and "unreachable" in r.json()["detail"]
    with pytest.raises(BlobsUnavailable, match="cannot reach the object store.*AWS_ENDPOINT_URL"):
        blobs.check()
    e.store.close_sync()


async def test_a_missing_bucket_is_a_503_and_check_names_it(s3_standin, tmp_path: Path) -> None:
    blobs = s3_standin.blobs("capsync-no-such-bucket", tmp_path / "scratch")
    e = _unusable_env(tmp_path, blobs)
    async with e.client() as c:
        r = await c.post("/v1/files/some-file-01", json=declaration(b"abc", kind="file"))
        assert r.status_code == 503 and "no such bucket" in r.json()["detail"]
        assert "capsync-no-such-bucket" not in r.json()["detail"]  # the operator's log says where; the robot needs not
    with pytest.raises(BlobsUnavailable, match="s3://capsync-no-such-bucket/cloud/: the bucket does not exist"):
        blobs.check()
    e.store.close_sync()


def test_blobs_addresses_are_checked_by_the_command_line(tmp_path: Path, capsys) -> None:
    for bad in ("s3://", "s3://UPPER/x", "http://bucket/x", "s3://bucket/a//b", "s3://bucket/../x"):
        with pytest.raises(SystemExit) as exc:
            cli_main(["cloud", "serve", "--data-dir", str(tmp_path), "--blobs", bad])
        assert exc.value.code == 2 and "--blobs" in capsys.readouterr().err, bad


def test_retention_and_part_removal_reach_the_object_store(s3_standin, s3_bucket, tmp_path: Path, capsys) -> None:
    from tests.test_cloud_retention import DAY, commit

    e = _app(s3_standin, s3_bucket, tmp_path / "cloud", tmp_path / "scratch")
    e.store.add_part_sync(PART_A, SECRET_A)
    e.store.add_part_sync(PART_B, SECRET_B)
    old = trio.run(lambda: commit(e, tmp_path / "caps", committed_ns=time.time_ns() - 2 * DAY, policy={"days": 1}))
    kept = trio.run(lambda: commit(e, tmp_path / "caps", committed_ns=time.time_ns(), policy={"days": 1}))
    b_file = trio.run(lambda: commit(e, tmp_path / "caps", committed_ns=time.time_ns(), part=PART_B))
    e.store.close_sync()
    uri = f"s3://{s3_bucket}/cloud"
    with s3_standin.environ():
        assert cli_main(["cloud", "retention", "--data-dir", str(e.data_dir), "--blobs", uri]) == 0
        assert old.file_id in capsys.readouterr().out
        assert e.blobs.committed_size(PART_A, old.file_id) is None
        assert e.blobs.committed_size(PART_A, kept.file_id) == kept.size
        assert cli_main(["cloud", "remove-part", PART_A, "--delete-data", "--data-dir", str(e.data_dir),
                         "--blobs", uri]) == 0
    assert e.blobs.committed_size(PART_A, kept.file_id) is None
    assert e.blobs.committed_size(PART_B, b_file.file_id) == b_file.size


def test_remove_part_with_an_unusable_object_store_deletes_nothing(tmp_path: Path, capsys) -> None:
    store = SqliteStore(tmp_path / DB_NAME, scrypt_n=TEST_SCRYPT_N)
    store.add_part_sync(PART_A, SECRET_A)
    store.close_sync()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"}
    from unittest import mock

    with mock.patch.dict(os.environ, env):
        code = cli_main(["cloud", "remove-part", PART_A, "--delete-data", "--data-dir", str(tmp_path),
                         "--blobs", "s3://capsync-x/p"])
    assert code == 1 and "cannot reach the object store" in capsys.readouterr().err
    store = SqliteStore(tmp_path / DB_NAME, scrypt_n=TEST_SCRYPT_N)
    assert trio.run(store.verify_part, PART_A, SECRET_A)  # the part is still there: rerun once the store is back
    store.close_sync()


@contextmanager
def _serve(data_dir: Path, uri: str, standin: S3StandIn) -> Iterator[tuple[subprocess.Popen, str]]:
    with standin.environ():
        proc = subprocess.Popen(
            [sys.executable, "-m", "capsync.cloud.cli", "cloud", "serve", "--data-dir", str(data_dir), "--port", "0",
             "--blobs", uri], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("capsync cloud listening on "), (line, proc.stderr.read() if proc.poll() else "")
        yield proc, line.split()[-1]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_two_serve_processes_share_the_object_store_and_one_resumes_what_the_killed_one_began(
        s3_standin, s3_bucket, tmp_path: Path) -> None:
    data_dir = tmp_path / "cloud"
    store = SqliteStore(data_dir / DB_NAME, scrypt_n=TEST_SCRYPT_N)
    store.add_part_sync(PART_A, SECRET_A)
    store.close_sync()
    fid, data = tabular_capture(tmp_path / "caps", n=200)
    uri = f"s3://{s3_bucket}/fleet"
    with _serve(data_dir, uri, s3_standin) as (first, url1), _serve(data_dir, uri, s3_standin) as (_, url2):
        with httpx.Client(base_url=url1, auth=(PART_A, SECRET_A), timeout=30) as c:
            c.post(f"/v1/files/{fid}", json=declaration(data)).raise_for_status()
            assert c.put(f"/v1/files/{fid}/data", params={"offset": 0}, content=data[:1000]).json()["offset"] == 1000
        os.kill(first.pid, signal.SIGKILL)
        with httpx.Client(base_url=url2, auth=(PART_A, SECRET_A), timeout=30) as c:
            status = c.post(f"/v1/files/{fid}", json=declaration(data)).json()
            assert (status["state"], status["offset"]) == ("partial", 1000)
            c.put(f"/v1/files/{fid}/data", params={"offset": 1000}, content=data[1000:]).raise_for_status()
            r = c.post(f"/v1/files/{fid}/commit")
            assert (r.status_code, r.json()["records"]) == (200, 200), r.text
    obj = s3_standin.client().get_object(Bucket=s3_bucket, Key=f"fleet/files/{PART_A}/{fid}")
    assert obj["Body"].read() == data


def test_serve_with_an_unusable_object_store_fails_at_start_with_the_reason(tmp_path: Path, s3_standin) -> None:
    with s3_standin.environ():
        out = subprocess.run(
            [sys.executable, "-m", "capsync.cloud.cli", "cloud", "serve", "--data-dir", str(tmp_path), "--port", "0",
             "--blobs", "s3://capsync-not-there/x"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "bucket does not exist" in out.stderr, out.stderr


async def test_the_items_of_one_capture_file_download_it_once(s3_standin, s3_bucket, tmp_path: Path) -> None:
    e = _app(s3_standin, s3_bucket, tmp_path / "cloud", tmp_path / "scratch")
    e.store.add_part_sync(PART_A, SECRET_A)
    images = [os.urandom(1000 + i) for i in range(5)]
    fid, data = binary_capture(tmp_path, images)
    async with e.client() as c:
        assert (await upload(c, fid, data, chunk=4000)).json()["records"] == 5
        calls = _counting(e.blobs)
        for i, img in enumerate(images):  # as the data browser shows a page of one camera's images
            r = await c.get(f"/v1/binary/{fid}-{i}")
            assert (r.status_code, r.content) == (200, img)
        assert (calls["HeadObject"], calls["GetObject"]) == (5, 1)  # each checks the ETag; one download
        e.blobs.drop_committed(PART_A, fid)
        assert (await c.get(f"/v1/binary/{fid}-0")).status_code == 404
    assert list((tmp_path / "scratch").glob("capsync-*.blob")) == []  # the local copy went with the object
    e.store.close_sync()


def test_scratch_copies_are_reused_while_they_match_and_idle_ones_are_trimmed(tmp_path: Path) -> None:
    copies = ScratchCopies(tmp_path, max_files=2)
    fills: list[str] = []

    def filler(text: str):
        def fill(f) -> str:
            fills.append(text)
            f.write(text.encode())
            return text
        return fill

    with copies.use("a", 1, filler("a1")) as a:
        assert a.path.read_bytes() == b"a1"
        with copies.use("a", 1, filler("never")) as again:
            assert again is a  # the same fingerprint: the kept copy
        with copies.use("b", 1, filler("b1")):
            pass
        with copies.use("c", 1, filler("c1")):  # one over the limit: the oldest idle copy goes, not a (being read)
            pass
        assert a.path.exists()

    def kept() -> list[bytes]:
        return sorted(p.read_bytes() for p in tmp_path.glob("capsync-*.blob"))

    assert kept() == [b"a1", b"c1"]
    with copies.use("c", 2, filler("c2")) as c:  # c changed in the object store: a new copy replaces it
        assert c.path.read_bytes() == b"c2"
    assert kept() == [b"a1", b"c2"]
    with copies.use("zzz", 1) as none:
        assert none is None  # without a filler nothing is downloaded
    assert fills == ["a1", "b1", "c1", "c2"]
    copies.drop_where(lambda k: True)
    assert list(tmp_path.glob("capsync-*.blob")) == []
