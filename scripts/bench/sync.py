#!/usr/bin/env python3
"""Sync benchmark: the agent's uploader against a bare httpx loop and curl, measured in the same run.

    .venv/bin/python scripts/bench/sync.py [--quick] [--uploaders 1,4,16]

Two workloads: (a) 2,000 small capture files (10-30 KB each, tabular sensor readings written
with CaptureWriter) and (b) 20 plain files of 50 MB (as files under additional_sync_paths).
Each is uploaded with 1, 4 and 16 uploaders by three clients speaking the same protocol
(declare with size + sha256, PUT 1 MiB chunks, commit) to a real `capsync cloud serve` process
on a real socket:

- capsync: one SyncScheduler pass (`sync_now`), in this process; it finds the ready files,
  reads each capture file's id from its header, hashes, uploads, and deletes each file on commit;
- httpx: a bare loop with one httpx.AsyncClient and N tasks: hash, declare, PUT chunks, commit
  (file ids and names come from the generator; no discovery, no delete);
- curl (when installed): N curl processes at a time, one per file with the requests chained by
  `--next` on one connection; the sha256 is computed in Python, chunks were split beforehand.

- nginx (Debian's, installed on first use as root): the transport baseline that is not capsync,
  nginx taking each file as one `PUT` onto the same disk (its WebDAV module; it does not fsync,
  capsync does), fed by the same bare httpx loop;
- capsync wN (`--cloud-workers 2`): the agent to `capsync cloud serve --workers N`, N processes on
  one data dir (SQLite, local file bytes) sharing one port;
- capsync xN (`--clouds 1,2`): the agent through an nginx load balancer to N cloud processes on one
  PostgreSQL (a throwaway cluster) and one object store (moto's server mode, a stand-in for S3, in
  its own process), the multi-process deployment.

Every measurement gets a fresh cloud process and data dir (so none pays for another's stored
rows), and the cloud is checked to hold every file afterwards. The cloud processes' CPU time is
measured too (psutil) and shown per file and per ingested row. MB = 10^6 bytes. `--quick` runs
a small smoke version (200 small files, 4 files of 10 MB, 1 and 4 uploaders); `--workloads`
and `--repeat` narrow or repeat a measurement.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from capsync.actors.sync_scheduler import SyncScheduler  # noqa: E402
from capsync.runtime.capture_file import CaptureHeader, CaptureRecord, CaptureWriter, new_file_id  # noqa: E402
from capsync.runtime.cloud_client import CloudClient  # noqa: E402
from capsync.runtime.resources.methods import DataKind  # noqa: E402
from capsync.runtime.sync_files import sha256_of, stable_file_id  # noqa: E402
from capsync.runtime.sync_protocol import DEFAULT_CHUNK_BYTES, file_route  # noqa: E402
from tests.processkit import CloudReader, ProcessKit, add_part  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fleet  # noqa: E402

MB = 1_000_000
PART = "bench"


@dataclass(frozen=True)
class FileSpec:
    """One file of a workload: its path relative to the workload's root, size and upload id."""

    rel: str
    size: int
    file_id: str  # the capture header's id; for plain files, filled in per copy (it depends on the path)


@dataclass(frozen=True)
class Workload:
    """A set of files to upload, written once under `master` and hard-linked into each run's dir."""

    name: str
    kind: str  # "capture" or "file"
    master: Path
    files: tuple[FileSpec, ...]
    records: int  # rows the cloud stores for all files: capture records, or one per plain file

    @property
    def total_bytes(self) -> int:
        """Bytes in all files."""
        return sum(f.size for f in self.files)

    def copy_to(self, dest: Path) -> list[FileSpec]:
        """Hard-link every file into `dest` (uploads delete their copy, not the master); the specs
        with the ids the copies upload under."""
        out = []
        for f in self.files:
            target = dest / f.rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(self.master / f.rel, target)
            if self.kind == "file":
                st = target.stat()
                f = FileSpec(f.rel, f.size, stable_file_id(target, st.st_size, st.st_mtime_ns, sha256_of(target)))
            out.append(f)
        return out


