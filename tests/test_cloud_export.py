"""Export: the streaming endpoints on every store, and `capsync cloud export` against a real cloud on a
real socket, killed with SIGKILL in the middle (twice) and resumed, matching the cloud exactly."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from capsync.cloud.app import DB_NAME
from capsync.cloud.cli import main as cloud_main
from capsync.cloud.export import CSV_COLUMNS
from capsync.cloud.export_client import last_line
from capsync.cloud.server import serve
from capsync.cloud.sqlite_store import SqliteStore
from capsync.cloud.store import Query
from capsync.runtime.faultproxy import FaultProxy
from tests.bulk_data import commit_all, every, reading_files, upload_images
from tests.test_cloud_support import BACKENDS, PART_A, PART_B, SECRET_A, TEST_SCRYPT_N, CloudEnv, open_env

S = 10**9
T0 = 1_700_000_000 * S
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=[b for b in BACKENDS if b != "s3"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CloudEnv]:
    """The export endpoints hold on every store."""
    with open_env(request.param, tmp_path) as e:
        yield e


def _keys(lines: list[dict]) -> list[tuple]:
    return [(r["requested_ns"], r["file_id"], r["record_index"]) for r in lines]


async def test_the_export_streams_every_row_once_in_order_and_resumes_after_a_cursor(env: CloudEnv) -> None:
    # Two resources whose times interleave, files of 70 rows: 2 x 250 rows, more than one page of neither.
    for name in ("s1", "s2"):
        await commit_all(env.store, reading_files(PART_A, ("sensor", name, "Readings"), every(T0, T0 + 50 * S, 5),
                                                  lambda i, t: {"i": i, "x": [i, "a,b\n\"c"]}, per_file=70))
    await commit_all(env.store, reading_files(PART_B, ("sensor", "b", "Readings"), every(T0, T0 + 2 * S, 5), lambda i, t: {}))
    async with env.client() as c:
        full = await c.get("/v1/export/tabular")
        rows = [json.loads(line) for line in full.text.splitlines()]
        cursor = (await c.get("/v1/tabular", params={"limit": 123})).json()["next_cursor"]
        rest = await c.get("/v1/export/tabular", params={"cursor": cursor})
        as_csv = await c.get("/v1/export/tabular", params={"format": "csv", "resource_name": "s2"})
        resumed_csv = await c.get("/v1/export/tabular", params={"format": "csv", "cursor": cursor})
        bad = await c.get("/v1/export/tabular", params={"format": "parquet"})
        capped = await c.get("/v1/export/tabular", params={"limit": 5})
    assert full.status_code == 200 and full.headers["x-capsync-total"] == "500"
    assert len(rows) == 500 and _keys(rows) == sorted(set(_keys(rows)))  # every row once, in order
    assert {r["part_id"] for r in rows} == {PART_A}
    assert rest.headers["x-capsync-total"] == "377" and [json.loads(x) for x in rest.text.splitlines()] == rows[123:]
    table = list(csv.reader(io.StringIO(as_csv.text)))
    assert table[0] == CSV_COLUMNS["tabular"] and len(table) == 251
    assert json.loads(table[1][12]) == {"i": 0, "x": [0, "a,b\n\"c"]}  # payloads survive CSV exactly
    assert next(csv.reader(io.StringIO(resumed_csv.text)))[0] == PART_A  # no header on a resumed CSV
    assert bad.status_code == 400 and bad.json()["error"] == "invalid format"
    assert capped.status_code == 400 and capped.json()["error"] == "unknown query parameter"  # no row cap to set


def test_a_torn_last_line_is_cut_and_the_last_whole_one_read(tmp_path: Path) -> None:
    f = tmp_path / "readings.jsonl"
    f.write_bytes(b'{"a":1}\n{"a":2}\n{"a":')
    assert last_line(f) == b'{"a":2}' and f.read_bytes() == b'{"a":1}\n{"a":2}\n'
    f.write_bytes(b'{"a":')
    assert last_line(f) is None and f.read_bytes() == b""
    assert last_line(tmp_path / "missing") is None


def _export_argv(url: str, out: Path, *extra: str) -> list[str]:
    return ["cloud", "export", "--url", url, "--part", PART_A, "--out", str(out), *extra]


async def _run_until(argv: list[str], until, env: dict) -> int | None:
    """Run `capsync cloud export` as a real process; SIGKILL it once `until()` holds (None), else its exit code."""
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "capsync.cloud.cli", *argv], env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with trio.fail_after(60):
        while proc.poll() is None:
            if until():
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                return None
            await trio.sleep(0.02)
    return proc.returncode


async def test_an_export_killed_twice_resumes_and_matches_the_cloud_exactly(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cloud" / DB_NAME, scrypt_n=TEST_SCRYPT_N)
    store.add_part_sync(PART_A, SECRET_A)
    rows = await commit_all(store, reading_files(PART_A, ("sensor", "imu", "Readings"), every(T0, T0 + 40 * S, 100),
                                                 lambda i, t: {"ax": i * 0.001, "ay": -i, "az": 9.81}, per_file=500))
    out = tmp_path / "export"
    env = {**os.environ, "CAPSYNC_SECRET": SECRET_A, "PYTHONPATH": str(ROOT)}
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve(
            tmp_path / "cloud", "127.0.0.1", 0, store=store, retention_interval_s=float("inf"), task_status=task_status))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", auth=(PART_A, SECRET_A)) as c:
            images = await upload_images(c, tmp_path / "images", PART_A, 24, per_file=8)
        proxy = FaultProxy("127.0.0.1", port)
        await nursery.start(proxy.run)
        proxy.throttle(400_000, direction="down")  # slow enough to be killed in the middle
        readings = out / "readings.jsonl"
        index = out / "binary.jsonl"
        argv = _export_argv(proxy.url, out)
        assert await _run_until(argv, lambda: readings.exists() and readings.stat().st_size > 200_000, env) is None
        assert 0 < readings.stat().st_size  # killed part way: some rows written, maybe a torn line
        assert await _run_until(argv, lambda: index.exists() and len(index.read_bytes().splitlines()) >= 6, env) is None
        proxy.throttle(None)
        assert await _run_until(argv, lambda: False, env) == 0
        expected = await store.query_tabular(PART_A, Query(limit=10**6))
        items = await store.query_binary(PART_A, Query(limit=10**6))
        nursery.cancel_scope.cancel()
    await store.aclose()
    lines = [json.loads(x) for x in readings.read_bytes().splitlines()]
    assert len(lines) == rows == len(expected) == 4000
    assert _keys(lines) == [(r.requested_ns, r.file_id, r.record_index) for r in expected]  # no row twice, none skipped
    assert [x["payload"] for x in lines[:3]] == [r.payload for r in expected[:3]]
    listed = [json.loads(x) for x in index.read_bytes().splitlines()]
    assert [x["id"] for x in listed] == [b.item_id for b in items] and len(items) == 24
    saved = sorted((out / "files").rglob("*.jpg"))
    assert len(saved) == 24 and not list((out / "files").rglob("*.part"))
    assert sorted(p.read_bytes() for p in saved) == sorted(images)
    assert saved[0].relative_to(out).parts[:4] == ("files", "camera", "cam", "ReadImage")


async def test_export_cli_writes_csv_shows_plain_progress_and_refuses_bad_input_clearly(tmp_path: Path, capsys) -> None:
    store = SqliteStore(tmp_path / "cloud" / DB_NAME, scrypt_n=TEST_SCRYPT_N)
    store.add_part_sync(PART_A, SECRET_A)
    for name in ("env", "imu"):
        await commit_all(store, reading_files(PART_A, ("sensor", name, "Readings"), every(T0, T0 + 10 * S, 20),
                                              lambda i, t: {"t": i}, per_file=64))
    (tmp_path / "secret").write_text(SECRET_A + "\n")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve(
            tmp_path / "cloud", "127.0.0.1", 0, store=store, retention_interval_s=float("inf"), task_status=task_status))
        url = f"http://127.0.0.1:{port}"
        common = ["--secret-file", str(tmp_path / "secret"), "--data", "tabular", "--format", "csv"]

        def run(*argv: str) -> int:
            return cloud_main(list(argv))

        ok = await trio.to_thread.run_sync(run, *_export_argv(url, tmp_path / "x", *common, "--resource-name", "imu",
                                                              "--start", str(T0 + 5 * S)))
        first = capsys.readouterr()
        again = await trio.to_thread.run_sync(run, *_export_argv(url, tmp_path / "x", *common, "--resource-name", "imu",
                                                                 "--start", str(T0 + 5 * S)))
        again_out = capsys.readouterr()
        other = await trio.to_thread.run_sync(run, *_export_argv(url, tmp_path / "x", *common))
        other_err = capsys.readouterr().err
        (tmp_path / "wrong").write_text("nope")
        wrong = await trio.to_thread.run_sync(run, *_export_argv(url, tmp_path / "y", "--secret-file", str(tmp_path / "wrong")))
        wrong_err = capsys.readouterr().err
        bad_time = await trio.to_thread.run_sync(run, *_export_argv(url, tmp_path / "z", *common, "--start", "noon"))
        bad_time_err = capsys.readouterr().err
        nursery.cancel_scope.cancel()
    await store.aclose()
    table = list(csv.reader((tmp_path / "x" / "readings.csv").open()))
    assert ok == 0 and json.loads(first.out)["readings"] == 100 == len(table) - 1
    assert {r[4] for r in table[1:]} == {"imu"} and min(int(r[7]) for r in table[1:]) == T0 + 5 * S
    assert "export readings: 100/100 (100.0%)" in first.err and "/s - done" in first.err  # plain lines, not a tty
    assert again == 0 and json.loads(again_out.out)["readings"] == 100  # a rerun adds nothing and repeats nothing
    assert other == 2 and "holds an export of other filters" in other_err
    assert wrong == 2 and "check the part id and secret" in wrong_err
    assert bad_time == 2 and "invalid start" in bad_time_err
