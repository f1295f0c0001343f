"""The data browser page: served offline by the cloud, and driven in a real headless Chromium.

The Chromium test starts the real cloud (`capsync.cloud.server.serve` on port 0), syncs capture files of
fake sensor, arm, camera and vision (detections) resources into it with the agent's own uploader,
then drives Debian's /usr/bin/chromium through playwright-core (tests/browser/drive.mjs). Both are
installed by scripts/test when missing; where they cannot be, the test skips and says which.
"""

from __future__ import annotations

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
from capsync.runtime.resources.registry import Binary, build_resource
from capsync.runtime.sync_files import SyncFile
from capsync.runtime.sync_protocol import FileKind
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


async def test_the_page_in_headless_chromium_filters_charts_and_shows_images(tmp_path: Path) -> None:
    missing = _browser_missing()
    if missing:
        pytest.skip(f"headless browser test: {missing}")
    store = SqliteStore(tmp_path / "cloud" / DB_NAME, scrypt_n=TEST_SCRYPT_N)
    store.add_part_sync(PART_A, SECRET_A)
    store.add_part_sync(PART_B, "secret-b")
    counts = await trio.to_thread.run_sync(capture_fake_robot, tmp_path / "capture", PART_A,
                                           time.time_ns() - 600 * 10**9)
    await trio.to_thread.run_sync(capture_fake_robot, tmp_path / "capture-b", PART_B, time.time_ns() - 900 * 10**9)
    shots = {"tabular": tmp_path / "browser-readings.png", "gallery": tmp_path / "browser-gallery.png"}
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve(
            tmp_path / "cloud", "127.0.0.1", 0, store=store, retention_interval_s=float("inf"), task_status=task_status))
        url = f"http://127.0.0.1:{port}"
        assert await sync_dir(url, PART_A, SECRET_A, tmp_path / "capture") == 6
        assert await sync_dir(url, PART_B, "secret-b", tmp_path / "capture-b") == 6
        config = tmp_path / "drive.json"
        config.write_text(json.dumps({
            "url": url, "part": PART_A, "secret": SECRET_A, "imageResource": "detector",
            "filter": {"resource_type": "sensor", "resource_name": "env", "method": "Readings"},
            "screenshots": {k: str(v) for k, v in shots.items()}, "downloadPath": str(tmp_path / "download.jpg"),
        }))
        with trio.fail_after(90):
            proc = await trio.run_process(["node", str(BROWSER_DIR / "drive.mjs"), str(config)], cwd=BROWSER_DIR,
                                          capture_stdout=True, capture_stderr=True, check=False)
        nursery.cancel_scope.cancel()
    await store.aclose()
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert out["errors"] == [], out
    assert len(out["console"]) == 1 and "401" in out["console"][0], out  # only the deliberately wrong secret
    assert out["wrongSecretMessage"] == "unknown part or wrong secret"
    assert out["partsRows"] == 5  # env, arm1 x2, cam, detector: part A's capture methods only
    assert "part-b" not in out["partsText"]
    # the filter to one resource: exactly its rows (two files), and a chart of its numeric fields
    assert out["rowCount"] == counts["sensor/env/Readings"] == 40
    assert out["tableRows"] == 40 and out["resourcesInTable"] == ["sensor/env"]
    assert out["chart"]["series"] >= 4 and out["chart"]["points"] == 40 * out["chart"]["series"]
    assert out["chart"]["coloredPixels"] > 500, out["chart"]
    assert any("temperature" in item for item in out["legend"]), out["legend"]
    # the vision service's images with their detections drawn
    assert out["binaryCount"] == 3 and len(out["thumbnails"]) == 3
    assert all(t["width"] == 320 and t["height"] == 240 for t in out["thumbnails"])
    assert sum(t["detections"] for t in out["thumbnails"]) == out["detectionLines"] > 0
    assert re.fullmatch(r"detector_CaptureAllFromCamera_.+-0\.jpg", out["downloadName"])
    assert (tmp_path / "download.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # the JPEG itself
    assert out["sqlCount"] == sum(v for k, v in counts.items() if k.split("/")[0] in ("sensor", "arm"))
    for shot in shots.values():
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


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
