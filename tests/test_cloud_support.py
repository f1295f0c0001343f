"""Shared builders for the cloud tests: an in-process cloud with two parts, capture files, uploads.

Other tests/test_cloud_*.py modules import from here (fixtures included); the few tests at the
bottom check the builders themselves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from capsync.cloud.app import DB_NAME, create_app
from capsync.cloud.sqlite_store import SqliteStore
from capsync.cloud.store import Store
from capsync.runtime.capture_file import CaptureHeader, CaptureRecord, CaptureWriter, new_file_id

#: scrypt cost for tests: real hashing, but cheap enough for dozens of parts.
TEST_SCRYPT_N = 2**10
PART_A, SECRET_A = "part-a", "secret-a"
PART_B, SECRET_B = "part-b", "secret-b"


@dataclass
class CloudEnv:
    """An app, its store and data dir, with parts A and B registered."""

    app: Starlette
    store: Store
    data_dir: Path
    backend: str = "sqlite"

    @property
    def blobs(self) -> Any:
        """The app's file bytes (cloud/blobs.py)."""
        return self.app.state.cloud.blobs

    def client(self, part: str = PART_A, secret: str | None = None, *, anonymous: bool = False) -> httpx.AsyncClient:
        """An httpx client talking to the app in-process as `part` (without credentials if `anonymous`)."""
        if secret is None:
            secret = {PART_A: SECRET_A, PART_B: SECRET_B}.get(part, "")
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, raise_app_exceptions=False),
            base_url="http://cloud.test", auth=None if anonymous else (part, secret),
        )


def make_env(data_dir: Path) -> CloudEnv:
    """A fresh cloud over `data_dir` with parts A and B (registered without an event loop)."""
    store = SqliteStore(data_dir / DB_NAME, scrypt_n=TEST_SCRYPT_N)
    store.add_part_sync(PART_A, SECRET_A)
    store.add_part_sync(PART_B, SECRET_B)
    return CloudEnv(create_app(data_dir, store), store, data_dir)


@pytest.fixture
def env(tmp_path: Path) -> CloudEnv:
    """A fresh in-process cloud with parts A and B."""
    return make_env(tmp_path / "cloud")


@contextmanager
def _sqlite_env(tmp_path: Path) -> Iterator[CloudEnv]:
    yield make_env(tmp_path / "cloud")


@contextmanager
def _s3_env(tmp_path: Path) -> Iterator[CloudEnv]:
    """SQLite for the store, the file bytes in a fresh bucket of the S3 stand-in (tests/s3_standin.py)."""
    from tests.s3_standin import shared

    standin = shared()
    bucket = standin.new_bucket()
    data_dir = tmp_path / "cloud"
    store = SqliteStore(data_dir / DB_NAME, scrypt_n=TEST_SCRYPT_N)
    store.add_part_sync(PART_A, SECRET_A)
    store.add_part_sync(PART_B, SECRET_B)
    blobs = standin.blobs(bucket, tmp_path / "scratch")
    e = CloudEnv(create_app(data_dir, store, blobs=blobs), store, data_dir, backend="s3")
    e.blobs_uri = f"s3://{bucket}/cloud"  # type: ignore[attr-defined]
    try:
        yield e
    finally:
        store.close_sync()
        standin.drop_bucket(bucket)


@contextmanager
def _mongo_standin_env(tmp_path: Path) -> Iterator[CloudEnv]:
    from tests.test_cloud_mongo_store import open_mongo_env

    with open_mongo_env("standin", tmp_path) as e:
        e.backend = "mongodb-standin"
        yield e


@contextmanager
def _postgres_env(tmp_path: Path) -> Iterator[CloudEnv]:
    from capsync.cloud.postgres_store import PostgresStore
    from tests.postgres_kit import server

    srv = server()  # skips the test when no PostgreSQL can start here
    with srv.fresh_schema() as schema:  # a schema per test: ~4x cheaper than a database per test
        store = PostgresStore(srv.url(), schema=schema, scrypt_n=TEST_SCRYPT_N, pool_size=4)
        try:
            store.add_part_sync(PART_A, SECRET_A)
            store.add_part_sync(PART_B, SECRET_B)
            yield CloudEnv(create_app(tmp_path / "cloud", store), store, tmp_path / "cloud", backend="postgresql")
        finally:
            store.close_sync()


