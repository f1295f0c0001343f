#!/usr/bin/env python3
"""Backlog benchmark: a real agent starting on a big backlog of finished capture files.

    .venv/bin/python scripts/bench/backlog.py [--files 100000] [--watch 20] [--drain]

It writes N (default 100,000) small finished capture files with CaptureWriter (its fsyncs are
skipped while writing, then one sync(2): this is set-up, not what is measured) in the agent's
layout under 20 resources, starts a real `capsync cloud serve` process and a real `capsync run`
whose capture_dir is the backlog (one fake sensor at 10 Hz keeps finishing new files, one a
second), and prints:

- the time from starting the agent process to the first file committed in the cloud (from the
  cloud's "file committed" log line);
- the agent's peak RSS (psutil, sampled every 50 ms);
- the backlog figure over time, read with the same control call as `capsync status` (it should
  go down as files sync and up as new ones finish), with the files the agent finished since
  start and those not accounted for (N + finished - backlog - synced - set aside: files finished
  but not found yet, at most about one sync interval's worth);
- with `--drain`: the time until the backlog is empty and the drain rate.

Baselines measured in the same run: a bare os.scandir + stat of the same tree (the least any
discovery must do once), and the same agent on an empty capture dir (its start-up time to
"agent running" and its peak RSS): the ratios say what the backlog costs on top.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from capsync.runtime import capture_writer, rpc  # noqa: E402
from capsync.runtime.capture_file import CaptureHeader, CaptureRecord, CaptureWriter, new_file_id  # noqa: E402
from capsync.runtime.resources.methods import DataKind  # noqa: E402
from tests.processkit import AgentProcess, ProcessKit, add_part, agent_config, log_lines  # noqa: E402

PART = "bench"
RESOURCES = 20


def write_backlog(capture_dir: Path, n: int) -> float:
    """`n` finished one-record tabular capture files under `capture_dir`; returns the seconds it took."""
    saved = capture_writer.fsync_dir, capture_writer._fdatasync, os.fsync
    capture_writer.fsync_dir = capture_writer._fdatasync = os.fsync = lambda _: None  # set-up only
    t0 = time.perf_counter()
    try:
        t_ns = time.time_ns() - 7 * 86400 * 10**9
        for i in range(n):
            t_ns += 1_000_000
            header = CaptureHeader(file_id=new_file_id(), part_id=PART, resource_type="sensor",
                                   resource_name=f"s{i % RESOURCES}", method="Readings", params={}, tags=("bench",),
                                   kind=DataKind.TABULAR, created_ns=t_ns)
            w = CaptureWriter.create(capture_dir, header, fsync_interval_s=math.inf)
            w.append(CaptureRecord(t_ns, t_ns + 1000, {"t": 21.5, "h": 40.0, "i": i}))
            w.finish()
    finally:
        capture_writer.fsync_dir, capture_writer._fdatasync, os.fsync = saved
    os.sync()
    return time.perf_counter() - t0


def bare_scan(root: Path) -> tuple[int, float]:
    """(files, seconds) of a plain os.scandir walk that stats every file: the discovery baseline."""
    t0 = time.perf_counter()
    n, stack = 0, [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    e.stat(follow_symlinks=False)
                    n += 1
    return n, time.perf_counter() - t0


class RssSampler:
    """Samples a process's RSS every 50 ms in a thread; `peak` is the largest seen (bytes)."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.peak = 0
        self.last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.last = self._proc.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, self.last)
            self._stop.wait(0.05)

    def stop(self) -> int:
        """Stop sampling; the peak RSS in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak


def status(address: str, secret: str) -> dict:
    """The agent's status, by the control call `capsync status` makes."""
    async def call() -> dict:
        async with rpc.connect(address, secret=secret) as client:
            return await client.call("status")
    return trio.run(call)


def first_commit_time(cloud_log: Path, since: int) -> bool:
    """True once the cloud's log (after offset `since`) holds a "file committed" line."""
    with cloud_log.open("rb") as fh:
        fh.seek(since)
        return b'"file committed"' in fh.read()


def start_agent(kit: ProcessKit, config: Path, log: Path) -> tuple[AgentProcess, float, RssSampler]:
    """Start `capsync run` (without waiting for it); returns it, its start time and an RSS sampler."""
    t0 = time.monotonic()
    agent = AgentProcess(config, log)
    kit.procs.append(agent)
    return agent, t0, RssSampler(agent.pid)


def empty_agent_baseline(kit: ProcessKit, root: Path, url: str, secret: str) -> tuple[float, int]:
    """(seconds to "agent running", peak RSS over 3 s after that) of the agent on an empty capture dir."""
    base = root / "empty"
    base.mkdir()
    config = agent_config(base, url, secret, sensor_hz=10, camera_hz=0, part_id=PART, interval_mins=0.1,
                          max_file_age_secs=1)
    agent, t0, rss = start_agent(kit, config, base / "agent.log")
    agent.wait_running(timeout=60)
    started = time.monotonic() - t0
    time.sleep(3)
    peak = rss.stop()
    agent.stop()
    return started, peak


