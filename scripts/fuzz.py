#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris/libFuzzer) of every decoder that faces the network.

    .venv/bin/pip install -e '.[fuzz]'      # atheris, once
    .venv/bin/python scripts/fuzz.py --target all --seconds 120
    .venv/bin/python scripts/fuzz.py --target capture_reader --runs 100000 --crash-dir /tmp/crashes

The targets are those of tests/test_fuzz_decoders.py (defined once, in tests/fuzz_targets.py):
rpc_decode, resource_dispatch, remote_reply, sync_protocol, capture_reader. Each runs in its own
process, seeded with valid inputs, with capsync's modules instrumented for coverage. A finding is
an input for which the target raised something other than its documented refusal, or took longer
than --slow-ms; findings do not stop the run. Each distinct one (exception type and place) is
printed once with its traceback and its input saved under --crash-dir. At the end a table gives,
per target: inputs tried, coverage reached, findings (distinct / total) and slow inputs.

Exit code 0 when no target found anything, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_NAMES = ("rpc_decode", "resource_dispatch", "remote_reply", "sync_protocol", "capture_reader")


def _signature(exc: BaseException) -> str:
    """Exception type and the innermost frame of our own code: one finding, however many inputs hit it."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/capsync/" in f.filename or "/work/" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"{type(exc).__name__} at {where}"


def worker(name: str, seconds: float, runs: int, stats_path: Path, crash_dir: Path, slow_ms: float) -> None:
    """Fuzz one target in this process (never returns: libFuzzer exits when done)."""
    import logging

    import atheris

    logging.disable(logging.CRITICAL)  # the targets log refusals; millions of lines help nobody
    with atheris.instrument_imports(include=["capsync", "tests"]):
        from tests.fuzz_targets import TARGETS
    check, seeds = TARGETS[name]
    corpus = Path(tempfile.mkdtemp(prefix=f"capsync-fuzz-{name}-"))
    for i, seed in enumerate(seeds()):
        (corpus / f"seed{i}").write_bytes(seed)
    stats = {"target": name, "inputs": 0, "findings": 0, "distinct": {}, "slow": 0, "slowest_ms": 0.0}
    last_write = [0.0]

    def save() -> None:
        tmp = stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats))
        os.replace(tmp, stats_path)
        last_write[0] = time.monotonic()

    def one_input(data: bytes) -> None:
        stats["inputs"] += 1
        t0 = time.perf_counter()
        try:
            check(data)
        except Exception as exc:  # a finding: note it and go on fuzzing
            sig = _signature(exc)
            stats["findings"] += 1
            if sig not in stats["distinct"]:
                crash_dir.mkdir(parents=True, exist_ok=True)
                path = crash_dir / f"{name}-{hashlib.sha1(data).hexdigest()[:16]}"
                path.write_bytes(data)
                stats["distinct"][sig] = {"input": str(path), "traceback": traceback.format_exc(limit=8)}
                save()
        ms = (time.perf_counter() - t0) * 1000
        stats["slowest_ms"] = max(stats["slowest_ms"], ms)
        if ms > slow_ms:
            stats["slow"] += 1
            crash_dir.mkdir(parents=True, exist_ok=True)
            (crash_dir / f"{name}-slow-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)
        if time.monotonic() - last_write[0] > 0.5:
            save()

    save()
    args = [sys.argv[0], str(corpus), f"-max_total_time={int(max(1, seconds))}", "-max_len=16384",
            "-rss_limit_mb=3072", "-timeout=30", "-print_final_stats=1"]
    if runs:
        args.append(f"-runs={runs}")
    import atexit
    atexit.register(save)
    atheris.Setup(args, one_input)
    atheris.Fuzz()


def _coverage(log_text: str) -> str:
    """The last `cov:` figure libFuzzer printed (edges of instrumented code reached)."""
    for line in reversed(log_text.splitlines()):
        if " cov: " in line:
            return line.split(" cov: ", 1)[1].split()[0]
    return "?"


def run_target(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    """Fuzz one target in a child process; its statistics."""
    stats_path = workdir / f"{name}.json"
    log_path = workdir / f"{name}.log"
    cmd = [sys.executable, __file__, "--worker", name, "--seconds", str(args.seconds), "--runs", str(args.runs),
           "--stats", str(stats_path), "--crash-dir", str(args.crash_dir), "--slow-ms", str(args.slow_ms)]
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    elapsed = time.monotonic() - t0
    text = log_path.read_text(errors="replace")
    try:
        stats = json.loads(stats_path.read_text())
    except (OSError, ValueError):
        stats = {"target": name, "inputs": 0, "findings": 0, "distinct": {}, "slow": 0, "slowest_ms": 0.0}
    stats["seconds"] = elapsed
    stats["coverage"] = _coverage(text)
    stats["exit"] = proc.returncode
    if proc.returncode not in (0,) and not stats["distinct"]:  # libFuzzer itself stopped: a hang, OOM or crash
        stats["distinct"][f"fuzzer exit {proc.returncode}"] = {"input": str(log_path), "traceback": text[-3000:]}
        stats["findings"] += 1
    return stats


def main() -> int:
    """Parse arguments, fuzz each chosen target, print findings and the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="all", help=f"one of {', '.join(TARGET_NAMES)}, or all")
    p.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz each target")
    p.add_argument("--runs", type=int, default=0, help="stop each target after this many inputs (0: no limit)")
    p.add_argument("--crash-dir", type=Path, default=Path(tempfile.gettempdir()) / "capsync-fuzz-findings",
                   help="where inputs of findings are saved")
    p.add_argument("--slow-ms", type=float, default=1000.0, help="an input taking longer than this is a finding")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.seconds, args.runs, args.stats, args.crash_dir, args.slow_ms)
        return 0
    names = TARGET_NAMES if args.target == "all" else (args.target,)
    if any(n not in TARGET_NAMES for n in names):
        p.error(f"--target must be one of {', '.join(TARGET_NAMES)} or all")
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("scripts/fuzz.py needs atheris: .venv/bin/pip install -e '.[fuzz]'", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="capsync-fuzz-run-") as d:
        for name in names:
            print(f"fuzzing {name} for {args.seconds:g} s ...", flush=True)
            s = run_target(name, args, Path(d))
            results.append(s)
            for sig, f in s["distinct"].items():
                print(f"\n  FINDING in {name}: {sig}\n  input: {f['input']}\n" +
                      "\n".join("    " + line for line in f["traceback"].splitlines()), flush=True)
    print(f"\n{'target':<18} {'seconds':>8} {'inputs':>10} {'inputs/s':>9} {'coverage':>9} "
          f"{'findings':>9} {'distinct':>9} {'slow':>5} {'slowest ms':>11}")
    for s in results:
        rate = s["inputs"] / s["seconds"] if s["seconds"] else 0
        print(f"{s['target']:<18} {s['seconds']:>8.0f} {s['inputs']:>10} {rate:>9.0f} {s['coverage']:>9} "
              f"{s['findings']:>9} {len(s['distinct']):>9} {s['slow']:>5} {s['slowest_ms']:>11.1f}")
    return 1 if any(s["findings"] or s["slow"] for s in results) else 0


if __name__ == "__main__":
    sys.exit(main())
