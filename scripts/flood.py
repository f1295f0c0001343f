#!/usr/bin/env python3
"""Issue 12's flood acceptance run: hostile traffic from one source must not hurt anyone else.

    .venv/bin/python scripts/flood.py [--seconds 20] [--flooders 4]

Starts `capsync cloud serve` with two parts and `capsync run` as part A (a fake sensor at 20 Hz
syncing to the cloud). Part B is a well-behaved second robot: it uploads a small file and commits
it, over and over, and the script times each upload. Two phases of `--seconds` each:

1. quiet: the baseline;
2. flood: `--flooders` processes send, as fast as they can, (a) requests with wrong secrets to
   the cloud from one source address, 127.0.0.2 (for part B's own id and for made-up ids) and (b) hostile CBOR messages to the
   agent's control endpoint (a self-referencing id, a shared-reference expansion bomb, garbage,
   oversized text), reconnecting whenever they are cut off.

It prints part B's upload latency (median, p95, max) and rate, and part A's late and missed
ticks, for each phase, plus what the flooders sent and how they were answered. Exits 1 if part A
missed a tick during the flood, an upload of part B failed, or the agent or cloud died.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from tests.processkit import ProcessKit, add_part, agent_config  # noqa: E402

PART_A, PART_B = "part-a", "part-b"
#: The address the wrong secrets come from (part B uploads from 127.0.0.1).
FLOOD_SOURCE = "127.0.0.2"
SELF_REFERENCE = bytes.fromhex("d81c81d81d00")


def expansion_bomb(levels: int = 23) -> bytes:
    """A call whose id expands to 2**levels copies through CBOR shared references (~150 bytes)."""
    import cbor2

    value: list = [0]
    for _ in range(levels):
        value = [value, value]
    return cbor2.dumps({"id": value, "method": "status", "params": {}}, value_sharing=True)


# --- the flooder (a process of its own, so its work does not share our GIL) ----------------------


def flood(cloud_url: str, control: str, seconds: float) -> None:
    """Send wrong secrets to the cloud and hostile messages to the agent for `seconds`; print counts as JSON."""
    import threading

    import trio
    from trio_websocket import open_websocket_url

    counts: Counter[str] = Counter()
    deadline = time.monotonic() + seconds

    def wrong_secrets() -> None:
        # One source, not the victim's: loopback answers from every 127.x address.
        transport = httpx.HTTPTransport(local_address=FLOOD_SOURCE)
        with httpx.Client(base_url=cloud_url, timeout=10, transport=transport) as http:
            i = 0
            while time.monotonic() < deadline:
                part = PART_B if i % 2 else f"made-up-{i}"
                i += 1
                try:
                    r = http.get("/v1/files", auth=(part, f"wrong-{i}"))
                    counts[f"cloud {r.status_code}"] += 1
                except httpx.HTTPError as exc:
                    counts[f"cloud {type(exc).__name__}"] += 1

    async def hostile_messages() -> None:
        messages = [SELF_REFERENCE, expansion_bomb(), os.urandom(64), b"\xff" * 32, "text, not binary"]
        i = 0
        while time.monotonic() < deadline:
            try:
                async with open_websocket_url(f"ws://{control}/control", connect_timeout=5) as ws:
                    for _ in range(50):
                        msg = messages[i % len(messages)]
                        i += 1
                        await ws.send_message(msg)
                        with trio.move_on_after(2):
                            await ws.get_message()
                        counts["agent answered"] += 1
            except Exception as exc:  # noqa: BLE001 - every way of being cut off is counted, and we go on
                counts[f"agent {type(exc).__name__}"] += 1
                await trio.sleep(0.01)

    thread = threading.Thread(target=wrong_secrets, daemon=True)
    thread.start()
    trio.run(hostile_messages)
    thread.join()
    print(json.dumps(dict(counts)))


# --- part B, the well-behaved robot ---------------------------------------------------------------


def upload_loop(url: str, secret: str, seconds: float, tag: str) -> tuple[list[float], int]:
    """Upload small plain files as part B for `seconds`; returns each upload's latency and the failures."""
    latencies, failures = [], 0
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, auth=(PART_B, secret), timeout=60) as http:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            data = os.urandom(10_000)
            file_id = hashlib.sha256(f"{tag}-{n}-{time.time_ns()}".encode()).hexdigest()[:26].upper()
            route = f"/v1/files/{file_id}"
            t = time.monotonic()
            try:
                r = http.post(route, json={"kind": "file", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                           "name": f"flood/{tag}-{n}.bin"})
                r.raise_for_status()
                http.put(route + "/data", params={"offset": 0}, content=data,
                         headers={"Content-Type": "application/octet-stream"}).raise_for_status()
                r = http.post(route + "/commit")
                r.raise_for_status()
                assert r.json()["state"] == "committed", r.text
                latencies.append(time.monotonic() - t)
            except (httpx.HTTPError, AssertionError) as exc:
                failures += 1
                print(f"  part B upload failed: {exc}", flush=True)
            time.sleep(0.05)
    return latencies, failures


