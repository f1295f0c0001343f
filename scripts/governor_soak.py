#!/usr/bin/env python3
"""The disk governor's full acceptance run (needs root, to mount a tmpfs).

    sudo .venv/bin/python scripts/governor_soak.py [--seconds 120] [--interval 0.25] [--ballast-seconds 20]

1. On a 16 MB tmpfs capture dir, a fake camera captures ~200 KB JPEG images at 20 Hz with sync
   disabled for `--seconds`: prints captured/dropped counts, sampled disk usage (mean, max, min
   after the first quarter), the governor's deletions, and checks every remaining file with
   `capsync inspect` (exit code 0, no damage line).
2. With 80 % of a fresh tmpfs filled by a file outside the capture dir, the same camera for
   `--ballast-seconds`: the governor must only warn (once) and delete nothing, inside or outside.

Exits 1 if any acceptance check fails. The short versions of both runs are in
tests/test_governor_acceptance.py, which this script shares its harness with.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_governor_acceptance import DiskRun, mounted_tmpfs, run_disk_full  # noqa: E402


def inspect_all(files: list[Path]) -> tuple[int, int, int]:
    """Run `capsync inspect` on `files`; returns (exit code, record lines, damage lines)."""
    if not files:
        return 0, 0, 0
    capsync = Path(sys.executable).with_name("capsync")
    cmd = [str(capsync)] if capsync.exists() else [sys.executable, "-m", "capsync"]
    r = subprocess.run([*cmd, "inspect", *map(str, files)], capture_output=True, text=True, cwd=ROOT)
    lines = r.stdout.splitlines()
    return (r.returncode, sum('"type": "record"' in x for x in lines), sum('"type": "damage"' in x for x in lines))


def check(ok: bool, what: str, failures: list[str]) -> None:
    """Print one acceptance check and remember it when it failed."""
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        failures.append(what)


def report_main(run: DiskRun, code: int, records: int, damage: int, failures: list[str]) -> None:
    """The checks of the 2-minute run."""
    s, g = run.stats, run.stats.governor
    tail = run.usage[len(run.usage) // 4:]
    print(run.summary())
    print(f"capsync inspect on {len(run.files)} files: exit {code}, {records} records, {damage} damage lines")
    deletion_logs = run.messages("deleted every Nth")
    print(f"deletion log lines: {len(deletion_logs)}, e.g. {deletion_logs[-1].__dict__.get('files_deleted')} files /"
          f" {deletion_logs[-1].__dict__.get('bytes_deleted')} bytes" if deletion_logs else "no deletion log lines")
    check(sum(x.total_restarts for x in s.supervisors) == 0, "no actor crashed or restarted", failures)
    check(max(tail) < 100.0 and sum(tail) / len(tail) < 92.0, "usage hovers around/under the 90 % threshold", failures)
    check(g.files_deleted > 0 and g.bytes_deleted > 0, "deleted files and bytes are in the status", failures)
    check(sum(r.files_deleted for r in deletion_logs) == g.files_deleted, "... and in the logs", failures)
    check(code == 0 and damage == 0 and records == len(run.files) and not run.damaged,
          "every remaining file reads back intact with capsync inspect", failures)


def report_ballast(run: DiskRun, failures: list[str]) -> None:
    """The checks of the run with 80 % of the disk taken by a file outside the capture dir."""
    s, g = run.stats, run.stats.governor
    print(run.summary())
    check(g.files_deleted == 0 and g.passes == 0, "deleted nothing inside the capture dir", failures)
    check(bool(run.ballast_intact), "the file outside the capture dir is intact", failures)
    check(len(run.files) == s.files_finished, "every finished capture file is still there", failures)
    check(g.warnings == 1 and len(run.messages("outside the capture dir")) == 1,
          "warned once (per state change)", failures)
    check(sum(x.total_restarts for x in s.supervisors) == 0, "no actor crashed (full disk: readings dropped and "
          f"counted: {s.dropped})", failures)


async def main(args: argparse.Namespace) -> int:
    """Both runs, each on its own fresh tmpfs."""
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="capsync-soak-") as tmp:
        print(f"== 1. 16 MB tmpfs, ~200 KB JPEG at 20 Hz, sync off, {args.seconds:g} s, governor every "
              f"{args.interval:g} s", flush=True)
        with mounted_tmpfs(Path(tmp) / "a") as mnt:
            run = await run_disk_full(mnt, args.seconds, governor_interval_s=args.interval)
            code, records, damage = inspect_all(run.files)
            report_main(run, code, records, damage, failures)
        print(f"\n== 2. the same, with 80 % of the tmpfs filled by a file outside the capture dir, "
              f"{args.ballast_seconds:g} s", flush=True)
        with mounted_tmpfs(Path(tmp) / "b") as mnt:
            run = await run_disk_full(mnt, args.ballast_seconds, governor_interval_s=args.interval,
                                      ballast_fraction=0.8)
            report_ballast(run, failures)
    print("\nall acceptance checks passed" if not failures else f"\nFAILED: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--interval", type=float, default=0.25, help="governor check interval (s)")
    p.add_argument("--ballast-seconds", type=float, default=20.0)
    quiet = logging.StreamHandler()
    quiet.setLevel(logging.ERROR)  # the runs collect the INFO logs themselves; show only errors here
    logging.basicConfig(handlers=[quiet])
    sys.exit(trio.run(main, p.parse_args()))