#: Every store/blobs combination the cloud runs on: name -> context manager over a tmp dir that
#: yields a CloudEnv with parts A and B (it skips the test when its service cannot start here).
#: Modules whose promises hold on every backend (exactly-once, retention, queries) run over all of
#: them with `@pytest.fixture(params=BACKENDS)` and `open_env`.
BACKENDS: dict[str, Callable[[Path], AbstractContextManager[CloudEnv]]] = {
    "sqlite": _sqlite_env,
    "mongodb-standin": _mongo_standin_env,
    "postgresql": _postgres_env,
    "s3": _s3_env,
}


def open_env(backend: str, tmp_path: Path) -> AbstractContextManager[CloudEnv]:
    """A fresh cloud with parts A and B on `backend` (a key of BACKENDS)."""
    return BACKENDS[backend](tmp_path)


def committed_bytes(env: CloudEnv, part: str, file_id: str) -> bytes | None:
    """The committed bytes of (part, file) as the env's blobs hold them, or None when not stored."""
    try:
        blob = env.blobs.read_committed(part, file_id)
    except FileNotFoundError:
        return None
    try:
        return b"".join(blob.chunks)
    finally:
        blob.close()


def holds_partial(env: CloudEnv, part: str, file_id: str) -> bool:
    """Whether the env's blobs still hold partial bytes of (part, file)."""
    return any((p, f) == (part, file_id) for p, f, _ in env.blobs.partial_files())


def tabular_capture(
    directory: Path, part: str = PART_A, n: int = 5, *, t0: int = 1_000_000_000, step: int = 1_000,
    tags: tuple[str, ...] = ("t1",), resource: tuple[str, str, str] = ("sensor", "s1", "Readings"),
    metadata: dict | None = None, file_id: str | None = None,
) -> tuple[str, bytes]:
    """A finished tabular capture file of `n` records; returns (file id, file bytes)."""
    header = CaptureHeader(file_id or new_file_id(), part, *resource, {}, tags, "tabular", metadata=metadata or {})
    w = CaptureWriter.create(directory, header)
    for i in range(n):
        w.append(CaptureRecord(t0 + i * step, t0 + i * step + 7, {"i": i, "v": i * 0.5}))
    return header.file_id, w.finish().read_bytes()


def binary_capture(directory: Path, images: list[bytes], part: str = PART_A, *, mime: str = "image/jpeg",
                   t0: int = 2_000_000_000, metadata: list[dict | None] | None = None) -> tuple[str, bytes]:
    """A finished binary capture file holding `images`; returns (file id, file bytes)."""
    header = CaptureHeader(new_file_id(), part, "camera", "cam", "ReadImage", {}, ("t1",), "binary", mime_type=mime)
    w = CaptureWriter.create(directory, header)
    for i, img in enumerate(images):
        w.append(CaptureRecord(t0 + i, t0 + i + 1, img, (metadata or [None] * len(images))[i]))
    return header.file_id, w.finish().read_bytes()


def declaration(data: bytes, kind: str = "capture", **extra: Any) -> dict[str, Any]:
    """The UploadStart JSON for `data`."""
    return {"kind": kind, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), **extra}


async def upload(client: httpx.AsyncClient, file_id: str, data: bytes, *, kind: str = "capture",
                 chunk: int = 100, commit: bool = True, **extra: Any) -> httpx.Response:
    """Declare, send in `chunk`-byte pieces, and (by default) commit; returns the last response."""
    r = await client.post(f"/v1/files/{file_id}", json=declaration(data, kind, **extra))
    assert r.status_code == 200, r.text
    offset = r.json()["offset"]
    while offset < len(data):
        r = await client.put(f"/v1/files/{file_id}/data", params={"offset": offset}, content=data[offset:offset + chunk])
        assert r.status_code == 200, r.text
        offset = r.json()["offset"]
    if commit:
        r = await client.post(f"/v1/files/{file_id}/commit")
    return r


async def test_make_env_registers_two_parts_with_distinct_secrets(env: CloudEnv) -> None:
    assert await env.store.verify_part(PART_A, SECRET_A)
    assert await env.store.verify_part(PART_B, SECRET_B)
    assert not await env.store.verify_part(PART_A, SECRET_B)
    assert not await env.store.verify_part("nobody", SECRET_A)


def test_capture_builders_make_files_of_the_requested_part(tmp_path: Path) -> None:
    from capsync.runtime.capture_file import read_capture

    fid, data = tabular_capture(tmp_path, PART_B, n=3)
    (path,) = tmp_path.rglob("*.capture")
    contents = read_capture(path)
    assert (contents.header.file_id, contents.header.part_id, len(contents.records)) == (fid, PART_B, 3)
    assert path.read_bytes() == data
