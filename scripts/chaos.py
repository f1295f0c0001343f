#!/usr/bin/env python3
"""Process-level chaos: does "nothing lost, nothing duplicated" hold on real processes?

    .venv/bin/python scripts/chaos.py --cycles 200 [--seed 1] [--cycle-seconds 3.5] [--keep]

Runs `capsync cloud serve` and `capsync run` as separate processes on loopback, the agent syncing
through the fault-injecting TCP proxy (cuts, partitions, stalls, slow links, resets mid-body,
dropped answers), with random SIGKILLs of the agent (some during start-up) and of the cloud at
random moments, and simulated power loss (the tail of `.prog` files truncated or zero-filled at
random offsets while the agent is dead), for `--cycles` cycles. Where FUSE can mount (and unless
--no-power-cuts), the capture dir and the cloud's data dir each live on the power-cut file system
(capsync.testing.PowerCutFS) and the cycles also cut the power of the agent (sometimes during its
start-up), the cloud or both: SIGKILL, then the disk forgets everything not fsynced (sometimes
with a torn write), is mounted again and the processes restart. Then it lifts every fault, waits
until the backlog is empty, stops the agent and prints a table: cycles, kills, partitions and
other proxy faults, readings captured, committed, lost, duplicated, deleted by the disk rule, and
destroyed by the simulated power loss, with the wall time.

How each number is defined (in short; tests/chaoskit.py has it in full):

- captured: every reading key (file_id, record index) ever observed: in local capture files (read
  every 0.25 s while the agent runs, after each kill and right before each power loss), in the
  cloud's file list (read every few cycles), and in the final cloud and local contents. The
  agent's own count is lost at each SIGKILL, so it is not used.
- destroyed by power loss: per damaged `.prog`, the keys it held right before the damage minus
  those it holds right after. Not lost: destroyed on purpose.
- allowed losses (power cuts): readings a cut forgot that were taken less than
  `--fsync-interval` (the agent's fsync_interval_secs) before it: docs/agent.md's bound. Readings a
  cut forgot that were older are must-survive losses, listed by name.
- acknowledged commits lost: after each power cut of the cloud, every commit it had logged as
  done must still be listed, with its records and its bytes on disk.
- lost = captured - (committed in the cloud | still local at the end | destroyed | allowed losses):
  the readings that had to survive and did not.
- duplicated = keys listed twice by the cloud + readings (same method and requested time) stored
  under two different keys in the cloud.

Exit code 0 only when lost == 0, duplicated == 0, no acknowledged commit was lost, the backlog drained, and no process exited on
its own or with a bad code; 1 otherwise. The run's dir (per-run logs under logs/, the capture dir,
the cloud's data) is kept with --keep, and always when the run fails. tests/test_chaos.py runs a
short version with the same code (tests/chaoskit.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capsync.testing import fuse_unavailable  # noqa: E402
from tests.chaoskit import ChaosSettings, remove_run_dir, run_chaos  # noqa: E402


def main() -> int:
    """Parse arguments, run the chaos once in a temporary dir, print the table; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=200, help="number of chaos cycles")
    p.add_argument("--seed", type=int, default=1, help="seed of the random choices (timings still vary)")
    p.add_argument("--cycle-seconds", type=float, default=3.5, help="mean length of one cycle (0.7x to 1.3x)")
    p.add_argument("--sync-interval-mins", type=float, default=0.02, help="the agent's sync_interval_mins")
    p.add_argument("--drain-timeout", type=float, default=300.0, help="seconds the drain may take")
    p.add_argument("--dir", type=Path, help="run in this dir, kept afterwards (default: a new temporary dir, "
                                            "removed when the run passes)")
    p.add_argument("--keep", action="store_true", help="keep the run's dir even when it passes")
    p.add_argument("--quiet", action="store_true", help="no line per cycle")
    p.add_argument("--power-cuts", action=argparse.BooleanOptionalAction, default=None,
                   help="capture dir and cloud data dir on the power-cut file system, with real power cuts "
                        "(default: on where FUSE can mount)")
    p.add_argument("--fsync-interval", type=float, default=1.0, help="the agent's fsync_interval_secs")
    args = p.parse_args()
    why_not = fuse_unavailable()
    if args.power_cuts is None:
        args.power_cuts = why_not is None
        if why_not:
            print(f"no real power cuts: {why_not}", flush=True)
    elif args.power_cuts and why_not:
        print(f"--power-cuts: {why_not}", file=sys.stderr)
        return 2
    root = args.dir or Path(tempfile.mkdtemp(prefix="capsync-chaos-"))
    settings = ChaosSettings(cycles=args.cycles, seed=args.seed, cycle_seconds=args.cycle_seconds,
                             sync_interval_mins=args.sync_interval_mins, drain_timeout_s=args.drain_timeout,
                             power_cuts=args.power_cuts, fsync_interval_secs=args.fsync_interval)
    t0 = time.monotonic()
    try:
        report = run_chaos(root, settings, None if args.quiet else lambda m: print(m, flush=True))
    except BaseException:
        print(f"\nchaos run failed after {time.monotonic() - t0:.1f} s; its dir is kept: {root}", flush=True)
        raise
    print()
    print(report.table())
    print(f"\n{'PASS' if report.ok else 'FAIL'}: {report.counts.cycles} cycles in {report.wall_s:.1f} s "
          f"({report.wall_s / 60:.1f} min)")
    if report.ok and not args.keep and args.dir is None:
        remove_run_dir(root)
    else:
        print(f"run dir kept: {root}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
