"""The query API and the isolation of parts: filters, pagination, auth."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from capsync.cloud.app import apply_retention
from tests.test_cloud_support import (
    BACKENDS, PART_A, PART_B, SECRET_A, CloudEnv, binary_capture, declaration, open_env, tabular_capture, upload,
)


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CloudEnv]:
    """Queries, pagination and part isolation hold on every backend the cloud runs on."""
    with open_env(request.param, tmp_path) as e:
        yield e


async def _all_pages(c, path: str, **params) -> tuple[list[dict], int]:
    items, pages, cursor = [], 0, None
    while True:
        r = await c.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages


async def test_pagination_returns_every_row_exactly_once(env: CloudEnv, tmp_path: Path) -> None:
    async with env.client() as c:
        # Three files whose times interleave, including equal requested times across files.
        for k in range(3):
            fid, data = tabular_capture(tmp_path / str(k), n=20, t0=1_000 + k, step=2)
            assert (await upload(c, fid, data, chunk=4096)).status_code == 200
        items, pages = await _all_pages(c, "/v1/tabular", limit=7)
        everything = (await c.get("/v1/tabular", params={"limit": 1000})).json()
    keys = [(i["requested_ns"], i["file_id"], i["record_index"]) for i in items]
    assert len(keys) == 60 and len(set(keys)) == 60 and keys == sorted(keys)
    assert pages == 9  # 60 rows at 7 a page: the last page is not followed by an empty one
    assert [i["record_index"] for i in everything["items"]] == [i["record_index"] for i in items]
    assert everything["next_cursor"] is None


async def test_binary_pagination_covers_every_item_once(env: CloudEnv, tmp_path: Path) -> None:
    async with env.client() as c:
        fid, data = binary_capture(tmp_path, [bytes([i]) * (i + 1) for i in range(9)])
        await upload(c, fid, data, chunk=4096)
        items, _ = await _all_pages(c, "/v1/binary", limit=2)
    assert [i["id"] for i in items] == [f"{fid}-{i}" for i in range(9)]


async def test_filters_by_resource_method_time_and_tags(env: CloudEnv, tmp_path: Path) -> None:
    async with env.client() as c:
        for sub, resource, tags, t0 in [
            ("a", ("sensor", "s1", "Readings"), ("site:x", "day"), 10_000),
            ("b", ("sensor", "s2", "Readings"), ("site:x",), 20_000),
            ("c", ("motor", "m1", "Position"), ("site:y", "day"), 30_000),
        ]:
            fid, data = tabular_capture(tmp_path / sub, n=4, t0=t0, step=10, tags=tags, resource=resource)
            await upload(c, fid, data, chunk=4096)

        async def names(**params) -> list[tuple[str, int]]:
            r = await c.get("/v1/tabular", params=params)
            assert r.status_code == 200, r.text
            return [(i["resource_name"], i["requested_ns"]) for i in r.json()["items"]]

        assert {n for n, _ in await names(resource_type="sensor")} == {"s1", "s2"}
        assert {n for n, _ in await names(resource_name="m1")} == {"m1"}
        assert {n for n, _ in await names(method="Readings", resource_name="s2")} == {"s2"}
        assert {n for n, _ in await names(tag="site:x")} == {"s1", "s2"}
        assert {n for n, _ in await names(tag=["site:x", "day"])} == {"s1"}  # every tag must match
        assert await names(tag=["site:x", "site:y"]) == []
        assert await names(start="10010", end="10030") == [("s1", 10010), ("s1", 10020)]  # [start, end)
        assert await names(start="1970-01-01T00:00:00.000030020Z") == [("m1", 30020), ("m1", 30030)]
        assert await names(end="1970-01-01T01:00:00.000010010+01:00") == [("s1", 10000)]  # offsets honoured
        assert len(await names(resource_type="nothing")) == 0


async def test_bad_query_parameters_are_400(env: CloudEnv) -> None:
    async with env.client() as c:
        for params in [
            {"limit": "0"}, {"limit": "1001"}, {"limit": "ten"}, {"start": "yesterday"},
            {"end": "2024-13-01T00:00:00Z"}, {"cursor": "%%%"}, {"cursor": base64.urlsafe_b64encode(b"[1]").decode()},
            {"tags": "typo"}, {"start": "9" * 30},
        ]:
            for path in ("/v1/tabular", "/v1/binary"):
                r = await c.get(path, params=params)
                assert r.status_code == 400, (path, params, r.text)
                assert r.json()["error"]
        assert (await c.get("/v1/files", params={"cursor": "e30"})).status_code == 400  # "{}" is not a file id


async def test_wrong_or_missing_credentials_are_401_with_a_challenge(env: CloudEnv) -> None:
    for client in [env.client(PART_A, "wrong"), env.client("no-such-part", SECRET_A), env.client(anonymous=True)]:
        async with client as c:
            for method, path in [("GET", "/v1/files/abcdefgh01"), ("POST", "/v1/files/abcdefgh01/commit"),
                                 ("PUT", "/v1/files/abcdefgh01/data?offset=0"), ("GET", "/v1/tabular"),
                                 ("GET", "/v1/binary/abcdefgh01-0"), ("GET", "/v1/files")]:
                r = await c.request(method, path)
                assert r.status_code == 401, (method, path)
                assert r.headers["www-authenticate"].startswith("Basic")
                assert r.json()["error"] == "unauthorized"
    async with env.client() as c:
        r = await c.get("/v1/health", auth=None)
        assert r.status_code == 200 and r.json()["ok"] is True


async def test_a_verified_secret_is_cached_and_a_wrong_one_never_is(env: CloudEnv) -> None:
    cache = env.app.state.cloud.credentials
    async with env.client() as c:
        for _ in range(5):
            assert (await c.get("/v1/files")).status_code == 200
    assert (cache.misses, cache.hits) == (1, 4)
    async with env.client(PART_A, "wrong") as c:
        for _ in range(2):
            assert (await c.get("/v1/files")).status_code == 401
    assert cache.misses == 3


async def test_part_a_cannot_read_or_change_part_b_data(env: CloudEnv, tmp_path: Path) -> None:
    fid_b, data_b = tabular_capture(tmp_path / "b", part=PART_B, n=3)
    img_fid, img_data = binary_capture(tmp_path / "bi", [b"secret-image"], part=PART_B)
    partial_fid, partial_data = tabular_capture(tmp_path / "p", part=PART_B, n=3)
    async with env.client(PART_B) as b:
        await upload(b, fid_b, data_b)
        await upload(b, img_fid, img_data)
        await upload(b, partial_fid, partial_data[:50], commit=False)
    async with env.client(PART_A) as a:
        # B's files are invisible to A: same answers as for ids nobody used.
        assert (await a.get(f"/v1/files/{fid_b}")).json()["state"] == "unknown"
        assert (await a.get(f"/v1/files/{partial_fid}")).json()["state"] == "unknown"
        assert (await a.get(f"/v1/binary/{img_fid}-0")).status_code == 404
        assert (await a.get("/v1/tabular")).json()["items"] == []
        assert (await a.get("/v1/binary")).json()["items"] == []
        assert (await a.get("/v1/files")).json()["items"] == []
        # Writing to B's ids touches only A's own namespace, and B's header is refused for A.
        r = await a.put(f"/v1/files/{partial_fid}/data", params={"offset": 50}, content=partial_data[50:])
        assert r.status_code == 409 and r.json()["status"]["state"] == "unknown"
        assert (await a.post(f"/v1/files/{partial_fid}/commit")).status_code == 409
        r = await upload(a, fid_b, data_b)
        assert r.status_code == 422 and "part 'part-b'" in r.json()["detail"]
    async with env.client(PART_B) as b:
        assert (await b.get(f"/v1/files/{partial_fid}")).json()["offset"] == 50
        assert len((await b.get("/v1/tabular")).json()["items"]) == 3
        assert (await b.get(f"/v1/binary/{img_fid}-0")).content == b"secret-image"


async def test_files_listing_pages_in_file_id_order(env: CloudEnv, tmp_path: Path) -> None:
    async with env.client() as c:
        ids = []
        for k in range(5):
            fid, data = tabular_capture(tmp_path / str(k), n=1)
            await upload(c, fid, data, chunk=4096)
            ids.append(fid)
        files, pages = await _all_pages(c, "/v1/files", limit=2)
    assert [f["file_id"] for f in files] == sorted(ids) and pages == 3
    assert all(f["records"] == 1 and f["kind"] == "capture" for f in files)


async def test_retention_days_delete_rows_and_bytes_but_keep_the_file_committed(env: CloudEnv, tmp_path: Path) -> None:
    keep_fid, keep = tabular_capture(tmp_path / "k", n=2)
    gone_fid, gone = tabular_capture(tmp_path / "g", n=3, metadata={"retention_policy": {"days": 1}})
    async with env.client() as c:
        await upload(c, keep_fid, keep, chunk=4096)
        await upload(c, gone_fid, gone, chunk=4096)
        cloud = env.app.state.cloud
        committed_ns = (await env.store.get_file(PART_A, gone_fid)).committed_ns
        assert await apply_retention(cloud, committed_ns) == []  # same UTC day: kept
        expired = await apply_retention(cloud, committed_ns + 86_400 * 10**9)
        assert [f.file_id for f in expired] == [gone_fid]
        assert {i["file_id"] for i in (await c.get("/v1/tabular")).json()["items"]} == {keep_fid}
        assert not await trio.Path(env.data_dir / "files" / PART_A / gone_fid).exists()
        # A late retry of the expired file is still "committed" and stores nothing again.
        r = await c.post(f"/v1/files/{gone_fid}", json=declaration(gone))
        assert r.json()["state"] == "committed"
    assert (await env.store.statistics()).tabular_rows == 2
