"""The data browser page: served offline by the cloud, and driven in a real headless Chromium.

The Chromium test starts the real cloud (`capsync.cloud.server.serve` on port 0), syncs capture files of
fake sensor, arm, camera and vision (detections) resources into it with the agent's own uploader, adds a
day of board Analogs (A1, A2), IMU and `system` readings straight through the store (tests/bulk_data.py),
then drives Debian's /usr/bin/chromium through playwright-core (tests/browser/drive.mjs). Both are
installed by scripts/test when missing; where they cannot be, the test skips and says which.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from capsync.actors.uploader import upload_file
from capsync.cloud.app import DB_NAME
from capsync.cloud.browser import STATIC_DIR
from capsync.cloud.server import serve
from capsync.cloud.sqlite_store import SqliteStore
from capsync.runtime.capture_file import CaptureHeader, CaptureRecord, CaptureWriter, new_file_id
from capsync.runtime.cloud_client import CloudClient
from capsync.runtime.resources.registry import build_resource
from capsync.runtime.resources.resource import Binary
from capsync.runtime.sync_files import SyncFile
from capsync.runtime.sync_protocol import FileKind
from tests.bulk_data import commit_all, every, reading_files
from tests.test_cloud_support import PART_A, PART_B, SECRET_A, TEST_SCRYPT_N, CloudEnv, env, upload  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
#: What the fake robot captures: (type, name, method, params, files, records per file).
PLAN = [
    ("sensor", "env", "Readings", {}, 2, 20),
    ("arm", "arm1", "JointPositions", {}, 1, 15),
    ("arm", "arm1", "EndPosition", {}, 1, 15),
    ("camera", "cam", "ReadImage", {"mime_type": "image/jpeg"}, 1, 2),
    ("vision", "detector", "CaptureAllFromCamera", {"camera_name": "cam", "mime_type": "image/jpeg"}, 1, 3),
]


class _Lookup:
    def __init__(self) -> None:
        self.resources: dict = {}

    def get(self, name: str):
        return self.resources[name]


def capture_fake_robot(capture_dir: Path, part_id: str, t0_ns: int) -> dict[str, int]:
    """Capture PLAN from fake resources (virtual time, 100 ms apart) into capture files; records per method."""
    counts: dict[str, int] = {}

    async def run() -> None:
        lookup = _Lookup()
        for type_, name, attrs in [("sensor", "env", {}), ("arm", "arm1", {}), ("camera", "cam", {"width": 160}),
                                   ("vision", "detector", {"camera_name": "cam"})]:
            lookup.resources[name] = build_resource(type_, name, "fake", attrs, lookup)
        t = t0_ns
        for type_, name, method, params, files, per_file in PLAN:
            for _ in range(files):
                writer = None
                for _ in range(per_file):
                    await trio.sleep(0.1)
                    t += 100_000_000
                    result = await lookup.get(name).capture(method, dict(params))
                    binary = isinstance(result, Binary)
                    if writer is None:
                        header = CaptureHeader(new_file_id(), part_id, type_, name, method, params, ("site:lab",),
                                               "binary" if binary else "tabular",
                                               mime_type=result.mime_type if binary else "")
                        writer = CaptureWriter.create(capture_dir, header)
                    payload = result.data if binary else result
                    writer.append(CaptureRecord(t, t + 2_000_000, payload, result.metadata if binary else None))
                    counts[f"{type_}/{name}/{method}"] = counts.get(f"{type_}/{name}/{method}", 0) + 1
                writer.finish()

    trio.run(run, clock=MockClock(autojump_threshold=0))
    return counts


async def sync_dir(url: str, part_id: str, secret: str, capture_dir: Path) -> int:
    """Upload every capture file under `capture_dir` with the agent's uploader; returns the files synced."""
    client = CloudClient(url, part_id, secret)
    n = 0
    try:
        for path in sorted(capture_dir.rglob("*.capture")):
            st = path.stat()
            await upload_file(client, SyncFile(path, capture_dir, FileKind.CAPTURE, st.st_size, st.st_mtime_ns))
            n += 1
    finally:
        await client.aclose()
    return n


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is not installed (scripts/test installs Debian's chromium when run as root with apt)"
    if shutil.which("node") is None:
        return "node is not installed"
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").exists():
        return "playwright-core is not installed in tests/browser (scripts/test runs npm install there)"
    return None


S = 10**9
DAY = 86_400 * S
GAP = (10 * 3600 * S, 12 * 3600 * S)  # A1 and A2 send nothing from 12 h to 10 h ago


def _system_payload(i: int, t: int) -> dict:
    """What a `system` sensor reports: many fields and one long string, JSON too wide for a cell."""
    return {"cpu": {f"core{k}": (i * (k + 1)) % 100 for k in range(16)}, "load": [i % 3, 0.5, 0.25],
            "memory": {"used": 1000 + i % 50, "total": 4096}, "cmdline": "capsync run robot.json " + "--flag " * 400}


async def _a_day_of_data(store: SqliteStore, now_ns: int) -> dict:
    """A day up to `now_ns`: board Analogs A1 and A2 at 1 Hz (same method, other params; a 2 h gap),
    an IMU at 100 Hz for the last 15 minutes, a `system` sensor every 10 s. Written straight
    through the store's commit API (tests/bulk_data.py)."""
    start = now_ns - DAY
    analog_times = [t for t in every(start, now_ns, 1) if not now_ns - GAP[1] <= t < now_ns - GAP[0]]
    data = {}
    for reader, fn in (("A1", lambda i, t: {"value": i % 997}), ("A2", lambda i, t: {"value": 2000 + i % 500})):
        rows = await commit_all(store, reading_files(PART_A, ("board", "b1", "Analogs"), analog_times, fn,
                                                     params={"reader_name": reader}, per_file=6000))
        data[reader] = rows
    data["imu"] = await commit_all(store, reading_files(PART_A, ("sensor", "imu", "Readings"),
                                                        every(now_ns - 900 * S, now_ns - S, 100),
                                                        lambda i, t: {"ax": (i % 200) / 100, "ay": -1.0, "az": 9.81}))
    data["system"] = await commit_all(store, reading_files(PART_A, ("sensor", "system", "Readings"),
                                                           every(start, now_ns, 0.1), _system_payload, per_file=500))
    data["analog_times"] = analog_times
    data["newest"] = max(analog_times[-1], every(now_ns - 900 * S, now_ns - S, 100)[-1], every(start, now_ns, 0.1)[-1])
    return data


@pytest.fixture
def browser_ready() -> None:
    """Skips, saying what is missing, where the headless browser cannot run (a sync fixture, so that
    pytest reports the reason)."""
    missing = _browser_missing()
    if missing:
        pytest.skip(f"headless browser test: {missing}")


async def test_the_page_in_headless_chromium_on_a_day_of_data(tmp_path: Path, browser_ready: None) -> None:
    """The acceptance of issue 16 (items 1-5): newest data by default and live, a chart from the aggregates
    of a whole day checked against the data, A1 and A2 apart, no horizontal overflow at 1,400 and 1,024 px
    with the `system` sensor's wide JSON, a query's CSV, local time; images with detections drawn."""
    store = SqliteStore(tmp_path / "cloud" / DB_NAME, scrypt_n=TEST_SCRYPT_N)
    store.add_part_sync(PART_A, SECRET_A)
    store.add_part_sync(PART_B, "secret-b")
    now_ns = time.time_ns()
    counts = await trio.to_thread.run_sync(capture_fake_robot, tmp_path / "capture", PART_A, now_ns - 600 * S)
    await trio.to_thread.run_sync(capture_fake_robot, tmp_path / "capture-b", PART_B, now_ns - 900 * S)
    data = await _a_day_of_data(store, now_ns)
    shots = {name: tmp_path / f"browser-{name}.png" for name in ("newest", "day-1400", "wide-1400", "wide-1024", "gallery")}
    config = tmp_path / "drive.json"
    loaded, live_value = tmp_path / "loaded", 123456.5
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve(
            tmp_path / "cloud", "127.0.0.1", 0, store=store, retention_interval_s=float("inf"), task_status=task_status))
        url = f"http://127.0.0.1:{port}"
        assert await sync_dir(url, PART_A, SECRET_A, tmp_path / "capture") == 6
        assert await sync_dir(url, PART_B, "secret-b", tmp_path / "capture-b") == 6
        config.write_text(json.dumps({
            "url": url, "part": PART_A, "secret": SECRET_A, "imageResource": "detector", "timezone": "Asia/Kolkata",
            "loadedPath": str(loaded), "liveValue": live_value,
            "screenshots": {k: str(v) for k, v in shots.items()}, "downloadPath": str(tmp_path / "download.jpg"),
            "queryCsvPath": str(tmp_path / "query.csv"), "readingsCsvPath": str(tmp_path / "readings.csv"),
        }))
        async with trio.open_nursery() as inner:
            result: dict = {}

            async def drive() -> None:
                result["proc"] = await trio.run_process(["node", str(BROWSER_DIR / "drive.mjs"), str(config)],
                                                        cwd=BROWSER_DIR, capture_stdout=True, capture_stderr=True, check=False)

            inner.start_soon(drive)
            with trio.fail_after(120):
                while not loaded.exists() and "proc" not in result:
                    await trio.sleep(0.05)
                if loaded.exists():  # the page shows the newest data: a new reading must appear by itself
                    t = time.time_ns()
                    await commit_all(store, reading_files(PART_A, ("sensor", "imu", "Readings"), [t],
                                                          lambda i, _: {"ax": live_value, "ay": 0, "az": 0}))
        proc = result["proc"]
        nursery.cancel_scope.cancel()
    sql_counts = {}
    for name, n in ((r["resource_name"], r["items"]) for r in (await _summary(store))):
        sql_counts[name] = sql_counts.get(name, 0) + n
    await store.aclose()
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert out["errors"] == [], out
    assert len(out["console"]) == 1 and "401" in out["console"][0], out  # only the deliberately wrong secret
    assert out["wrongSecretMessage"] == "unknown part or wrong secret"
    assert out["partsRows"] == 8 and "part-b" not in out["partsText"]  # part A's capture methods only

    # 1. newest data by default: the last hour, newest reading first, and a live refresh
    assert out["newest"]["firstCell"] == _utc_text(data["newest"]), out["newest"]
    assert out["newest"]["live"] is True and out["newest"]["rows"] == 500
    assert out["liveSeen"] is True  # the reading committed after the page loaded showed up without a click

    # 2. the chart of a whole day of A1/A2 is built from aggregates, checked against the data
    agg = out["day"]["aggregate"]
    t0, t1 = agg["start_ns"], agg["end_ns"]
    in_window = [t for t in data["analog_times"] if t0 <= t < t1]
    assert t1 - t0 == DAY and len(in_window) > 75_000
    by_reader = {s["params"]["reader_name"]: s["fields"][0] for s in agg["series"]}
    assert set(by_reader) == {"A1", "A2"}  # 3. kept apart by params
    for reader in ("A1", "A2"):
        assert sum(by_reader[reader]["count"]) == len(in_window)
    idx = {t: i for i, t in enumerate(data["analog_times"])}
    a1_values = [idx[t] % 997 for t in in_window]
    assert (min(by_reader["A1"]["min"]), max(by_reader["A1"]["max"])) == (min(a1_values), max(a1_values))
    gap_buckets = [b for b in range(agg["buckets"])
                   if t0 + (b + 1) * agg["bucket_ns"] <= now_ns - GAP[0] and t0 + b * agg["bucket_ns"] >= now_ns - GAP[1]]
    assert gap_buckets and not set(gap_buckets) & set(by_reader["A1"]["bucket"])  # the gap has no buckets
    assert out["day"]["chart"]["series"] == 2 and out["day"]["chart"]["gaps"] == 2
    assert out["day"]["chart"]["points"] == sum(len(f["bucket"]) for f in by_reader.values())
    assert out["day"]["chart"]["coloredPixels"] > 500
    assert sorted(out["day"]["legend"]) == ["b1[A1].value (0 … 996)", "b1[A2].value (2000 … 2499)"]
    assert out["allSeries"]["hidden"] > 0 and "hidden" in out["allSeries"]["note"]  # past 12 series: said so

    # 4. layout at 1,400 and 1,024 px with the system sensor's wide JSON
    for width in ("1400", "1024"):
        lay = out["layout"][width]
        assert lay["scrollWidth"] <= lay["innerWidth"] == int(width), lay
        assert 0 <= lay["applyRight"] <= lay["innerWidth"] and lay["jsonCells"] > 0, lay

    # 5. CSV of a query and of the loaded rows; local time as well as UTC
    query_rows = list(csv.reader((tmp_path / "query.csv").open()))
    assert query_rows[0] == ["resource_name", "n"]
    assert {name: int(n) for name, n in query_rows[1:]} == sql_counts  # env, arm1, b1, imu, system
    readings_csv = list(csv.reader((tmp_path / "readings.csv").open()))
    assert readings_csv[0][:2] == ["requested (UTC)", "requested (local)"] and len(readings_csv) > 1
    assert out["local"]["firstCell"].endswith("+05:30") and out["local"]["zoneLabel"] == "local"

    # the vision service's images with their detections drawn, as before
    assert out["binaryCount"] == 3 and len(out["thumbnails"]) == 3
    assert all(t["width"] == 320 and t["height"] == 240 for t in out["thumbnails"])
    assert sum(t["detections"] for t in out["thumbnails"]) == out["detectionLines"] > 0
    assert re.fullmatch(r"detector_CaptureAllFromCamera_.+-2\.jpg", out["downloadName"])  # the newest first
    assert (tmp_path / "download.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # the JPEG itself
    assert counts["vision/detector/CaptureAllFromCamera"] == 3
    for shot in shots.values():
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


async def _summary(store: SqliteStore) -> list[dict]:
    return [{"resource_name": r.resource_name, "items": r.items} for r in await store.summary(PART_A)
            if r.data_kind == "tabular"]


def _utc_text(ns: int) -> str:
    """A time as the page shows it in UTC: `YYYY-MM-DD HH:MM:SS.mmm UTC`."""
    from datetime import datetime, timezone

    d = datetime.fromtimestamp(ns // 10**6 / 1000, timezone.utc)
    return d.strftime("%Y-%m-%d %H:%M:%S.") + f"{(ns // 10**6) % 1000:03d} UTC"


async def test_the_page_and_its_files_are_served_without_auth_and_work_offline(env: CloudEnv) -> None:
    async with env.client(anonymous=True) as c:
        r = await c.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        scripts = re.findall(r'src="([^"]+)"', r.text) + re.findall(r'href="(/static/[^"]+)"', r.text)
        assert len(scripts) == len([p for p in STATIC_DIR.iterdir() if p.name != "index.html"])  # every file is used
        for path in scripts:
            s = await c.get(path)
            assert s.status_code == 200 and s.headers["cache-control"] == "no-cache", path
        assert (await c.get("/static/../cloud.sqlite")).status_code == 404
        assert (await c.get("/static/nothing.js")).json()["error"] == "not found"
    for f in STATIC_DIR.iterdir():  # no CDN, no external fonts: everything is served by the cloud itself
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", f.read_text()), f.name
        assert len(f.read_text().splitlines()) < 400, f.name


async def test_the_browser_header_gets_a_401_without_a_challenge(env: CloudEnv) -> None:
    async with env.client(PART_A, "wrong") as c:
        plain = await c.get("/v1/summary")
        quiet = await c.get("/v1/summary", headers={"X-Capsync-Browser": "1"})
    assert plain.status_code == quiet.status_code == 401
    assert "www-authenticate" in plain.headers and "www-authenticate" not in quiet.headers


async def test_summary_lists_each_capture_method_with_counts_and_time_range(env: CloudEnv, tmp_path: Path) -> None:
    from tests.test_cloud_support import binary_capture, tabular_capture

    async with env.client() as c:
        for k in range(2):
            fid, data = tabular_capture(tmp_path / f"t{k}", n=5, t0=1_000 + 100 * k, step=10, tags=("a", f"k{k}"))
            await upload(c, fid, data, chunk=4096)
        fid, data = binary_capture(tmp_path / "b", [b"i1", b"i2"])
        await upload(c, fid, data, chunk=4096)
        await upload(c, "plain-file-0001", b"hello", kind="file", name="logs/x.txt")
        body = (await c.get("/v1/summary")).json()
        assert (await c.get("/v1/summary", params={"x": 1})).status_code == 400
    async with env.client(PART_B) as b:
        assert (await b.get("/v1/summary")).json()["resources"] == []
    by = {(r["resource_type"], r["resource_name"], r["method"]): r for r in body["resources"]}
    assert body["part_id"] == PART_A and body["mql"] is False and len(by) == 3
    s = by[("sensor", "s1", "Readings")]
    assert (s["items"], s["files"], s["first_ns"], s["last_ns"], s["tags"]) == (10, 2, 1_000, 1_140, ["a", "k0", "k1"])
    assert s["first"] == "1970-01-01T00:00:00.000001000Z" and s["data_kind"] == "tabular"
    assert (by[("camera", "cam", "ReadImage")]["items"], by[("", "", "")]["items"]) == (2, 1)