def make_small(root: Path, n: int, seed: int = 1) -> Workload:
    """`n` finished tabular capture files of 10-30 KB: records of 30 sensor readings each."""
    rng = random.Random(seed)
    specs = []
    records = 0
    t_ns = time.time_ns() - 3600 * 10**9
    for i in range(n):
        header = CaptureHeader(file_id=new_file_id(), part_id=PART, resource_type="sensor",
                               resource_name=f"s{i % 20}", method="Readings", params={}, tags=("bench",),
                               kind=DataKind.TABULAR)
        w = CaptureWriter.create(root, header, fsync_interval_s=math.inf)
        target = rng.randint(10_000, 30_000)
        while w.size_bytes < target:
            t_ns += 10_000_000
            w.append(CaptureRecord(t_ns, t_ns + 1_000_000, {f"r{k}": rng.random() for k in range(30)}))
            records += 1
        path = w.finish()
        specs.append(FileSpec(path.relative_to(root).as_posix(), path.stat().st_size, header.file_id))
    return Workload(f"{n} capture files of 10-30 KB", "capture", root, tuple(specs), records)


def make_big(root: Path, n: int, size: int) -> Workload:
    """`n` plain files of `size` random bytes, last modified an hour ago (past the 10 s rule)."""
    root.mkdir(parents=True, exist_ok=True)
    specs = []
    past = time.time() - 3600
    for i in range(n):
        path = root / f"big{i:02d}.bin"
        with open(path, "wb") as fh:
            left = size
            while left:
                block = os.urandom(min(left, 8 * 1024 * 1024))
                fh.write(block)
                left -= len(block)
        os.utime(path, (past, past))
        specs.append(FileSpec(path.name, size, ""))
    return Workload(f"{n} files of {size / MB:g} MB", "file", root, tuple(specs), n)


def split_chunks(w: Workload, root: Path) -> dict[str, list[Path]]:
    """For curl: each file as its 1 MiB chunk files (a file of one chunk is used as it is)."""
    out: dict[str, list[Path]] = {}
    for f in w.files:
        if f.size <= DEFAULT_CHUNK_BYTES:
            out[f.rel] = [w.master / f.rel]
            continue
        parts = []
        with open(w.master / f.rel, "rb") as fh:
            k = 0
            while data := fh.read(DEFAULT_CHUNK_BYTES):
                p = root / f.rel / f"{k:05d}"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
                parts.append(p)
                k += 1
        out[f.rel] = parts
    return out


# --- the three clients ------------------------------------------------------------------------


async def run_capsync(url: str, secret: str, w: Workload, copy: Path, uploaders: int) -> int:
    """One SyncScheduler pass over the copy; returns the files it uploaded."""
    client = CloudClient(url, PART, secret)
    sched = SyncScheduler(client, capture_dirs=lambda: [copy] if w.kind == "capture" else [],
                          sync_paths=[copy] if w.kind == "file" else [], interval_s=3600.0, max_uploads=uploaders)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)  # its first pass starts at once; sync_now waits for a pass after it
        while True:
            result = await sched.sync_now()
            if result.failed or result.cloud_error:
                raise RuntimeError(f"capsync pass failed: {result.summary()}")
            if result.uploaded == 0:
                break
        nursery.cancel_scope.cancel()
    return sched.statistics().files_synced


async def run_httpx(url: str, secret: str, w: Workload, copy: Path, specs: list[FileSpec], uploaders: int) -> int:
    """The bare loop: N tasks, each taking the next file: hash, declare, PUT every chunk, commit."""
    todo = iter(specs)
    done = 0

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal done
        for f in todo:
            path = copy / f.rel
            digest = await trio.to_thread.run_sync(sha256_of, path)
            route = file_route(f.file_id)
            r = await http.post(route, json={"kind": w.kind, "size": f.size, "sha256": digest, "name": f.rel})
            r.raise_for_status()
            with open(path, "rb") as fh:
                offset = 0
                while data := fh.read(DEFAULT_CHUNK_BYTES):
                    r = await http.put(route + "/data", params={"offset": offset}, content=data,
                                       headers={"Content-Type": "application/octet-stream"})
                    r.raise_for_status()
                    offset += len(data)
            r = await http.post(route + "/commit")
            r.raise_for_status()
            assert r.json()["state"] == "committed"
            done += 1

    limits = httpx.Limits(max_connections=uploaders, max_keepalive_connections=uploaders)
    async with httpx.AsyncClient(base_url=url, auth=(PART, secret), timeout=60, limits=limits) as http:
        async with trio.open_nursery() as nursery:
            for _ in range(uploaders):
                nursery.start_soon(worker, http)
    return done


