"""Hostile input at the cloud's HTTP surface: uploaded pages that pose as the data browser, SQL that
peeks at other parts' tables, cross-site form posts, slow bodies, spreadsheet formulas."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.test_cloud_support import (  # noqa: F401
    PART_A, PART_B, CloudEnv, binary_capture, env, open_env, tabular_capture, upload,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CloudEnv]:
    """A cloud on each store whose SQL runs natively: SQL that peeks at other parts fails on both."""
    with open_env(request.param, tmp_path) as e:
        yield e

PAGE_CSP_PARTS = ("default-src 'none'", "script-src 'self'", "frame-ancestors 'none'")


def _assert_sandboxed(r) -> None:
    assert "sandbox" in r.headers["content-security-policy"], r.headers
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("mime", ["text/html", "image/svg+xml", "application/xhtml+xml", "text/html; charset=utf-8"])
async def test_uploaded_pages_are_sandboxed_downloads(env: CloudEnv, tmp_path: Path, mime: str) -> None:
    page = b"<html><script>fetch('/v1/tabular').then(r => r.text()).then(steal)</script></html>"
    fid, data = binary_capture(tmp_path, [page], mime=mime)
    async with env.client() as c:
        assert (await upload(c, fid, data)).status_code == 200
        assert (await upload(c, "plainpage-001", page, kind="file", name="index.html", mime_type=mime)).status_code == 200
        for url in (f"/v1/binary/{fid}-0", "/v1/binary/plainpage-001-0"):
            r = await c.get(url)
            assert r.status_code == 200 and r.content == page
            assert r.headers["content-disposition"].startswith("attachment"), (url, r.headers)
            _assert_sandboxed(r)


async def test_safe_images_stay_inline_but_sandboxed(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = binary_capture(tmp_path, [b"\xff\xd8jpeg\xff\xd9"], mime="image/jpeg")
    async with env.client() as c:
        assert (await upload(c, fid, data)).status_code == 200
        r = await c.get(f"/v1/binary/{fid}-0")
    assert r.headers["content-type"] == "image/jpeg" and r.headers["content-disposition"] == "inline"
    _assert_sandboxed(r)


@pytest.mark.parametrize("path", ["/", "/static/index.html", "/static/app.js", "/static/style.css"])
async def test_every_page_response_has_the_page_csp(env: CloudEnv, path: str) -> None:
    async with env.client(anonymous=True) as c:
        r = await c.get(path)
    assert r.status_code == 200
    for part in PAGE_CSP_PARTS:
        assert part in r.headers["content-security-policy"], (path, r.headers)
    assert r.headers["x-content-type-options"] == "nosniff"


async def _seed_two_parts(env: CloudEnv, tmp_path: Path) -> None:
    async with env.client(PART_A) as a:
        fid, data = tabular_capture(tmp_path / "a", n=3)
        assert (await upload(a, fid, data)).status_code == 200
    async with env.client(PART_B) as b:
        fid, data = tabular_capture(tmp_path / "b", part=PART_B, n=5)
        assert (await upload(b, fid, data)).status_code == 200


@pytest.mark.parametrize("table", ["parts", "files", "uploads", "binary_items", "tabular"])
async def test_sql_never_counts_other_parts_rows(sql_env: CloudEnv, tmp_path: Path, table: str) -> None:
    env = sql_env
    await _seed_two_parts(env, tmp_path)
    async with env.client(PART_A) as a:
        for query in (f"SELECT count(*) FROM {table}", f"SELECT count(*) > 0 FROM {table} LIMIT 1",
                      f"SELECT 1 FROM {table}", f"SELECT EXISTS (SELECT 1 FROM {table})"):
            r = await a.post("/v1/tabular/sql", json={"query": query})
            if r.status_code == 200:  # an empty stand-in table answers, never the real one
                assert r.json()["rows"] in ([[0]], [], [[False]]), (query, r.json())
            else:
                assert r.status_code == 400 and r.json()["error"] == "query refused", r.text
            assert "src_" not in r.text
        r = await a.post("/v1/tabular/sql", json={"query": "SELECT group_concat(sql) FROM sqlite_master"})
        assert "src_" not in r.text


@pytest.mark.parametrize("query", [
    "EXPLAIN QUERY PLAN SELECT * FROM readings",
    "explain select * from readings",
    "  /* hide */ -- and\n EXPLAIN QUERY PLAN SELECT count(*) FROM readings",
])
async def test_explain_is_refused_and_never_names_the_attached_database(sql_env: CloudEnv, tmp_path: Path,
                                                                       query: str) -> None:
    env = sql_env
    await _seed_two_parts(env, tmp_path)
    async with env.client(PART_A) as a:
        r = await a.post("/v1/tabular/sql", json={"query": query})
    assert r.status_code == 400 and "EXPLAIN is refused" in r.json()["detail"], r.text
    assert "src_" not in r.text


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "text/plain; charset=application/json"])
async def test_json_endpoints_refuse_what_a_cross_site_form_can_send(env: CloudEnv, content_type) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    async with env.client() as c:
        for path in ("/v1/tabular/sql", "/v1/tabular/mql"):
            r = await c.post(path, content=b'{"query": "SELECT 1", "pipeline": []}', headers=headers)
            assert r.status_code == 415 and r.json()["error"] == "unsupported media type", (path, r.text)
        r = await c.post("/v1/tabular/sql", json={"query": "SELECT 1"})
        assert r.status_code == 200 and r.json()["rows"] == [[1]]


async def _raw_http(port: int, head: bytes, body_pieces: list[bytes], gap_s: float) -> tuple[bytes, float]:
    """Send `head` then the body pieces `gap_s` apart; return what the server answered and when."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    start = trio.current_time()
    got = b""
    async with stream:
        await stream.send_all(head)

        async def dribble() -> None:
            for piece in body_pieces:
                await trio.sleep(gap_s)
                try:
                    await stream.send_all(piece)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(dribble)
            with trio.move_on_after(20):
                while chunk := await stream.receive_some(65536):
                    got += chunk
                    if b"\r\n\r\n" in got:
                        break
            nursery.cancel_scope.cancel()
    return got, trio.current_time() - start


