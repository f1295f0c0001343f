#!/usr/bin/env python3
"""The issue's full-length sync acceptance run, on real processes and real sockets.

    .venv/bin/python scripts/e2e_sync.py [--seconds 60] [--outage-at 15] [--outage 30] [--interval-mins 0.05]

Starts `capsync cloud serve` and `capsync run` (fake sensor Readings at 20 Hz, fake camera
ReadImage at 2 Hz, sync every `--interval-mins`), SIGKILLs the cloud `--outage-at` seconds in
for `--outage` seconds, restarts it on the same port and data dir, runs to `--seconds`, stops the
agent with SIGTERM and prints where every captured record is: captured (the agent's own count),
committed in the cloud, still local, lost, duplicated, and each method against its tick grid.
Exits 1 if anything was lost or duplicated, or the backlog did not drain. `--outage 0` skips the
outage. Uses the same helpers as tests/test_sync_process.py (tests/processkit.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capsync.runtime.capture_file import read_capture  # noqa: E402
from tests.processkit import (  # noqa: E402
    CAMERA, SENSOR, CloudReader, ProcessKit, account, add_part, agent_config, local_capture_files, log_lines,
    wait_for,
)

PERIODS = {SENSOR: 50_000_000, CAMERA: 500_000_000}


def _say(t0: float, msg: str) -> None:
    print(f"[{time.monotonic() - t0:6.1f} s] {msg}", flush=True)


def run(root: Path, seconds: float, outage_at: float, outage: float, interval_mins: float) -> int:
    """One acceptance run under `root`; returns the exit code."""
    t0 = time.monotonic()
    with ProcessKit(root) as kit:
        cloud = kit.start_cloud()
        secret = add_part(cloud.data_dir)
        _say(t0, f"cloud listening on {cloud.url}")
        agent = kit.start_agent(agent_config(root, cloud.url, secret, interval_mins=interval_mins))
        started = time.monotonic()
        _say(t0, f"agent running, syncing every {interval_mins * 60:g} s")
        down_ns = up_ns = None
        if outage > 0:
            time.sleep(max(0.0, started + outage_at - time.monotonic()))
            cloud.kill()
            down_ns = time.time_ns()
            _say(t0, f"cloud SIGKILLed for {outage:g} s")
            time.sleep(outage)
            cloud = kit.restart_cloud(cloud)
            up_ns = time.time_ns()
            _say(t0, f"cloud back on {cloud.url}")
        time.sleep(max(0.0, started + seconds - time.monotonic()))
        kit.wait_between_passes(cloud)  # not in the middle of a commit: see tests/test_sync_process.py
        stop_ns = time.time_ns()
        captured = agent.stop()
        _say(t0, "agent stopped")
        with CloudReader(cloud.url, secret) as reader:
            acc = account(reader, root / "capture", captured, PERIODS)
            files = reader.files()
    local = local_capture_files(root / "capture")
    interval_ns = int(interval_mins * 60e9)
    stale = [p for p in local if read_capture(p).header.created_ns < stop_ns - interval_ns - 1_000_000_000]
    lines = log_lines(root / "agent.log")
    down_logs = sum(1 for r in lines if r.get("msg") == "cloud unavailable; backing off")
    back_logs = sum(1 for r in lines if r.get("msg") == "cloud reachable again")
    late_files = [f for f in files if down_ns and up_ns and down_ns < (f["created_ns"] or 0) < up_ns]

    rows = [
        ("captured (agent's count)", acc.captured),
        ("committed in the cloud", acc.committed),
        ("still local", acc.local),
        ("lost", acc.lost),
        ("duplicated", acc.duplicated),
        ("files committed", len(files)),
        ("files captured during the outage, committed after", f"{sum(f['committed_ns'] >= (up_ns or 0) for f in late_files)}"
                                                               f" of {len(late_files)}"),
        ("local files older than the last pass", len(stale)),
        ("'cloud unavailable' / 'reachable again' log lines", f"{down_logs} / {back_logs}"),
    ]
    rows += [(f"{g.method}", f"{g.records} records, {g.missing_ticks} missing ticks, {g.duplicated_times} "
                             f"duplicated times, {g.grid_runs} grid run(s)") for g in acc.grid]
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    ok = acc.lost == 0 and acc.duplicated == 0 and not stale and all(g.missing_ticks == 0 for g in acc.grid)
    ok = ok and all(f["committed_ns"] >= (up_ns or 0) for f in late_files)
    print("\nPASS" if ok else "\nFAIL")
    return 0 if ok else 1


def main() -> int:
    """Parse arguments and run once in a temporary dir (kept with --keep)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="length of the agent's run")
    p.add_argument("--outage-at", type=float, default=15.0, help="seconds into the run the cloud is killed")
    p.add_argument("--outage", type=float, default=30.0, help="seconds the cloud stays down (0: no outage)")
    p.add_argument("--interval-mins", type=float, default=0.05, help="sync_interval_mins")
    p.add_argument("--keep", action="store_true", help="keep the run's dir (logs, capture dir, cloud data)")
    args = p.parse_args()
    if args.outage and args.outage_at + args.outage >= args.seconds:
        p.error("the outage must end before the run does")
    root = Path(tempfile.mkdtemp(prefix="capsync-e2e-"))
    try:
        return run(root, args.seconds, args.outage_at, args.outage, args.interval_mins)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
