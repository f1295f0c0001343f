#!/usr/bin/env python3
"""Capture benchmark: the agent's collectors against a bare loop measured in the same run.

    .venv/bin/python scripts/bench/capture.py [--workloads all] [--seconds 10] [--profile]

Workloads (`--workloads` takes a comma-separated list):

- `1x1000`, `1x10000`, `10x1000`, `100x100`: collectors x Hz of the fake sensor's Readings in an
  in-process agent for `--seconds`; prints the share of the target readings taken, late ticks,
  tick lateness p50/p99 and CPU per reading. For 1x1000 it also checks that every `requested`
  time is exactly on the grid (a whole number of periods from the first). For 100x100 it prints
  the CPU per reading as a ratio to the bare loop: call the fake sensor, encode the record and
  append it to a capture file (CaptureWriter, files rotated at 64 KiB), no scheduling at all.
- `max`: the most readings per second one collector (and 4 collectors) take when asked for far
  more than one core can do (200 kHz): the engine's own ceiling, against the bare loop's.
- `idle`: a real `capsync run` process with 10 collectors at 1 Hz: its CPU share and RSS.
- `sim`: the simulation harness (virtual clock): a day of 10 collectors at 1 Hz, synced to the
  in-process cloud every minute (`--sim-sync-mins`); prints the real time it takes, and then the
  time the harness's accounting of every reading takes.

`--profile` runs the first chosen workload under pyinstrument (`pip install pyinstrument`) and
prints where the time goes. Take figures on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import psutil
import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from capsync.actors.agent import Agent  # noqa: E402
from capsync.runtime.capture_file import (  # noqa: E402
    CaptureHeader, CaptureRecord, CaptureWriter, new_file_id, read_capture,
)
from capsync.runtime.config import parse_config  # noqa: E402
from capsync.runtime.resources.methods import DataKind  # noqa: E402
from capsync.runtime.resources.registry import ResourceRegistry, build_resource  # noqa: E402

RATE_WORKLOADS = {"1x1000": (1, 1000.0), "1x10000": (1, 10_000.0), "10x1000": (10, 1000.0), "100x100": (100, 100.0)}
ALL = [*RATE_WORKLOADS, "max", "idle", "sim"]


def bench_config(capture_dir: Path, collectors: int, hz: float, **dm: object) -> dict:
    """A config with `collectors` fake sensors capturing Readings at `hz`."""
    comps = [
        {
            "name": f"s{i}", "type": "sensor", "model": "fake", "attributes": {},
            "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": [
                {"method": "Readings", "capture_frequency_hz": hz}]}}],
        }
        for i in range(collectors)
    ]
    services = [{"name": "dm", "type": "data_manager", "attributes": {"capture_dir": str(capture_dir), **dm}}]
    return {"components": comps, "services": services, "cloud": {"id": "bench"}}


async def run_agent(capture_dir: Path, collectors: int, hz: float, seconds: float) -> dict:
    """Run an in-process agent (no cloud) and measure its collectors over `seconds`."""
    agent = Agent(parse_config(json.dumps(bench_config(capture_dir, collectors, hz))), control=False)
    samples: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        await trio.sleep(0.5)  # let every collector take its first reading and open its files
        for c in agent.collectors.values():
            c.lateness_samples = samples
        s0 = agent.statistics()
        cpu0, t0 = time.process_time(), trio.current_time()
        await trio.sleep(seconds)
        cpu1, t1 = time.process_time(), trio.current_time()
        s1 = agent.statistics()
        nursery.cancel_scope.cancel()
    readings = s1.captured - s0.captured
    late = sum(c.late_ticks for c in s1.collectors) - sum(c.late_ticks for c in s0.collectors)
    missed = sum(c.missed_ticks for c in s1.collectors) - sum(c.missed_ticks for c in s0.collectors)
    ticks = len(samples) + missed
    q = statistics.quantiles(samples, n=100) if len(samples) > 1 else [0.0] * 99
    return {
        "readings": readings,
        "share": readings / (collectors * hz * (t1 - t0)),
        "per_s": readings / (t1 - t0),
        "late_share": (late + missed) / ticks if ticks else 0.0,
        "missed": missed,
        "p50_ms": q[49] * 1e3,
        "p99_ms": q[98] * 1e3,
        "cpu_us": (cpu1 - cpu0) / readings * 1e6 if readings else float("nan"),
        "cpu_share": (cpu1 - cpu0) / (t1 - t0),
    }


def off_grid(capture_dir: Path, hz: float) -> tuple[int, int]:
    """(records, records whose requested time is not a whole number of periods from the first)."""
    period_ns = round(1e9 / hz)
    requested = sorted(r.requested_ns for p in capture_dir.rglob("*.capture") for r in read_capture(p).records)
    if not requested:
        return 0, 0
    return len(requested), sum(1 for r in requested if (r - requested[0]) % period_ns)


async def run_bare(capture_dir: Path, readings: int) -> float:
    """CPU microseconds per reading for: call the fake sensor, build a record, append it."""
    registry = ResourceRegistry()
    sensor = build_resource("sensor", "bare", "fake", {}, registry)

    def new_writer() -> CaptureWriter:
        header = CaptureHeader(new_file_id(), "bench", "sensor", "bare", "Readings", {}, (), DataKind.TABULAR)
        return CaptureWriter.create(capture_dir, header, fsync_interval_s=1.0)

    writer = new_writer()
    cpu0 = time.process_time()
    for _ in range(readings):
        payload = await sensor.capture("Readings", {})
        now = time.time_ns()
        writer.append(CaptureRecord(now, now, payload))
        if writer.size_bytes >= 64 * 1024:
            writer.finish()
            writer = new_writer()
    cpu = time.process_time() - cpu0
    writer.finish()
    return cpu / readings * 1e6


def measure_idle(tmp: Path, seconds: float) -> dict:
    """CPU share and RSS of a real `capsync run` process with 10 collectors at 1 Hz."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "idle.json"
    cfg = bench_config(tmp / "idle", 10, 1.0)
    cfg["network"] = {"bind_address": "127.0.0.1:0"}  # any free port: another agent may hold the default
    config.write_text(json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "capsync", "run", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p = psutil.Process(proc.pid)
        time.sleep(3.0)  # start-up (imports) is not idle time
        c0, t0 = p.cpu_times(), time.monotonic()
        rss = 0
        while time.monotonic() - t0 < seconds:
            rss = max(rss, p.memory_info().rss)
            time.sleep(0.5)
        c1, t1 = p.cpu_times(), time.monotonic()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    return {"cpu_share": cpu / (t1 - t0), "rss_mb": rss / 1e6}


def measure_sim(tmp: Path, hours: float, sync_mins: float) -> dict:
    """Real seconds the simulation harness needs for `hours` of 10 collectors at 1 Hz, synced
    every `sync_mins`: the seconds of capture and sync (advance and drain), then of the check."""
    from capsync.testing import Simulation

    config = bench_config(tmp / "unused", 10, 1.0, sync_interval_mins=sync_mins)
    config["services"][0]["attributes"].pop("capture_dir")
    del config["cloud"]

    async def main() -> dict:
        async with Simulation(tmp / "sim", config) as sim:
            t0 = time.perf_counter()
            await sim.advance(hours * 3600)
            await sim.drain()
            t1 = time.perf_counter()
            report = await sim.accounting()
            t2 = time.perf_counter()
        return {"captured": report.captured, "committed": report.committed, "lost": report.lost,
                "duplicated": report.duplicated, "real_s": t1 - t0, "check_s": t2 - t1}

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def profiled(enabled: bool):
    """A pyinstrument profiler context when `enabled` (printing its report at the end), else nothing."""
    if not enabled:
        return nullcontext()
    try:
        from pyinstrument import Profiler
    except ImportError:
        sys.exit("--profile needs pyinstrument: .venv/bin/pip install pyinstrument")

    class _Print:
        def __enter__(self):
            self.p = Profiler(interval=0.0005, async_mode="disabled")
            self.p.start()

        def __exit__(self, *exc):
            self.p.stop()
            print(self.p.output_text(unicode=True, color=False, show_all=False))

    return _Print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="all", help=f"comma-separated, from {', '.join(ALL)} (default: all)")
    p.add_argument("--seconds", type=float, default=10.0, help="measuring time of each rate workload")
    p.add_argument("--sim-hours", type=float, default=24.0, help="virtual hours of the sim workload")
    p.add_argument("--sim-sync-mins", type=float, default=1.0, help="sync_interval_mins of the sim workload")
    p.add_argument("--profile", action="store_true", help="profile the first chosen workload with pyinstrument")
    args = p.parse_args()
    chosen = ALL if args.workloads == "all" else [w.strip() for w in args.workloads.split(",")]
    unknown = [w for w in chosen if w not in ALL]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(ALL)}")
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        bare = trio.run(run_bare, tmp / "bare", 50_000)
        print(f"bare loop (sensor + encode + append): {bare:.1f} us CPU per reading = {1e6 / bare:,.0f} readings/s")
        for i, w in enumerate(chosen):
            with profiled(args.profile and i == 0):
                run_workload(w, tmp / w, args, bare)
            if args.profile:
                return


