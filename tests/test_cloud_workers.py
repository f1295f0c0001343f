"""`capsync cloud serve --workers N` (cloud/workers.py): N real cloud processes on one port, one data
dir (SQLite, local file bytes); a SIGKILLed worker is restarted and every file still arrives once."""

from __future__ import annotations

import argparse
import fcntl
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import trio

from capsync.actors.cli import _parser
from capsync.actors.sync_scheduler import SyncScheduler
from capsync.cloud.blobs import LocalBlobs, OffsetMismatch
from capsync.cloud.workers import worker_argv
from capsync.runtime.capture_file import CaptureHeader, CaptureRecord, CaptureWriter, new_file_id
from capsync.runtime.capture_reader import read_capture
from capsync.runtime.cloud_client import CloudClient
from capsync.runtime.resources.methods import DataKind
from tests.processkit import PART, CloudReader, ProcessKit, add_part, log_lines, wait_for

REPO = Path(__file__).resolve().parents[1]


def _serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    cloud = next(a for a in sub.choices["cloud"]._actions if isinstance(a, argparse._SubParsersAction))
    return cloud.choices["serve"]


def test_a_worker_gets_every_serve_option_its_parent_was_given(tmp_path: Path) -> None:
    """worker_argv must carry every option of `serve`: one forgotten would silently not reach the workers."""
    given = ["--data-dir", str(tmp_path), "--host", "127.0.0.2", "--port", "9999", "--tls-cert", "c.pem",
             "--tls-key", "k.pem", "--store", "postgresql://u@h/db", "--blobs", "s3://bucket/prefix",
             "--max-inflight-bytes", "123", "--max-inflight-uploads", "7", "--max-stored-bytes", "456",
             "--min-free-bytes", "789", "--upload-expiry-days", "2.5", "--trusted-proxy", "10.0.0.1",
             "--trusted-proxy", "10.0.0.2", "--workers", "3", "--log-format", "json", "--log-level", "debug"]
    parser = _serve_parser()
    parent = parser.parse_args(given)
    covered = {a.dest for a in parser._actions} - {"help", "worker", "listen_fd", "mongodb_uri"}
    defaults = parser.parse_args(["--data-dir", str(tmp_path / "elsewhere")])
    untested = sorted(d for d in covered if getattr(parent, d) == getattr(defaults, d))
    assert not untested, f"give these serve options a non-default value in this test: {untested}"
    argv = worker_argv(parent, 2, 5)
    assert argv[:5] == [sys.executable, "-m", "capsync", "cloud", "serve"]
    child = parser.parse_args(argv[5:])
    assert (child.worker, child.listen_fd) == (2, 5)
    for dest in covered:
        assert getattr(child, dest) == getattr(parent, dest), dest