async def run_nginx(url: str, copy: Path, specs: list[FileSpec], uploaders: int) -> int:
    """The transport baseline: N tasks, each PUTting the next whole file to nginx, streamed from disk."""
    todo = iter(specs)
    done = 0

    async def chunks(path: Path):
        with open(path, "rb") as fh:
            while data := await trio.to_thread.run_sync(fh.read, DEFAULT_CHUNK_BYTES):
                yield data

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal done
        for f in todo:
            path = copy / f.rel
            await trio.to_thread.run_sync(sha256_of, path)  # what every other client does before sending
            body = path.read_bytes() if f.size <= DEFAULT_CHUNK_BYTES else chunks(path)
            r = await http.put(f"/{f.file_id or f.rel}", content=body,
                               headers={"Content-Type": "application/octet-stream", "Content-Length": str(f.size)})
            r.raise_for_status()
            done += 1

    limits = httpx.Limits(max_connections=uploaders, max_keepalive_connections=uploaders)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        async with trio.open_nursery() as nursery:
            for _ in range(uploaders):
                nursery.start_soon(worker, http)
    return done


def run_curl(url: str, secret: str, w: Workload, specs: list[FileSpec], chunks: dict[str, list[Path]],
             uploaders: int) -> int:
    """N curl processes at a time, one per file: declare, PUT each chunk, commit, chained with --next."""
    curl = shutil.which("curl")
    assert curl

    def one(f: FileSpec) -> None:
        digest = sha256_of(w.master / f.rel)
        base = f"{url}{file_route(f.file_id)}"
        common = ["-sS", "--fail", "-o", "/dev/null", "-u", f"{PART}:{secret}", "-H", "Expect:"]
        body = f'{{"kind":"{w.kind}","size":{f.size},"sha256":"{digest}","name":"{f.rel}"}}'
        argv = [curl, *common, "-H", "Content-Type: application/json", "--data-binary", body, base]
        offset = 0
        for part in chunks[f.rel]:
            argv += ["--next", *common, "-H", "Content-Type: application/octet-stream", "-X", "PUT",
                     "--data-binary", f"@{part}", f"{base}/data?offset={offset}"]
            offset += part.stat().st_size
        argv += ["--next", *common, "-X", "POST", f"{base}/commit"]
        out = subprocess.run(argv, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"curl failed ({out.returncode}) for {f.rel}: {out.stderr.strip()[:300]}")

    with ThreadPoolExecutor(max_workers=uploaders) as pool:
        list(pool.map(one, specs))
    return len(specs)


