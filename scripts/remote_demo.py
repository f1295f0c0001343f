#!/usr/bin/env python3
"""The remote-parts acceptance run at full length, on real processes and sockets, with the example configs.

    .venv/bin/python scripts/remote_demo.py [--seconds 50] [--outage-at 10] [--outage 20] [--keep DIR]

Starts `capsync cloud serve`, part B (`capsync run configs/remote-board.json`: a fake board and
camera served to other parts) and part A (`capsync run configs/remote-main.json`: captures B's
Analogs A1/A2 and Gpios 27 at 10 Hz and its camera at 1 Hz through `remotes`, plus its own
`system` sensor at 1 Hz, syncing to the cloud). Ports, capture dir, cloud URL and A's cloud secret
are rewritten into copies of the configs under a temporary dir (or `--keep DIR`). B is SIGKILLed
`--outage-at` seconds in and restarted `--outage` seconds later. Every second a status line shows
A's captures and failures per method and its link to B. At the end A syncs, stops, and the cloud's
rows are counted under B's resource names. Exits 1 unless: A ran throughout, B's methods counted
failures during the outage and captured again after it, A's own sensor never failed, and the
cloud holds B's data under B's names with `remote_part` in the file metadata.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

from capsync.runtime import rpc

ROOT = Path(__file__).resolve().parents[1]

BOARD = ("Analogs(reader_name=A1)", "Analogs(reader_name=A2)", "Gpios(pin_name=27)")
CAMERA = "ReadImage(mime_type=image/jpeg,reader_name=cam1)"


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capsync(*args: str, log: Path | None = None) -> subprocess.Popen:
    """`capsync ARGS` as a child process (its output to `log`)."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "capsync", *args], cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT)


def wait_port(port: int, timeout: float = 20) -> None:
    """Return once something accepts connections on loopback `port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout} s")


def status(address: str) -> dict | None:
    """Part A's status over its control endpoint, or None when it does not answer."""
    async def call() -> dict:
        async with rpc.connect(address, timeout_s=2) as client:
            return await client.call("status")
    try:
        return trio.run(call)
    except rpc.RpcError:
        return None


def sync_now(address: str) -> dict:
    """Make part A sync now; what the pass did."""
    async def call() -> dict:
        async with rpc.connect(address, timeout_s=5) as client:
            return await client.call("sync")
    return trio.run(call)


def by_method(st: dict) -> dict[str, dict]:
    """Collector stats keyed by method and params."""
    return {c["name"].split("/", 2)[-1]: c for c in st["collectors"]}


LABELS = dict(zip((*BOARD, CAMERA, "Readings"), ("A1", "A2", "pin27", "cam", "A's host"), strict=True))


def line(t0: float, st: dict) -> str:
    """One status line: the link to B, then captured/failed per method."""
    parts = [f"{LABELS.get(k, k)} {c['captured']}/{c['failed']}" for k, c in by_method(st).items()]
    return f"[{time.monotonic() - t0:5.1f} s] link to B {st['remotes'][0]['state']:<12} captured/failed: " + \
        "  ".join(parts)