def main() -> int:
    """Write the backlog, measure the baselines, run the agent on the backlog, print the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=100_000, help="finished capture files in the backlog")
    p.add_argument("--watch", type=float, default=20.0, help="seconds to watch the backlog after the first upload")
    p.add_argument("--drain", action="store_true", help="run until the backlog is empty and print the drain rate")
    p.add_argument("--uploaders", type=int, default=None, help="maximum_num_sync_threads (default: the default)")
    p.add_argument("--cloud-workers", type=int, default=1, metavar="N", help="run the cloud as `serve --workers N`")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="capsync-bench-backlog-"))
    MB = 1 << 20
    try:
        capture = root / "run" / "capture"
        print(f"capsync backlog benchmark: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"{platform.system()} {platform.release()}; load average {os.getloadavg()[0]:.2f}", flush=True)
        gen_s = write_backlog(capture, args.files)
        n, scan_s = bare_scan(capture)
        print(f"backlog: {n} files written in {gen_s:.1f} s; bare scandir+stat of the tree: {scan_s:.3f} s", flush=True)
        with ProcessKit(root) as kit:
            cloud = kit.start_cloud(root / "cloud", args=("--workers", str(args.cloud_workers)))
            secret = add_part(cloud.data_dir, PART)
            empty_start_s, empty_rss = empty_agent_baseline(kit, root, cloud.url, secret)
            print(f"empty-dir agent: running after {empty_start_s:.2f} s, peak RSS {empty_rss / MB:.0f} MiB", flush=True)
            dm = {"max_file_age_secs": 1}
            if args.uploaders:
                dm["maximum_num_sync_threads"] = args.uploaders
            config = agent_config(root / "run", cloud.url, secret, sensor_hz=10, camera_hz=0, part_id=PART,
                                  interval_mins=0.1, **dm)
            address = json.loads(config.read_text())["network"]["bind_address"]
            log_from = cloud.log.stat().st_size
            agent, t0, rss = start_agent(kit, config, root / "run" / "agent.log")
            deadline = time.monotonic() + 120
            while not first_commit_time(cloud.log, log_from):
                assert agent.alive(), f"agent exited:\n{agent.text()[-3000:]}"
                assert time.monotonic() < deadline, f"no upload within 120 s:\n{agent.text()[-3000:]}"
                time.sleep(0.02)
            first_s = time.monotonic() - t0
            running = [r for r in log_lines(agent.log) if r.get("msg") == "agent running"]
            print(f"first file committed {first_s:.2f} s after the agent started"
                  f"{'' if running else ' (before it logged agent running)'}", flush=True)
            print(f"{'t (s)':>7} {'backlog files':>14} {'backlog MiB':>12} {'synced':>8} {'in flight':>9} "
                  f"{'new files':>9} {'unaccounted':>11} {'RSS MiB':>8}", flush=True)
            samples = []
            end = time.monotonic() + args.watch
            while True:
                time.sleep(1.0)
                full = status(address, secret)
                s = full["sync"]
                t = time.monotonic() - t0
                finished = full["retired"]["files_finished"] + sum(c["files_finished"] for c in full["collectors"])
                # every file is in the backlog, synced or set aside: what is not is not counted yet
                unaccounted = n + finished - s["backlog_files"] - s["files_synced"] - s["set_aside"]
                samples.append((t, s["backlog_files"], s["files_synced"]))
                print(f"{t:>7.1f} {s['backlog_files']:>14} {s['backlog_bytes'] / MB:>12.2f} {s['files_synced']:>8} "
                      f"{s['in_flight']:>9} {finished:>9} {unaccounted:>11} {rss.last / MB:>8.0f}", flush=True)
                if args.drain:
                    if s["backlog_files"] <= 2 and s["files_synced"] >= args.files:
                        break
                elif time.monotonic() >= end:
                    break
                assert agent.alive(), f"agent exited:\n{agent.text()[-3000:]}"
            peak = rss.stop()
            agent.stop(timeout=60)
        distinct = len({b for _, b, _ in samples})
        print()
        print(f"first upload: {first_s:.2f} s after start  (empty-dir agent running after {empty_start_s:.2f} s: "
              f"{first_s / empty_start_s:.2f}x; bare scan of the backlog {scan_s:.3f} s)")
        print(f"agent peak RSS: {peak / MB:.0f} MiB  (empty-dir agent {empty_rss / MB:.0f} MiB: "
              f"+{(peak - empty_rss) / MB:.0f} MiB for {n} files, {(peak - empty_rss) / max(1, n):.0f} B/file)")
        print(f"backlog figure: {distinct} distinct values in {len(samples)} samples, "
              f"from {samples[0][1]} to {samples[-1][1]}")
        if len(samples) >= 2:
            (ta, _, sa), (tb, _, sb) = samples[0], samples[-1]
            print(f"drain rate: {(sb - sa) / max(1e-9, tb - ta):.0f} files/s over {tb - ta:.0f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