# --- measuring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One measurement."""

    workload: str
    uploaders: int
    client: str
    files: int
    bytes: int
    seconds: float
    records: int = 0
    server_cpu_s: float | None = None  # CPU time of the cloud processes (capsync) or nginx, during the run

    @property
    def files_per_s(self) -> float:
        """Files committed per second."""
        return self.files / self.seconds

    @property
    def cpu_per_row_us(self) -> float | None:
        """Server CPU per stored row, in microseconds."""
        return None if self.server_cpu_s is None or not self.records else self.server_cpu_s / self.records * 1e6

    @property
    def mb_per_s(self) -> float:
        """Megabytes (10^6 bytes) committed per second."""
        return self.bytes / MB / self.seconds


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds used so far by the processes `pids` and their children."""
    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            for q in [p, *p.children(recursive=True)]:
                t = q.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _check_held(client: str, url: str, secret: str, w: Workload, n: int, copy: Path) -> None:
    with CloudReader(url, secret, PART) as reader:
        held = reader.files()
    assert n == len(w.files), f"{client}: uploaded {n} of {len(w.files)}"
    assert len(held) == len(w.files) and sum(f["size"] for f in held) == w.total_bytes, \
        f"{client}: the cloud holds {len(held)} files"
    if client.startswith("capsync"):
        assert not any(p.is_file() for p in copy.rglob("*")), "capsync left files behind"


def measure(root: Path, w: Workload, client: str, uploaders: int, chunks: dict[str, list[Path]] | None) -> Result:
    """Upload the workload once with `client` to a fresh cloud (or nginx); checks it holds every file.

    `client` is capsync, httpx, curl, nginx, or "capsync xN" (N cloud processes on PostgreSQL and the
    S3 stand-in behind a load balancer)."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{client.replace(' ', '')}-", dir=root))
    copy = run_dir / "files"
    try:
        if client == "nginx":
            with fleet.nginx_put_server(run_dir / "nginx") as url:
                specs = w.copy_to(copy)
                pids = [int((run_dir / "nginx" / "nginx.pid").read_text())]
                c0, t0 = _cpu_s(pids), time.perf_counter()
                n = trio.run(run_nginx, url, copy, specs, uploaders)
                seconds, cpu = time.perf_counter() - t0, _cpu_s(pids) - c0
            stored = [p for p in (run_dir / "nginx" / "files").rglob("*") if p.is_file()]
            assert n == len(stored) == len(w.files) and sum(p.stat().st_size for p in stored) == w.total_bytes
        elif client.startswith("capsync x"):
            with fleet.fleet(run_dir, int(client.rsplit("x", 1)[1])) as f:
                secret = fleet.add_fleet_part(f, PART)
                w.copy_to(copy)
                c0, t0 = _cpu_s(f.pids), time.perf_counter()
                n = trio.run(run_capsync, f.url, secret, w, copy, uploaders)
                seconds, cpu = time.perf_counter() - t0, _cpu_s(f.pids) - c0
                _check_held(client, f.url, secret, w, n, copy)
        else:
            with ProcessKit(run_dir) as kit:
                # At the default log level, as a cloud is run: the test kit's debug level logs
                # every commit, a few percent of the cloud's CPU.
                workers = client.rsplit("w", 1)[1] if client.startswith("capsync w") else "1"
                cloud = kit.start_cloud(run_dir / "cloud", args=("--log-level", "info", "--workers", workers))
                secret = add_part(cloud.data_dir, PART)
                specs = w.copy_to(copy)
                c0, t0 = _cpu_s([cloud.pid]), time.perf_counter()
                if client.startswith("capsync"):
                    n = trio.run(run_capsync, cloud.url, secret, w, copy, uploaders)
                elif client == "httpx":
                    n = trio.run(run_httpx, cloud.url, secret, w, copy, specs, uploaders)
                else:
                    assert chunks is not None
                    n = run_curl(cloud.url, secret, w, specs, chunks, uploaders)
                seconds, cpu = time.perf_counter() - t0, _cpu_s([cloud.pid]) - c0
                _check_held(client, cloud.url, secret, w, n, copy)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return Result(w.name, uploaders, client, n, w.total_bytes, seconds, w.records, cpu)


def print_table(results: list[Result]) -> None:
    """The results, with each client's throughput beside capsync's as a ratio."""
    ours_by_key: dict[tuple[str, int], Result] = {}
    head = f"{'workload':<32} {'upl':>3}  {'client':<10} {'files':>5} {'MB':>8} {'seconds':>8} {'files/s':>8} " \
           f"{'MB/s':>8} {'srv CPU':>8} {'us/row':>7}  {'capsync/this':>12}"
    print(head)
    print("-" * len(head))
    last = None
    for r in results:
        key = (r.workload, r.uploaders)
        if last is not None and key != last:
            print()
        last = key
        if r.client == "capsync":
            ours_by_key[key] = r  # baselines are compared with the capsync run just before them
        ours = ours_by_key[key]
        ratio = "" if r.client == "capsync" else f"{ours.mb_per_s / r.mb_per_s:.2f}x"
        cpu = "" if r.server_cpu_s is None else f"{r.server_cpu_s / r.seconds:.0%}"
        per_row = "" if r.cpu_per_row_us is None else f"{r.cpu_per_row_us:.0f}"
        print(f"{r.workload:<32} {r.uploaders:>3}  {r.client:<10} {r.files:>5} {r.bytes / MB:>8.1f} "
              f"{r.seconds:>8.2f} {r.files_per_s:>8.1f} {r.mb_per_s:>8.2f} {cpu:>8} {per_row:>7}  {ratio:>12}")
    scale = {}
    for r in results:
        if r.client.startswith("capsync x"):
            scale.setdefault((r.workload, r.uploaders), {})[int(r.client.rsplit("x", 1)[1])] = r
    for r in results:
        if r.client.startswith("capsync w") and (r.workload, r.uploaders) in ours_by_key:
            one = ours_by_key[(r.workload, r.uploaders)]
            print(f"{r.workload}, {r.uploaders} uploaders: serve --workers {r.client.rsplit('w', 1)[1]} / one process = "
                  f"{r.files_per_s / one.files_per_s:.2f}x files/s")
    for (workload, upl), by_n in scale.items():
        if 1 in by_n:
            for n, r in sorted(by_n.items()):
                if n > 1:
                    print(f"{workload}, {upl} uploaders: {n} cloud processes / 1 = "
                          f"{r.files_per_s / by_n[1].files_per_s:.2f}x files/s")


