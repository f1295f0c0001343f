"""Retention: `days` counted in UTC days, `binary_limit_gb` / `tabular_limit_gb` oldest first, on both stores."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from capsync.cloud import ingest, retention
from capsync.cloud.app import DB_NAME, apply_retention
from capsync.cloud.cli import main as cli_main
from capsync.cloud.server import seconds_to_next_sweep, serve
from capsync.cloud.sqlite_store import SqliteStore
from capsync.cloud.store import CommittedFile, Upload
from capsync.runtime.capture_file import CaptureHeader, CaptureRecord, CaptureWriter, new_file_id
from capsync.runtime.sync_protocol import FileKind
from tests.test_cloud_mongo_store import open_mongo_env
from tests.test_cloud_support import BACKENDS, PART_A, PART_B, TEST_SCRYPT_N, CloudEnv, declaration, open_env

DAY = retention.DAY_NS
MIDNIGHT = 20_000 * DAY  # 2024-10-04T00:00:00Z, a UTC midnight
MINUTE, HOUR = 60 * 10**9, 3600 * 10**9


@pytest.fixture(params=[*BACKENDS, "mongodb-real"])
def any_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CloudEnv]:
    """The in-process cloud on every backend (tests/test_cloud_support.BACKENDS: SQLite, the MongoDB
    stand-in, files on the S3 stand-in), or on a real MongoDB when configured."""
    if request.param == "mongodb-real":
        with open_mongo_env("real", tmp_path) as e:
            yield e
        return
    with open_env(request.param, tmp_path) as e:
        yield e


async def commit(e: CloudEnv, tmp_path: Path, *, committed_ns: int, created_ns: int | None = None,
                 policy: dict | None = None, resource: tuple[str, str, str] = ("sensor", "s1", "Readings"),
                 binary: bool = False, n: int = 3, size: int = 100, part: str = PART_A) -> CommittedFile:
    """Commit a capture file straight into the store at a chosen time, with its bytes in the blobs."""
    header = CaptureHeader(new_file_id(), part, *resource, {}, (), "binary" if binary else "tabular",
                           mime_type="image/jpeg" if binary else "",
                           metadata={"retention_policy": policy} if policy else {})
    w = CaptureWriter.create(tmp_path / header.file_id, header)
    for i in range(n):
        w.append(CaptureRecord(committed_ns + i, committed_ns + i, b"\xff" * size if binary else {"i": i, "pad": "x" * size}))
    path = w.finish()
    data = path.read_bytes()
    rows = ingest.capture_file(Upload(part, header.file_id, FileKind.CAPTURE, len(data), "0" * 64), path, len(data),
                               committed_ns)
    f = replace(rows.file, created_ns=created_ns if created_ns is not None else committed_ns)
    assert await e.store.commit(f, rows.tabular, rows.binary)
    e.blobs.put_committed(part, header.file_id, data)
    return f


async def _ids(e: CloudEnv, part: str = PART_A) -> set[str]:
    async with e.client(part) as c:
        rows = (await c.get("/v1/tabular", params={"limit": 1000})).json()["items"]
        items = (await c.get("/v1/binary", params={"limit": 1000})).json()["items"]
    return {r["file_id"] for r in rows + items}


async def test_days_1_deletes_what_came_before_the_last_utc_midnight_and_keeps_the_rest(
        any_env: CloudEnv, tmp_path: Path) -> None:
    e = any_env
    one = {"days": 1}
    old = await commit(e, tmp_path, committed_ns=MIDNIGHT - 3 * DAY, policy=one)
    late = await commit(e, tmp_path, committed_ns=MIDNIGHT - MINUTE, policy=one)  # 23:59 yesterday
    today = await commit(e, tmp_path, committed_ns=MIDNIGHT + 30 * MINUTE, policy=one)
    forever = await commit(e, tmp_path, committed_ns=MIDNIGHT - 30 * DAY)  # no policy: kept
    week = await commit(e, tmp_path, committed_ns=MIDNIGHT - 5 * DAY, policy={"days": 7})
    cloud = e.app.state.cloud

    async def sweep(now_ns: int) -> set[str]:
        return {f.file_id for f in await apply_retention(cloud, now_ns)}

    assert await sweep(MIDNIGHT - 1) == {old.file_id}  # yesterday, 23:59:59.999999999
    assert await _ids(e) == {late.file_id, today.file_id, forever.file_id, week.file_id}
    gone = await apply_retention(cloud, MIDNIGHT + HOUR)
    assert {f.file_id for f in gone} == {late.file_id}
    assert all(f.expired_ns == MIDNIGHT + HOUR for f in gone)
    assert await _ids(e) == {today.file_id, forever.file_id, week.file_id}
    assert cloud.blobs.committed_size(PART_A, late.file_id) is None
    assert cloud.blobs.committed_size(PART_A, today.file_id) == today.size
    # today's file goes at the next UTC midnight; the 7-day one when its 7th UTC day after commit begins
    assert await sweep(MIDNIGHT + DAY - 1) == set()
    assert await sweep(MIDNIGHT + DAY) == {today.file_id}
    assert await sweep(MIDNIGHT + 2 * DAY - 1) == set()
    assert await sweep(MIDNIGHT + 2 * DAY) == {week.file_id}
    assert await _ids(e) == {forever.file_id}
    # expired files stay committed: a late retry is told so, and nothing is stored again
    async with e.client() as c:
        r = await c.post(f"/v1/files/{old.file_id}", json=declaration(b"x" * 10))
        assert r.json()["state"] == "committed"
        listed = {f["file_id"]: f["expired"] for f in (await c.get("/v1/files", params={"limit": 1000})).json()["items"]}
    assert listed == {old.file_id: True, late.file_id: True, today.file_id: True, week.file_id: True,
                      forever.file_id: False}
    assert (await e.store.statistics()).tabular_rows == 3


async def test_size_limits_delete_oldest_first_within_one_capture_method(any_env: CloudEnv, tmp_path: Path) -> None:
    e = any_env
    cam = ("camera", "cam", "ReadImage")
    # four images files of one camera, committed out of order; age is the capture time (created_ns)
    files = [await commit(e, tmp_path, committed_ns=MIDNIGHT + k * MINUTE, created_ns=MIDNIGHT - (10 - c) * HOUR,
                          resource=cam, binary=True, n=2, size=500)
             for k, c in enumerate([3, 0, 2, 1])]
    by_age = sorted(files, key=lambda f: f.created_ns)
    keep_bytes = by_age[-1].size + by_age[-2].size
    # the newest file's policy is the one in force; older files without a policy count toward it
    newest = await commit(e, tmp_path, committed_ns=MIDNIGHT + HOUR, created_ns=MIDNIGHT, resource=cam, binary=True,
                          n=2, size=500, policy={"binary_limit_gb": (keep_bytes + 1.5 * files[0].size) / 1e9})
    other_cam = await commit(e, tmp_path, committed_ns=MIDNIGHT - 5 * DAY, resource=("camera", "cam2", "ReadImage"),
                             binary=True, n=2, size=500)
    other_part = await commit(e, tmp_path, committed_ns=MIDNIGHT - 5 * DAY, resource=cam, binary=True, n=2,
                              size=500, part=PART_B)
    gone = await apply_retention(e.app.state.cloud, MIDNIGHT + 2 * HOUR)
    assert [f.file_id for f in gone] == [by_age[0].file_id, by_age[1].file_id]  # oldest first, until under the limit
    assert await _ids(e) == {by_age[2].file_id, by_age[3].file_id, newest.file_id, other_cam.file_id}
    assert await _ids(e, PART_B) == {other_part.file_id}
    assert await apply_retention(e.app.state.cloud, MIDNIGHT + 3 * HOUR) == []  # under the limit now

    # tabular_limit_gb limits tabular files; a binary limit on them changes nothing
    sensor = [await commit(e, tmp_path, committed_ns=MIDNIGHT + k * MINUTE, n=5, size=200,
                           policy={"binary_limit_gb": 0, "tabular_limit_gb": 1}) for k in range(3)]
    assert await apply_retention(e.app.state.cloud, MIDNIGHT + 4 * HOUR) == []
    last = await commit(e, tmp_path, committed_ns=MIDNIGHT + 10 * MINUTE, n=5, size=200,
                        policy={"tabular_limit_gb": (sensor[2].size + 2000) / 1e9})
    gone = await apply_retention(e.app.state.cloud, MIDNIGHT + 5 * HOUR)
    assert [f.file_id for f in gone] == [sensor[0].file_id, sensor[1].file_id]
    assert {sensor[2].file_id, last.file_id} <= await _ids(e)


def _file(policy, committed_ns: int = MIDNIGHT, **kw) -> CommittedFile:
    return CommittedFile(PART_A, new_file_id(), FileKind.CAPTURE, kw.pop("size", 10), "0" * 64, 1, committed_ns,
                         resource_type="sensor", resource_name="s", method="Readings", data_kind="tabular",
                         metadata={"retention_policy": policy}, **kw)


def test_the_rule_ignores_malformed_policies_and_plain_files() -> None:
    now = MIDNIGHT + 10 * DAY
    bad = [_file(p) for p in ({"days": -1}, {"days": "1"}, {"days": True}, {"days": float("nan")},
                              {"tabular_limit_gb": -2}, "every day", None, {"binary_limit_gb": "x"})]
    plain = replace(_file({"days": 0}), data_kind="", kind=FileKind.FILE)
    expired = replace(_file({"days": 0}), expired_ns=1)
    assert retention.due([*bad, plain, expired], now) == []
    zero = _file({"days": 0}, committed_ns=now)
    assert [x.file for x in retention.due([zero], now)] == [zero]  # 0 days: gone at the next sweep
    big = _file({"tabular_limit_gb": 1e-8}, size=11)  # 10 bytes allowed: this file alone is too big
    assert [x.reason for x in retention.due([big], now)] == ["tabular_limit_gb 1e-08 exceeded"]


def test_the_daily_sweep_runs_just_after_utc_midnight() -> None:
    midnight_s = MIDNIGHT / 1e9
    assert seconds_to_next_sweep(midnight_s + 3600) == pytest.approx(23 * 3600 + 5)
    assert seconds_to_next_sweep(midnight_s - 1) == pytest.approx(6)
    assert 0 < seconds_to_next_sweep(time.time()) <= 86_405


async def test_serve_sweeps_at_start(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cloud" / DB_NAME, scrypt_n=TEST_SCRYPT_N)
    from capsync.cloud.app import create_app

    e = CloudEnv(create_app(tmp_path / "cloud", store), store, tmp_path / "cloud")
    f = await commit(e, tmp_path, committed_ns=time.time_ns() - 3 * DAY, policy={"days": 1})
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve(tmp_path / "cloud", "127.0.0.1", 0, store=store,
                                                      task_status=task_status))
        with trio.fail_after(5):
            while (await store.get_file(PART_A, f.file_id)).expired_ns is None:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    await store.aclose()


def test_capsync_cloud_retention_applies_it_on_demand(tmp_path: Path, capsys) -> None:
    store = SqliteStore(tmp_path / DB_NAME, scrypt_n=TEST_SCRYPT_N)
    from capsync.cloud.app import create_app

    e = CloudEnv(create_app(tmp_path, store), store, tmp_path)
    f = trio.run(lambda: commit(e, tmp_path / "caps", committed_ns=time.time_ns() - 2 * DAY, policy={"days": 1}))
    trio.run(lambda: commit(e, tmp_path / "caps", committed_ns=time.time_ns(), policy={"days": 1}))
    store.close_sync()
    assert cli_main(["cloud", "retention", "--data-dir", str(tmp_path)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["file_id"] == f.file_id and json.loads(line)["resource"] == "sensor/s1/Readings"
    assert cli_main(["cloud", "retention", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""
