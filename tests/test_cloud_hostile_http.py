"""Hostile input at the cloud's HTTP surface: uploaded pages that pose as the data browser, SQL that
peeks at other parts' tables, cross-site form posts, slow bodies, spreadsheet formulas."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cloud_support import PART_A, PART_B, CloudEnv, binary_capture, env, tabular_capture, upload  # noqa: F401

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
async def test_sql_never_counts_other_parts_rows(env: CloudEnv, tmp_path: Path, table: str) -> None:
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
async def test_explain_is_refused_and_never_names_the_attached_database(env: CloudEnv, tmp_path: Path,
                                                                       query: str) -> None:
    await _seed_two_parts(env, tmp_path)
    async with env.client(PART_A) as a:
        r = await a.post("/v1/tabular/sql", json={"query": query})
    assert r.status_code == 400 and "EXPLAIN is refused" in r.json()["detail"], r.text
    assert "src_" not in r.text