def run_workload(w: str, tmp: Path, args: argparse.Namespace, bare: float) -> None:
    """Run workload `w` and print its figures."""
    if w in RATE_WORKLOADS:
        n, hz = RATE_WORKLOADS[w]
        r = trio.run(run_agent, tmp, n, hz, args.seconds)
        line = (f"{w:>8}: {r['share']:7.2%} of readings ({r['per_s']:,.0f}/s), late {r['late_share']:.2%} "
                f"(missed {r['missed']}), lateness p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms, "
                f"CPU {r['cpu_us']:.1f} us/reading = {r['cpu_us'] / bare:.2f}x the bare loop")
        if w == "1x1000":
            total, off = off_grid(tmp, hz)
            line += f", requested off the grid: {off} of {total}"
        print(line)
    elif w == "max":
        for n in (1, 4):
            r = trio.run(run_agent, tmp / str(n), n, 200_000.0 / n, min(args.seconds, 5.0))
            print(f"     max: {n} collector(s) asked for 200 kHz in all: {r['per_s']:,.0f} readings/s "
                  f"({r['cpu_share']:.0%} of a core; bare loop {1e6 / bare:,.0f}/s, "
                  f"ratio {r['per_s'] * bare / 1e6:.2f})")
    elif w == "idle":
        r = measure_idle(tmp, max(args.seconds, 10.0))
        print(f"    idle: 10 collectors at 1 Hz: {r['cpu_share']:.2%} CPU, {r['rss_mb']:.0f} MB RSS")
    elif w == "sim":
        r = measure_sim(tmp, args.sim_hours, args.sim_sync_mins)
        print(f"     sim: {args.sim_hours:g} h of 10 collectors at 1 Hz, synced every {args.sim_sync_mins:g} min: "
              f"{r['real_s']:.1f} s real time, then {r['check_s']:.1f} s to account for every reading "
              f"({r['captured']:,} readings, {r['committed']:,} committed, lost {r['lost']}, "
              f"duplicated {r['duplicated']})")


if __name__ == "__main__":
    main()