def ticks(config: Path) -> tuple[int, int, int]:
    """Part A's (captured, late, missed) ticks so far, from `capsync status --json`."""
    out = subprocess.run([sys.executable, "-m", "capsync", "status", str(config), "--json"], capture_output=True,
                         text=True, timeout=30)
    status = json.loads(out.stdout)
    collectors = status["collectors"]
    return (sum(c["captured"] for c in collectors), sum(c["late_ticks"] for c in collectors),
            sum(c["missed_ticks"] for c in collectors))


def _row(name: str, lat: list[float], failures: int, seconds: float, a: tuple[int, int, int]) -> str:
    if not lat:
        return f"{name:7} no upload of part B succeeded ({failures} failed)"
    q = statistics.quantiles(lat, n=20) if len(lat) > 1 else [lat[0]] * 19
    return (f"{name:7} part B: {len(lat) / seconds:5.1f} uploads/s, latency median {1000 * statistics.median(lat):6.1f} ms"
            f" p95 {1000 * q[18]:6.1f} ms max {1000 * max(lat):6.1f} ms, {failures} failed | part A: {a[0]} readings,"
            f" {a[1]} late, {a[2]} missed")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--flooders", type=int, default=4)
    p.add_argument("--flooder", nargs=3, metavar=("CLOUD_URL", "CONTROL", "SECONDS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.flooder:
        flood(args.flooder[0], args.flooder[1], float(args.flooder[2]))
        return 0
    root = Path(tempfile.mkdtemp(prefix="capsync-flood-"))
    with ProcessKit(root) as kit:
        cloud = kit.start_cloud()
        secret_a, secret_b = add_part(cloud.data_dir, PART_A), add_part(cloud.data_dir, PART_B)
        config = agent_config(root, cloud.url, secret_a, sensor_hz=20, camera_hz=0, part_id=PART_A)
        agent = kit.start_agent(config)
        control = json.loads(config.read_text())["network"]["bind_address"]
        time.sleep(2)
        phases = {}
        for phase in ("quiet", "flood"):
            before = ticks(config)
            flooders = []
            if phase == "flood":
                flooders = [subprocess.Popen([sys.executable, __file__, "--flooder", cloud.url, control,
                                              str(args.seconds)], stdout=subprocess.PIPE, text=True)
                            for _ in range(args.flooders)]
            lat, failures = upload_loop(cloud.url, secret_b, args.seconds, phase)
            sent: Counter[str] = Counter()
            for f in flooders:
                out, _ = f.communicate(timeout=60)
                sent.update(json.loads(out.strip().splitlines()[-1]) if out.strip() else {"flooder died": 1})
            after = ticks(config)
            phases[phase] = (lat, failures, tuple(b - a for a, b in zip(before, after)), sent)
        alive = agent.alive() and cloud.alive()
    shutil.rmtree(root, ignore_errors=True)
    print(f"flood run: {args.seconds:.0f} s per phase, {args.flooders} flooder processes")
    for phase, (lat, failures, a, sent) in phases.items():
        print(_row(phase, lat, failures, args.seconds, a))
        if sent:
            print(f"        flooders sent: {', '.join(f'{k} x{v}' for k, v in sorted(sent.items()))}")
    lat, failures, a, _ = phases["flood"]
    ok = alive and failures == 0 and a[2] == 0 and lat
    print("PASS" if ok else f"FAIL (agent and cloud alive: {alive})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
