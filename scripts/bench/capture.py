#!/usr/bin/env python3
"""Capture benchmark: many collectors at a high rate, against a bare loop measured in the same run.

    .venv/bin/python scripts/bench/capture.py [--collectors 100] [--hz 100] [--seconds 10]

Prints readings/s achieved, the share of late ticks, p50/p99 tick lateness, CPU seconds per
1000 readings for the agent, the same CPU figure for a bare loop (call the fake resource, build
the record, append to a capture file: no actors, no scheduling) and the ratio of the two.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from capsync.actors.agent import Agent  # noqa: E402
from capsync.runtime.capture_file import CaptureHeader, CaptureRecord, CaptureWriter, new_file_id  # noqa: E402
from capsync.runtime.config import parse_config  # noqa: E402
from capsync.runtime.faults import FaultPlan  # noqa: E402
from capsync.runtime.resources.methods import DataKind  # noqa: E402
from capsync.runtime.resources.registry import ResourceRegistry, build_resource  # noqa: E402


def bench_config(capture_dir: Path, collectors: int, hz: float) -> str:
    """A config with `collectors` fake sensors capturing Readings at `hz`."""
    comps = [
        {
            "name": f"s{i}", "type": "sensor", "model": "fake", "attributes": {},
            "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": [
                {"method": "Readings", "capture_frequency_hz": hz}]}}],
        }
        for i in range(collectors)
    ]
    dm = {"name": "dm", "type": "data_manager", "attributes": {"capture_dir": str(capture_dir)}}
    return json.dumps({"components": comps, "services": [dm], "cloud": {"id": "bench"}})


async def run_agent(capture_dir: Path, collectors: int, hz: float, seconds: float, faults: FaultPlan | None) -> dict:
    agent = Agent(parse_config(bench_config(capture_dir, collectors, hz)), control=False, faults=faults)
    samples: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        for c in agent.collectors.values():
            c.lateness_samples = samples
        cpu0, t0 = time.process_time(), time.perf_counter()
        await trio.sleep(seconds)
        cpu1, t1 = time.process_time(), time.perf_counter()
        stats = agent.statistics()
        nursery.cancel_scope.cancel()
    captured = stats.captured
    late = sum(c.late_ticks for c in stats.collectors)
    missed = sum(c.missed_ticks for c in stats.collectors)
    ticks = len(samples) + missed
    q = statistics.quantiles(samples, n=100) if len(samples) > 1 else [0.0] * 99
    return {
        "readings": captured,
        "readings_per_s": captured / (t1 - t0),
        "target_per_s": collectors * hz,
        "late_share": (late + missed) / ticks if ticks else 0.0,
        "missed": missed,
        "p50_ms": q[49] * 1e3,
        "p99_ms": q[98] * 1e3,
        "cpu_per_1000": (cpu1 - cpu0) / captured * 1000 if captured else float("nan"),
    }


async def run_bare(capture_dir: Path, readings: int) -> float:
    """CPU seconds per 1000 readings for: call the fake sensor, build a record, append it."""
    registry = ResourceRegistry()
    sensor = build_resource("sensor", "bare", "fake", {}, registry)
    header = CaptureHeader(new_file_id(), "bench", "sensor", "bare", "Readings", {}, (), DataKind.TABULAR)
    writer = CaptureWriter.create(capture_dir, header, fsync_interval_s=1.0)
    cpu0 = time.process_time()
    for _ in range(readings):
        payload = await sensor.capture("Readings", {})
        now = time.time_ns()
        writer.append(CaptureRecord(now, now, payload))
        if writer.size_bytes >= 64 * 1024:
            writer.finish()
            header = CaptureHeader(new_file_id(), "bench", "sensor", "bare", "Readings", {}, (), DataKind.TABULAR)
            writer = CaptureWriter.create(capture_dir, header, fsync_interval_s=1.0)
    cpu = time.process_time() - cpu0
    writer.finish()
    return cpu / readings * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collectors", type=int, default=100)
    p.add_argument("--hz", type=float, default=100.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fault-overhead", action="store_true",
                   help="also run with an empty fault plan (every injection point checked, none firing)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = trio.run(run_agent, Path(tmp) / "agent", args.collectors, args.hz, args.seconds, None)
        bare = trio.run(run_bare, Path(tmp) / "bare", max(20_000, r["readings"] // 5))
        with_plan = None
        if args.fault_overhead:
            with_plan = trio.run(run_agent, Path(tmp) / "faults", args.collectors, args.hz, args.seconds, FaultPlan())
    print(f"collectors x rate        {args.collectors} x {args.hz:g} Hz for {args.seconds:g} s")
    print(f"readings/s achieved      {r['readings_per_s']:.0f} of {r['target_per_s']:.0f} "
          f"({r['readings_per_s'] / r['target_per_s']:.1%})")
    print(f"late ticks               {r['late_share']:.2%} (missed entirely: {r['missed']})")
    print(f"tick lateness p50 / p99  {r['p50_ms']:.2f} ms / {r['p99_ms']:.2f} ms")
    print(f"CPU s per 1000 readings  agent {r['cpu_per_1000']:.4f}  bare loop {bare:.4f}  "
          f"ratio {r['cpu_per_1000'] / bare:.2f}x")
    if with_plan is not None:
        print(f"with an empty fault plan    agent {with_plan['cpu_per_1000']:.4f} CPU s per 1000 readings "
              f"({with_plan['cpu_per_1000'] / r['cpu_per_1000']:.2f}x of no plan; no plan is one attribute check)")


if __name__ == "__main__":
    main()