def test_workers_is_a_usage_error_outside_1_to_64(tmp_path: Path) -> None:
    for bad in ("0", "65", "many"):
        out = subprocess.run([sys.executable, "-m", "capsync", "cloud", "serve", "--data-dir", str(tmp_path),
                              "--workers", bad], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert out.returncode == 2 and "--workers" in out.stderr and "from 1 to 64" in out.stderr, out.stderr


def test_an_append_waits_for_another_process_holding_the_upload(tmp_path: Path) -> None:
    """Workers append to one `.part` file: the size check and the write happen under its flock."""
    ours, theirs = LocalBlobs(tmp_path, shared=True), LocalBlobs(tmp_path, shared=True)
    ours.reset("p", "f")
    fd = os.open(ours.partial_path("p", "f"), os.O_WRONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as another worker does in the middle of its append
    outcome: list[object] = []
    t = threading.Thread(target=lambda: outcome.append(_try(theirs.append, "p", "f", 0, b"late")))
    t.start()
    time.sleep(0.3)
    assert outcome == [] and t.is_alive(), "the append did not wait for the lock"
    os.write(fd, b"first")  # the other worker's chunk at offset 0
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    t.join(5)
    assert isinstance(outcome[0], OffsetMismatch) and outcome[0].held == 5
    assert ours.partial_path("p", "f").read_bytes() == b"first"


def test_a_shared_blobs_hashes_the_bytes_on_disk_not_what_it_appended(tmp_path: Path) -> None:
    """Another worker may rewrite an upload to the same size: a shared LocalBlobs never trusts its running hash."""
    import hashlib

    shared, other = LocalBlobs(tmp_path, shared=True), LocalBlobs(tmp_path)
    shared.reset("p", "f")
    shared.append("p", "f", 0, b"aaaa")
    other.reset("p", "f")
    other.append("p", "f", 0, b"bbbb")
    assert shared.sha256("p", "f") == hashlib.sha256(b"bbbb").hexdigest()


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # the outcome is what the test looks at
        return exc


def _capture_files(root: Path, n: int, records: int = 20) -> int:
    """`n` finished tabular capture files of `records` readings under `root`; the readings in all."""
    t_ns = time.time_ns() - 3600 * 10**9
    for i in range(n):
        header = CaptureHeader(file_id=new_file_id(), part_id=PART, resource_type="sensor", resource_name=f"s{i % 7}",
                               method="Readings", params={}, tags=(), kind=DataKind.TABULAR)
        w = CaptureWriter.create(root, header, fsync_interval_s=math.inf)
        for _ in range(records):
            t_ns += 10_000_000
            w.append(CaptureRecord(t_ns, t_ns + 1_000_000, {"x": i, "y": 0.5}))
        w.finish()
    return n * records


async def _sync_all(url: str, secret: str, capture_dir: Path, during=None, deadline_s: float = 90.0) -> None:
    """Sync passes until `capture_dir` holds no file (failed uploads are retried by the next pass);
    `during` (a blocking function) runs in a thread alongside."""
    client = CloudClient(url, PART, secret)
    sched = SyncScheduler(client, capture_dirs=lambda: [capture_dir], sync_paths=[], interval_s=3600.0, max_uploads=8)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        if during is not None:
            nursery.start_soon(trio.to_thread.run_sync, during)
        with trio.fail_after(deadline_s):
            while any(p.is_file() for p in capture_dir.rglob("*")):
                await sched.sync_now()
                await trio.sleep(0.2)
        nursery.cancel_scope.cancel()


def _workers(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children() if "--worker" in p.cmdline()]


def test_two_workers_share_the_work_and_a_killed_one_is_replaced_with_nothing_lost_or_doubled(tmp_path: Path) -> None:
    with ProcessKit(tmp_path) as kit:
        cloud = kit.start_cloud(tmp_path / "cloud", args=("--workers", "2"))
        secret = add_part(cloud.data_dir)
        before = {p.pid for p in _workers(cloud.pid)}
        assert len(before) == 2
        capture_dir = tmp_path / "capture"
        readings = _capture_files(capture_dir, 240)

        def kill_a_worker_mid_run() -> None:
            wait_for(lambda: sum(1 for e in log_lines(cloud.log) if e.get("msg") == "file committed") >= 40, 60,
                     "40 commits")
            os.kill(min(before), signal.SIGKILL)

        trio.run(_sync_all, cloud.url, secret, capture_dir, kill_a_worker_mid_run)

        with CloudReader(cloud.url, secret) as reader:
            files = reader.files()
            records = reader.records()
        assert len(files) == 240 and len({f["file_id"] for f in files}) == 240
        assert len(records) == readings and len({r.key for r in records}) == readings  # each exactly once

        lines = log_lines(cloud.log)
        died = [e for e in lines if e.get("msg") == "cloud worker died; restarting it"]
        assert len(died) == 1 and died[0]["exit_code"] == -signal.SIGKILL, died
        after = {p.pid for p in _workers(cloud.pid)}
        assert len(after) == 2 and len(after & before) == 1, (before, after)
        committers = {e.get("worker") for e in lines if e.get("msg") == "file committed"}
        assert committers == {0, 1}, f"commits came from workers {committers}"

        # /metrics adds up every worker's counters, whichever worker answers the scrape
        for _ in range(6):
            text = httpx.get(f"{cloud.url}/metrics", headers={"Connection": "close"}).text
            line = next(x for x in text.splitlines() if x.startswith('capsync_cloud_ingest_files_total{kind="capture"}'))
            assert float(line.split()[-1]) >= 240 - 40, line  # the killed worker's count may lack its last values

        assert cloud.terminate() == 0
        assert not [p for p in after if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_one_file_sent_to_both_workers_at_once_is_committed_once(tmp_path: Path) -> None:
    """Twelve one-request uploads of one file at once, each on its own connection (which the kernel
    hands to either worker): every one is answered committed, and the rows are stored once."""
    import hashlib

    with ProcessKit(tmp_path) as kit:
        cloud = kit.start_cloud(tmp_path / "cloud", args=("--workers", "2"))
        secret = add_part(cloud.data_dir)
        readings = _capture_files(tmp_path / "one", 1, records=200)
        (path,) = [p for p in (tmp_path / "one").rglob("*") if p.is_file()]
        data = path.read_bytes()
        file_id = read_capture(path).header.file_id
        query = {"kind": "capture", "size": str(len(data)), "sha256": hashlib.sha256(data).hexdigest()}
        answers: list[int] = []

        def put() -> None:  # a fresh connection each: the kernel spreads them over the workers
            with httpx.Client(auth=(PART, secret), timeout=30) as http:
                r = http.put(f"{cloud.url}/v1/files/{file_id}", params=query, content=data)
                answers.append(r.status_code)
                assert r.status_code == 200 and r.json()["state"] == "committed", r.text

        threads = [threading.Thread(target=put) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert answers == [200] * 12
        with CloudReader(cloud.url, secret) as reader:
            assert len(reader.files()) == 1
            assert len(reader.records()) == readings
        new_commits = [e for e in log_lines(cloud.log) if e.get("msg") == "file committed" and e.get("new")]
        assert len(new_commits) == 1, new_commits
        assert cloud.terminate() == 0


def test_the_parent_killed_takes_its_workers_with_it(tmp_path: Path) -> None:
    with ProcessKit(tmp_path) as kit:
        cloud = kit.start_cloud(tmp_path / "cloud", args=("--workers", "2"))
        workers = _workers(cloud.pid)
        cloud.kill()  # SIGKILL: nothing forwards a signal; each worker sees its stdin pipe close
        gone, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"workers outlived their parent: {[p.pid for p in alive]}"
        lines = log_lines(cloud.log)
        assert sorted(e["worker"] for e in lines if e.get("msg") == "the parent `serve` process is gone; stopping") \
            == [0, 1]
        assert sorted(e["worker"] for e in lines if e.get("msg") == "cloud stopped") == [0, 1]  # gracefully


def test_a_worker_that_cannot_start_stops_the_parent_with_one_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens there once closed
    out = subprocess.run([sys.executable, "-m", "capsync", "cloud", "serve", "--data-dir", str(tmp_path), "--port", "0",
                          "--workers", "2", "--store", f"postgresql://capsync@127.0.0.1:{dead}/capsync"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "listening on" not in out.stdout and "Traceback" not in out.stderr
    assert "cannot reach the store" in out.stderr and "a cloud worker could not start" in out.stderr


def test_a_port_in_use_fails_once_in_the_parent(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "capsync", "cloud", "serve", "--data-dir", str(tmp_path),
                              "--port", str(port), "--workers", "2"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    (line,) = [x for x in out.stderr.splitlines() if "ERROR" in x]
    assert f"port {port}" in line and "in use" in line


def test_sqlite_publishes_a_staged_file_only_when_another_worker_left_every_row_staged(tmp_path: Path) -> None:
    """Two workers committing one big capture file: one's drop_staged can remove rows the other staged.
    The commit that would then publish a partial file refuses (503, retried) instead."""
    from capsync.cloud import ingest
    from capsync.cloud.sqlite_store import SqliteStore
    from capsync.cloud.store import StoreUnavailable, Upload
    from capsync.runtime.sync_protocol import FileKind

    _capture_files(tmp_path / "big", 1, records=300)
    (path,) = [p for p in (tmp_path / "big").rglob("*") if p.is_file()]
    data = path.read_bytes()
    file_id = read_capture(path).header.file_id
    rows = ingest.capture_file(Upload(PART, file_id, FileKind.CAPTURE, len(data), "x", "n", "", 0, 0), data,
                               len(data), time.time_ns())
    ours, theirs = SqliteStore(tmp_path / "cloud.sqlite"), SqliteStore(tmp_path / "cloud.sqlite")

    async def main() -> None:
        await ours.stage_rows(rows.tabular[:150], [])
        await theirs.drop_staged(PART, file_id)  # the other worker starting its own attempt
        await ours.stage_rows(rows.tabular[150:], [])
        with pytest.raises(StoreUnavailable, match="another cloud process"):
            await ours.commit(rows.file, [], [], staged=True)
        assert (await theirs.statistics()).files == 0
        await ours.drop_staged(PART, file_id)  # the retry stages it whole
        await ours.stage_rows(rows.tabular, [])
        assert await ours.commit(rows.file, [], [], staged=True) is True
        stats = await theirs.statistics()
        assert (stats.files, stats.tabular_rows) == (1, 300)

    try:
        trio.run(main)
    finally:
        ours.close_sync()
        theirs.close_sync()