async def test_a_slow_body_is_refused_with_408_and_a_silent_connection_is_closed(tmp_path: Path, monkeypatch) -> None:
    import base64

    from capsync.cloud import http, server
    from capsync.cloud.server import serve
    from tests.test_cloud_support import SECRET_A, make_env

    monkeypatch.setattr(http, "BODY_GRACE_S", 1.0)
    monkeypatch.setattr(server, "READ_TIMEOUT_S", 2)
    e = make_env(tmp_path / "cloud")
    auth = base64.b64encode(f"{PART_A}:{SECRET_A}".encode()).decode()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve(e.data_dir, "127.0.0.1", 0, store=e.store,
                                                             retention_interval_s=float("inf"), task_status=task_status))
        body = b'{"query": "SELECT 1"}'
        head = (f"POST /v1/tabular/sql HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        got, took = await _raw_http(port, head, [bytes([b]) for b in body], 0.3)  # 1 byte every 0.3 s: ~6 s
        assert got.startswith(b"HTTP/1.1 408"), got[:200]
        assert took < 4, took
        got, took = await _raw_http(port, b"POST /v1/tabular/sql HTTP/1.1\r\nHost: x\r\n", [], 0)  # then silence
        assert got == b"" and 1.5 < took < 6, (got, took)
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's csv.js")
def test_csv_export_defuses_spreadsheet_formulas() -> None:
    from capsync.cloud.browser import STATIC_DIR

    cells = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "plain", 5, -5,
             {"a": "=1"}, None, "a,b", "say \"hi\""]
    script = (f"const csv = require({json.dumps(str(STATIC_DIR / 'csv.js'))});"
              f"process.stdout.write(JSON.stringify(csv.text(['h'], {json.dumps([[c] for c in cells])})));")
    out = json.loads(subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True).stdout)
    rows = list(csv.reader(io.StringIO(out, newline="")))
    assert [r[0] if r else "" for r in rows[1:]] == [
        "'=HYPERLINK(\"http://x\",\"y\")", "'+1+1", "'-2+3", "'@SUM(A1)", "'\tx", "'\rx", "plain", "5", "-5",
        '{"a":"=1"}', "", "a,b", "say \"hi\""]
