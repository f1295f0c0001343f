"""The export at volume (issue 16's acceptance): a real cloud process holding 1,000,000 readings and
1,000 images, `capsync cloud export` killed with SIGKILL twice (once in the readings, once in the
images) and run again until done; the result must match the cloud's own counts exactly.

    python scripts/export_soak.py [--readings 1000000] [--images 1000] [--keep DIR]

The readings are written straight through the store's commit API (tests/bulk_data.py: the rows
ingest makes of capture files) so that building the data set takes seconds, not a day of capture;
the images are uploaded as binary capture files over the sync protocol. Prints the export's rate,
its peak memory and each check. Exit 0 when everything matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from capsync.cloud.app import DB_NAME  # noqa: E402
from capsync.cloud.sqlite_store import SqliteStore  # noqa: E402
from tests.bulk_data import commit_all, every, reading_files, upload_images  # noqa: E402
from tests.processkit import CloudProcess  # noqa: E402

PART, SECRET = "export-part", "export-soak-secret"
S = 10**9
T0 = 1_700_000_000 * S


async def _readings(data_dir: Path, n: int) -> int:
    store = SqliteStore(data_dir / DB_NAME)
    store.add_part_sync(PART, SECRET)
    per = n // 2  # two resources at 100 Hz whose times interleave
    rows = 0
    for name, offset in (("imu", 0), ("encoder", 5_000_000)):
        rows += await commit_all(store, reading_files(
            PART, ("sensor", name, "Readings"), every(T0 + offset, T0 + offset + per * S // 100, 100),
            lambda i, t: {"ax": i * 0.001, "ay": -i, "az": 9.81}, per_file=6000), files_per_commit=20)
    await store.aclose()
    return rows


async def _images(url: str, work: Path, n: int) -> None:
    async with httpx.AsyncClient(base_url=url, auth=(PART, SECRET), timeout=60) as client:
        await upload_images(client, work, PART, n, per_file=50, size=4096)


def _export(url: str, out: Path, secret_file: Path, log: Path, kill_when=None) -> tuple[int | None, float, int]:
    """Run the export; SIGKILL it once `kill_when()` holds. Returns (exit code or None if killed,
    seconds, peak RSS bytes)."""
    argv = [sys.executable, "-m", "capsync", "cloud", "export", "--url", url, "--part", PART,
            "--secret-file", str(secret_file), "--out", str(out)]
    t0 = time.monotonic()
    with log.open("ab") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        ps, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                peak = max(peak, ps.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            if kill_when is not None and kill_when():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return None, time.monotonic() - t0, peak
            time.sleep(0.05)
    return proc.returncode, time.monotonic() - t0, peak


def _size(p: Path) -> int:
    return p.stat().st_size if p.exists() else 0


def main() -> int:
    """Build the data set, export with two kills, check; print the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp dir, removed)")
    args = ap.parse_args()
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="capsync-export-")
    work = args.keep or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    data_dir, out = work / "cloud", work / "export"
    t0 = time.monotonic()
    rows = trio.run(_readings, data_dir, args.readings)
    print(f"data set: {rows:,} readings committed in {time.monotonic() - t0:.1f} s", flush=True)
    cloud = CloudProcess(data_dir, work / "cloud.log")
    try:
        cloud.wait_listening()
        t0 = time.monotonic()
        trio.run(_images, cloud.url, work / "images", args.images)
        print(f"data set: {args.images:,} images uploaded in {time.monotonic() - t0:.1f} s", flush=True)
        summary = httpx.get(f"{cloud.url}/v1/summary", auth=(PART, SECRET), timeout=60).json()
        secret_file = work / "secret"
        secret_file.write_text(SECRET)
        log = work / "export.log"
        readings, index = out / "readings.jsonl", out / "binary.jsonl"
        half = 0.5 * rows * 150  # about half of the readings' lines
        runs = [_export(cloud.url, out, secret_file, log, lambda: _size(readings) > half),
                _export(cloud.url, out, secret_file, log, lambda: _size(index) > 0 and
                        len(index.read_bytes().splitlines()) >= args.images // 2),
                _export(cloud.url, out, secret_file, log)]
    finally:
        cloud.terminate()
    keys, payload_ok = set(), True
    lines = 0
    with readings.open("rb") as f:
        for raw in f:
            r = json.loads(raw)
            keys.add((r["file_id"], r["record_index"]))
            lines += 1
            payload_ok &= "ax" in r["payload"]
    listed = [json.loads(x)["id"] for x in index.read_bytes().splitlines()]
    saved = [p for p in (out / "files").rglob("*") if p.is_file()]
    cloud_rows = sum(m["items"] for m in summary["resources"] if m["data_kind"] == "tabular")
    cloud_items = sum(m["items"] for m in summary["resources"] if m["data_kind"] == "binary")
    seconds = sum(r[1] for r in runs)
    checks = {
        "first run killed in the readings": runs[0][0] is None,
        "second run killed in the images": runs[1][0] is None,
        "third run exits 0": runs[2][0] == 0,
        f"readings lines == committed ({lines:,} / {rows:,})": lines == rows,
        f"no reading twice ({len(keys):,} distinct)": len(keys) == lines,
        f"readings == the cloud's summary ({cloud_rows:,})": cloud_rows == rows,
        f"images listed == uploaded ({len(listed):,} / {args.images:,})": len(listed) == len(set(listed)) == args.images,
        f"image files == the cloud's summary ({len(saved):,} / {cloud_items:,})": len(saved) == cloud_items == args.images,
        "no partial files left": not any(p.suffix == ".part" for p in saved),
        "payloads intact": payload_ok,
    }
    print(f"export: {seconds:.1f} s over 3 runs (2 killed), {rows / seconds:,.0f} readings/s overall, "
          f"peak RSS {max(r[2] for r in runs) / 2**20:.0f} MiB, readings.jsonl {_size(readings) / 2**20:.0f} MiB")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