def main() -> int:
    """Parse arguments, build the workloads, measure every client at every uploader count, print."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small smoke run")
    p.add_argument("--uploaders", default=None, help="comma-separated uploader counts (default 1,4,16)")
    p.add_argument("--small-files", type=int, default=None)
    p.add_argument("--big-files", type=int, default=None)
    p.add_argument("--big-mb", type=float, default=None)
    p.add_argument("--no-curl", action="store_true", help="skip the curl baseline")
    p.add_argument("--workloads", default="small,big", help="which workloads to run: small, big or both")
    p.add_argument("--repeat", type=int, default=1, help="measure every combination this many times")
    p.add_argument("--no-nginx", action="store_true", help="skip the nginx transport baseline")
    p.add_argument("--no-httpx", action="store_true", help="skip the bare httpx baseline")
    p.add_argument("--cloud-workers", default="", metavar="N,...",
                   help="also measure `serve --workers N` (one data dir, SQLite) for each N, e.g. 2")
    p.add_argument("--clouds", default="", metavar="N,M",
                   help="also measure N (and M...) cloud processes on PostgreSQL + the S3 stand-in behind nginx")
    args = p.parse_args()
    uploaders = [int(x) for x in (args.uploaders or ("1,4" if args.quick else "1,4,16")).split(",")]
    n_small = args.small_files or (200 if args.quick else 2000)
    n_big = args.big_files or (4 if args.quick else 20)
    big_size = int((args.big_mb or (10 if args.quick else 50)) * MB)
    clients = ["capsync"] + ([] if args.no_httpx else ["httpx"])
    clients += [] if args.no_curl or not shutil.which("curl") else ["curl"]
    nginx_missing = None if args.no_nginx else fleet.ensure_nginx()
    clients += [] if args.no_nginx or nginx_missing else ["nginx"]
    clients += [f"capsync w{int(n)}" for n in args.cloud_workers.split(",") if n]
    clients += [f"capsync x{int(n)}" for n in args.clouds.split(",") if n]
    if nginx_missing and args.clouds:
        p.error(f"--clouds needs nginx as its load balancer: {nginx_missing}")

    wanted = set(args.workloads.split(","))
    if not wanted or wanted - {"small", "big"}:
        p.error("--workloads takes small, big or small,big")
    root = Path(tempfile.mkdtemp(prefix="capsync-bench-sync-"))
    try:
        t0 = time.perf_counter()
        workloads = []
        if "small" in wanted:
            workloads.append(make_small(root / "small", n_small))
        if "big" in wanted:
            workloads.append(make_big(root / "big", n_big, big_size))
        chunks = {w.name: split_chunks(w, root / f"chunks-{i}") for i, w in enumerate(workloads)} \
            if "curl" in clients else {}
        print(f"capsync sync benchmark: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"{platform.system()} {platform.release()}; cloud = `capsync cloud serve` in its own process, "
              f"fresh per measurement; chunk {DEFAULT_CHUNK_BYTES // 1024} KiB; "
              f"workloads written in {time.perf_counter() - t0:.1f} s"
              + ("" if "curl" in clients else "; curl not installed")
              + (f"; no nginx baseline: {nginx_missing}" if nginx_missing else ""), flush=True)
        results = []
        for w in workloads:
            for n in uploaders:
                for _ in range(args.repeat):
                    for client in clients:
                        r = measure(root, w, client, n, chunks.get(w.name))
                        results.append(r)
                        print(f"  {w.name}, {n} uploaders, {client}: {r.seconds:.2f} s", file=sys.stderr, flush=True)
        print()
        print_table(results)
        print("\ncapsync/this: capsync's MB/s (= files/s, same files) divided by the baseline's; < 1 means slower."
              "\nsrv CPU: the server processes' CPU time over the run's wall time (100% = one core); us/row: "
              "their CPU per stored row. nginx does not fsync; capsync fsyncs every byte and row it acknowledges."
              "\ncapsync xN: N cloud processes on PostgreSQL (fsync off, a throwaway test cluster) and moto "
              "(a stand-in for S3, one Python process) behind nginx, all on this machine's cores.")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
