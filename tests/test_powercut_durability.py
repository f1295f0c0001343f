"""Regression tests for durability bugs the chaos run's power cuts found (scripts/chaos.py), each
replayed on the power-cut file system: what capsync acknowledged or promised must still be there
after the power is cut."""

from __future__ import annotations

import sqlite3

import pytest

from capsync.cloud.app import DB_NAME, private_dir
from capsync.cloud.blobs import LocalBlobs
from capsync.cloud.sqlite_store import SqliteStore
from capsync.testing import fuse_unavailable

pytestmark = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))


def test_the_clouds_first_committed_files_survive_a_power_cut(pcfs, tmp_path):
    """The first commit of a part creates files/<part>/ (and files/ itself): those directories
    were not fsynced into their parents, so a power cut forgot them and every committed file's
    bytes with them, while the database still listed the files as committed (found by the chaos
    run: every acknowledged commit lost its bytes at the first cloud power cut)."""
    blobs = LocalBlobs(pcfs.mountpoint / "data")
    whole = b"one request " * 100
    blobs.put_committed("part-a", "F1", whole)
    chunked = b"in chunks " * 1000  # publish() hard-links these into files/, which PowerCutFS does not model
    blobs.reset("part-b", "F2")
    assert blobs.append("part-b", "F2", 0, chunked) == len(chunked)  # acknowledged: the cloud holds them
    pcfs.cut(torn=True, seed=1)
    after = LocalBlobs(tmp_path / "disk" / "data")
    assert after.final_path("part-a", "F1").read_bytes() == whole
    assert after.held("part-b", "F2") == len(chunked)


def test_a_new_data_dir_and_its_database_survive_a_power_cut(pcfs, tmp_path):
    """A cloud started on a data dir that does not exist yet creates it; a part registered there (a
    committed SQLite transaction) must survive a power cut, directories and all. SQLite fsyncs the
    data dir when it creates its journal, but not the dirs above it."""
    data = pcfs.mountpoint / "new" / "data"
    private_dir(data)
    SqliteStore(data / DB_NAME).add_part_sync("part-a", "a secret of sixteen+ chars")  # left open: a cut, not a stop
    pcfs.cut(torn=True, seed=2)
    db = sqlite3.connect(tmp_path / "disk" / "new" / "data" / DB_NAME)
    try:
        assert [r[0] for r in db.execute("SELECT part_id FROM parts")] == ["part-a"]
    finally:
        db.close()
