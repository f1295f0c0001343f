"""Per-part upload limits (429/507 with the limit and its flag) and the expiry of abandoned uploads,
on SQLite and on the MongoDB stand-in."""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from capsync.cloud.app import apply_retention
from capsync.cloud.cli import _limits, add_cloud_commands
from capsync.cloud.limits import UploadLimits
from tests.test_cloud_mongo_store import open_mongo_env
from tests.test_cloud_support import PART_B, CloudEnv, declaration, make_env, open_env, tabular_capture, upload

DAY_NS = 86_400 * 10**9


@pytest.fixture(params=["sqlite", "mongo-standin", "postgresql"])
def qenv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CloudEnv]:
    """A cloud with parts A and B on each store."""
    if request.param == "sqlite":
        yield make_env(tmp_path / "cloud")
    elif request.param == "postgresql":
        with open_env("postgresql", tmp_path) as e:
            yield e
    else:
        with open_mongo_env("standin", tmp_path) as e:
            yield e


def _limit(env: CloudEnv, **kw) -> None:
    env.app.state.cloud.limits = UploadLimits(**{"min_free_bytes": 0, **kw})


def _decl(size: int, n: int = 0) -> dict:
    return declaration(bytes([n]) * size)


async def test_bytes_in_flight_are_bounded_per_part_with_a_429(qenv: CloudEnv) -> None:
    _limit(qenv, max_inflight_bytes=1000)
    async with qenv.client() as a, qenv.client(PART_B) as b:
        assert (await a.post("/v1/files/inflight01", json=_decl(600))).status_code == 200
        assert (await a.post("/v1/files/inflight01", json=_decl(600))).status_code == 200  # resuming is free
        r = await a.post("/v1/files/inflight02", json=_decl(600, 1))
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "too many bytes in flight" and "--max-inflight-bytes" in r.json()["detail"]
        assert "retry-after" in r.headers
        assert (await a.get("/v1/files/inflight02")).json()["state"] == "unknown"  # nothing half-declared
        assert (await b.post("/v1/files/inflight02", json=_decl(600))).status_code == 200  # B has its own quota
        # replacing A's own upload by a different one of the same id does not count the old one
        assert (await a.post("/v1/files/inflight01", json=_decl(900, 2))).status_code == 200
    assert not (qenv.data_dir / "uploads" / "part-a" / "inflight02.part").exists()


async def test_uploads_in_flight_are_bounded_per_part(qenv: CloudEnv) -> None:
    _limit(qenv, max_inflight_uploads=2)
    async with qenv.client() as a:
        for i in range(2):
            assert (await a.post(f"/v1/files/count000{i}", json=_decl(10, i))).status_code == 200
        r = await a.post("/v1/files/count0002", json=_decl(10, 2))
        assert r.status_code == 429 and "--max-inflight-uploads" in r.json()["detail"], r.text


async def test_stored_bytes_are_bounded_per_part_with_a_507(qenv: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path / "caps")
    _limit(qenv, max_stored_bytes=len(data) + 100)
    async with qenv.client() as a, qenv.client(PART_B) as b:
        assert (await upload(a, fid, data, chunk=4096)).status_code == 200
        r = await a.post("/v1/files/stored0001", json=_decl(101))
        assert r.status_code == 507, r.text
        assert r.json()["error"] == "part storage quota exceeded" and "--max-stored-bytes" in r.json()["detail"]
        assert (await a.post("/v1/files/stored0001", json=_decl(100))).status_code == 200
        assert (await b.post("/v1/files/stored0001", json=_decl(len(data)))).status_code == 200


async def test_an_upload_that_would_fill_the_disk_is_a_507(qenv: CloudEnv) -> None:
    free = shutil.disk_usage(qenv.data_dir).free
    _limit(qenv, min_free_bytes=free - 2**30)
    async with qenv.client() as a:
        assert (await a.post("/v1/files/diskfree01", json=_decl(10))).status_code == 200
        r = await a.post("/v1/files/diskfree02", json={**_decl(10), "size": 2 * 2**30})
        assert r.status_code == 507 and "--min-free-bytes" in r.json()["detail"], r.text


async def test_abandoned_uploads_and_orphaned_bytes_expire_with_retention(qenv: CloudEnv) -> None:
    _limit(qenv, upload_expiry_s=7 * 86_400)
    async with qenv.client() as a:
        for fid in ("abandon001", "fresh00001"):
            assert (await a.post(f"/v1/files/{fid}", json=_decl(100))).status_code == 200
            assert (await a.put(f"/v1/files/{fid}/data", params={"offset": 0}, content=b"\x00" * 10)).status_code == 200
        part_dir = qenv.data_dir / "uploads" / "part-a"
        orphan = part_dir / "orphan0001.part"
        orphan.write_bytes(b"left by a crash")
        old = time.time() - 8 * 86_400
        for p in (part_dir / "abandon001.part", orphan):
            os.utime(p, (old, old))
        store = qenv.app.state.cloud.store
        # the declaration itself is older than the cut-off too: only the last byte counts
        u = await store.get_upload("part-a", "abandon001")
        await store.save_upload(replace(u, created_ns=u.created_ns - 8 * DAY_NS))
        await apply_retention(qenv.app.state.cloud)
        assert (await a.get("/v1/files/abandon001")).json()["state"] == "unknown"
        assert (await a.get("/v1/files/fresh00001")).json()["offset"] == 10
        assert not (part_dir / "abandon001.part").exists() and not orphan.exists()
        assert (part_dir / "fresh00001.part").exists()
        assert [u.file_id for u in await store.list_uploads()] == ["fresh00001"]
        # an expired upload can simply be declared again
        assert (await a.post("/v1/files/abandon001", json=_decl(100))).json()["offset"] == 0


def test_serve_takes_the_limits_as_flags() -> None:
    parser = argparse.ArgumentParser()
    add_cloud_commands(parser.add_subparsers())
    args = parser.parse_args(["cloud", "serve", "--data-dir", "/x", "--max-inflight-bytes", "5",
                              "--max-stored-bytes", "0", "--upload-expiry-days", "1"])
    lim = _limits(args)
    assert (lim.max_inflight_bytes, lim.max_stored_bytes, lim.upload_expiry_s) == (5, 0, 86_400)
    assert lim.max_inflight_uploads == UploadLimits().max_inflight_uploads


def test_a_negative_limit_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="max_stored_bytes"):
        UploadLimits(max_stored_bytes=-1)