def prepare(root: Path) -> tuple[dict, dict, int]:
    """Copies of the example configs pointed at free ports, `root` and a fresh cloud; A's cloud port."""
    board = json.loads((ROOT / "configs/remote-board.json").read_text())
    main = json.loads((ROOT / "configs/remote-main.json").read_text())
    b_port, a_port, cloud_port = free_port(), free_port(), free_port()
    board["network"]["bind_address"] = f"127.0.0.1:{b_port}"
    main["network"]["bind_address"] = f"127.0.0.1:{a_port}"
    main["remotes"][0]["address"] = f"127.0.0.1:{b_port}"
    main["services"][0]["attributes"]["capture_dir"] = str(root / "capture-a")
    main["services"][0]["attributes"]["sync_interval_mins"] = 0.05
    main["cloud"]["app_address"] = f"http://127.0.0.1:{cloud_port}"
    secret = subprocess.run([sys.executable, "-m", "capsync", "cloud", "add-part", "--data-dir", str(root / "cloud"),
                             main["cloud"]["id"]], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    main["cloud"]["secret"] = secret
    (root / "remote-board.json").write_text(json.dumps(board, indent=2))
    (root / "remote-main.json").write_text(json.dumps(main, indent=2))
    return board, main, cloud_port


def cloud_counts(url: str, part: str, secret: str) -> dict:
    """Rows per board method/param, camera images, and the remote_part of B's files in the cloud."""
    with httpx.Client(base_url=url, auth=(part, secret), timeout=10) as c:
        def pages(path: str, **params) -> list[dict]:
            out, cursor = [], None
            while True:
                q = dict(params, limit=1000, **({"cursor": cursor} if cursor else {}))
                body = c.get(path, params=q).raise_for_status().json()
                out += body["items"]
                if not (cursor := body["next_cursor"]):
                    return out
        rows = pages("/v1/tabular", resource_name="my-esp32")
        images = pages("/v1/binary", resource_name="cam")
        files = [f for f in pages("/v1/files") if f["resource_name"] in ("my-esp32", "cam")]
    per: dict[str, int] = {}
    for r in rows:
        key = f"{r['method']}({next(iter(r['params'].values()))})"
        per[key] = per.get(key, 0) + 1
    return {"board_rows": per, "images": len(images), "files": len(files),
            "remote_parts": sorted({f["metadata"].get("remote_part") for f in files})}


def run(root: Path, seconds: float, outage_at: float, outage: float) -> int:
    """One acceptance run under `root`; returns the exit code."""
    board, main, cloud_port = prepare(root)
    b_port = int(board["network"]["bind_address"].rsplit(":", 1)[1])
    a_addr = main["network"]["bind_address"]
    procs: list[subprocess.Popen] = []
    checks: dict[str, bool] = {}
    try:
        procs.append(capsync("cloud", "serve", "--data-dir", str(root / "cloud"), "--port", str(cloud_port),
                             log=root / "cloud.log"))
        b = capsync("run", str(root / "remote-board.json"), log=root / "part-b.log")
        procs.append(b)
        wait_port(cloud_port)
        wait_port(b_port)
        a = capsync("run", str(root / "remote-main.json"), log=root / "part-a.log")
        procs += [a]
        wait_port(int(a_addr.rsplit(":", 1)[1]))
        t0 = time.monotonic()
        killed_at = back_at = resumed_at = None
        before = during = None
        while (now := time.monotonic() - t0) < seconds:
            st = status(a_addr)
            if st is None or a.poll() is not None:
                print(f"part A stopped answering at {now:.1f} s")
                checks["A ran throughout"] = False
                break
            print(line(t0, st), flush=True)
            cols = by_method(st)
            if killed_at is None and now >= outage_at:
                before = cols
                b.send_signal(signal.SIGKILL)
                b.wait()
                killed_at = now
                print(f"[{now:5.1f} s] --- part B killed (SIGKILL) for {outage:g} s ---", flush=True)
            elif killed_at is not None and back_at is None and now >= killed_at + outage:
                during = cols
                b = capsync("run", str(root / "remote-board.json"), log=root / "part-b.log")
                procs.append(b)
                back_at = now
                print(f"[{now:5.1f} s] --- part B restarted ---", flush=True)
            elif back_at is not None and resumed_at is None and all(
                    cols[m]["captured"] > during[m]["captured"] for m in (*BOARD, CAMERA)):
                resumed_at = now
                print(f"[{now:5.1f} s] --- captures from B resumed {resumed_at - back_at:.1f} s after its restart "
                      f"(process start included) ---", flush=True)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0 - now)))
        checks.setdefault("A ran throughout", a.poll() is None)
        final = status(a_addr)
        result = sync_now(a_addr)
        print(f"final sync pass: {result['summary']}")
        a.send_signal(signal.SIGTERM)
        a.wait(timeout=20)
        if before and during and final:
            fails = {m: during[m]["failed"] - before[m]["failed"] for m in (*BOARD, CAMERA)}
            got = {m: during[m]["captured"] - before[m]["captured"] for m in (*BOARD, CAMERA)}
            print(f"during the {outage:g} s outage: failed {fails}, captured {got}")
            checks["failures counted during the outage"] = all(
                fails[m] >= 0.8 * 10 * outage for m in BOARD) and fails[CAMERA] >= 0.8 * outage
            checks["nothing captured from B while it was down"] = all(v <= 1 for v in got.values())
            local = by_method(final)["Readings"]
            checks["A's own sensor never failed"] = local["failed"] == 0 and local["captured"] >= seconds - 2
            link = final["remotes"][0]
            print(f"link to B: {link['connects']} connects, {link['disconnects']} disconnects, "
                  f"{link['calls']} calls ({link['failed_calls']} failed)")
        checks["captures resumed after B returned"] = resumed_at is not None
        counts = cloud_counts(main["cloud"]["app_address"], main["cloud"]["id"], main["cloud"]["secret"])
        print(f"cloud: {counts}")
        checks["cloud holds B's data under B's names"] = (
            set(counts["board_rows"]) == {"Analogs(A1)", "Analogs(A2)", "Gpios(27)"} and counts["images"] > 0
            and counts["remote_parts"] == [board["cloud"]["id"]])
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"logs and data: {root}")
    return 0 if checks and all(checks.values()) else 1


def main() -> int:
    """Parse the arguments and run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=50)
    p.add_argument("--outage-at", type=float, default=10)
    p.add_argument("--outage", type=float, default=20)
    p.add_argument("--keep", type=Path, help="put configs, logs and data here (kept) instead of a temp dir")
    args = p.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run(args.keep.resolve(), args.seconds, args.outage_at, args.outage)
    with tempfile.TemporaryDirectory(prefix="capsync-remote-demo-") as tmp:
        return run(Path(tmp), args.seconds, args.outage_at, args.outage)


if __name__ == "__main__":
    sys.exit(main())
