"""A real `capsync cloud serve` process under hostile requests, managed by the real CLI processes:
sandboxed uploaded pages, throttled wrong secrets, JSON-only queries, private files, disable and rotate."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.processkit import REPO, ProcessKit, add_part
from tests.test_cloud_support import declaration


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "capsync", "cloud", args[0], "--data-dir", str(data_dir), *args[1:]],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def _upload(c: httpx.Client, file_id: str, data: bytes, **extra) -> None:
    assert c.post(f"/v1/files/{file_id}", json=declaration(data, "file", **extra)).status_code == 200
    assert c.put(f"/v1/files/{file_id}/data", params={"offset": 0}, content=data).status_code == 200
    assert c.post(f"/v1/files/{file_id}/commit").status_code == 200


def test_the_served_cloud_refuses_hostile_requests_and_obeys_its_operator(tmp_path: Path) -> None:
    with ProcessKit(tmp_path) as kit:
        data_dir = tmp_path / "cloud"
        secret = add_part(data_dir, "robot-1")
        cloud = kit.start_cloud(data_dir)
        page = b"<script>steal()</script>"
        with httpx.Client(base_url=cloud.url, auth=("robot-1", secret), timeout=30) as c:
            _upload(c, "evilpage-0001", page, name="index.html", mime_type="text/html")
            r = c.get("/v1/binary/evilpage-0001-0")
            assert r.content == page and r.headers["content-disposition"] == "attachment"
            assert "sandbox" in r.headers["content-security-policy"] and r.headers["x-content-type-options"] == "nosniff"
            assert "frame-ancestors 'none'" in c.get("/static/index.html").headers["content-security-policy"]
            assert c.post("/v1/tabular/sql", content=b'{"query": "SELECT 1"}',
                          headers={"content-type": "text/plain"}).status_code == 415

            start = time.monotonic()
            statuses = [httpx.get(f"{cloud.url}/v1/files", auth=(f"nobody-{i}", "x"), timeout=30).status_code
                        for i in range(30)]
            elapsed = time.monotonic() - start
            # 20 at once, then one a second refills: the rest are 429 before any scrypt
            assert 20 <= statuses.count(401) <= 21 + elapsed and statuses.count(429) >= 3, (statuses, elapsed)
            assert c.get("/v1/files").status_code == 200  # the good part is not slowed or locked out

            for p in [data_dir, *data_dir.rglob("*")]:  # serve's umask 077: nothing open to other users
                assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, (p, oct(p.stat().st_mode))

            assert _cli(data_dir, "disable-part", "robot-1", "--reason", "decommissioned").returncode == 0
            r = c.get("/v1/files")
            assert r.status_code == 403 and "decommissioned" in r.json()["detail"]
            assert _cli(data_dir, "enable-part", "robot-1").returncode == 0
            assert c.get("/v1/files").status_code == 200
            rotated = _cli(data_dir, "rotate-secret", "robot-1")
            assert rotated.returncode == 0, rotated.stderr
            assert c.get("/v1/files").status_code == 401
        with httpx.Client(base_url=cloud.url, auth=("robot-1", rotated.stdout.strip()), timeout=30) as c:
            assert c.get("/v1/files").json()["items"][0]["file_id"] == "evilpage-0001"
        listed = _cli(data_dir, "parts")
        assert listed.returncode == 0 and '"part_id": "robot-1"' in listed.stdout and '"files": 1' in listed.stdout
