"""The cloud's data dir is its owner's only: dir 0700, database (with -wal/-shm) and blobs 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from capsync.cloud.app import DB_NAME, create_app
from capsync.cloud.sqlite_store import SqliteStore
from tests.test_cloud_support import PART_A, SECRET_A, TEST_SCRYPT_N, CloudEnv, binary_capture, tabular_capture, upload


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


async def test_data_dir_db_and_blobs_are_private_under_umask_022(tmp_path: Path, umask_022) -> None:
    data_dir = tmp_path / "fresh" / "cloud"
    store = SqliteStore(data_dir / DB_NAME, scrypt_n=TEST_SCRYPT_N)
    store.add_part_sync(PART_A, SECRET_A)
    env = CloudEnv(create_app(data_dir, store), store, data_dir)
    async with env.client() as c:
        fid, data = tabular_capture(tmp_path / "t", n=3)
        assert (await upload(c, fid, data)).status_code == 200
        fid, data = binary_capture(tmp_path / "b", [b"img"])
        assert (await upload(c, fid, data, commit=False)).status_code == 200
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"} <= names, names
    assert len(files) >= 5  # the database's three files, a committed blob and a partial one
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, (p, oct(p.stat().st_mode))
    await store.aclose()


def test_an_existing_world_readable_db_is_made_private(tmp_path: Path, umask_022) -> None:
    db = tmp_path / DB_NAME
    db.touch(mode=0o644)
    SqliteStore(db, scrypt_n=TEST_SCRYPT_N).close_sync()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
