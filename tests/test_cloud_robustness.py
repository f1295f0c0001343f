"""Malformed requests get a 4xx with an ErrorBody, never a 5xx; random junk included (Hypothesis)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsync.runtime.sync_protocol import MAX_CHUNK_BYTES, MAX_JSON_BYTES, ErrorBody
from tests.test_cloud_support import PART_A, SECRET_A, CloudEnv, declaration, env, make_env, tabular_capture, upload  # noqa: F401


def _is_error_body(r: httpx.Response) -> bool:
    try:
        ErrorBody.model_validate_json(r.content)
    except ValueError:
        return False
    return True


async def test_malformed_requests_get_4xx_with_an_error_body(env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path)
    good = declaration(data)
    async with env.client() as c:
        await c.post(f"/v1/files/{fid}", json=good)
        cases = [
            ("POST", f"/v1/files/{fid}", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
            ("POST", f"/v1/files/{fid}", {"content": b"", "headers": {"content-type": "application/json"}}, 400),
            ("POST", f"/v1/files/{fid}", {"content": json.dumps(good).encode()}, 415),  # no JSON content type
            ("POST", f"/v1/files/{fid}", {"json": [1, 2]}, 400),
            ("POST", f"/v1/files/{fid}", {"json": {**good, "size": -1}}, 400),
            ("POST", f"/v1/files/{fid}", {"json": {**good, "sha256": "XYZ"}}, 400),
            ("POST", f"/v1/files/{fid}", {"json": {**good, "kind": "movie"}}, 400),
            ("POST", f"/v1/files/{fid}", {"json": {**good, "extra": 1}}, 400),
            ("POST", f"/v1/files/{fid}", {"json": {**good, "size": 2**40}}, 400),
            ("POST", f"/v1/files/{fid}", {"content": b"{" + b" " * MAX_JSON_BYTES + b"}", "headers": {"content-type": "application/json"}}, 413),
            ("POST", f"/v1/files/{fid}", {"content": "\"\udcff\"".encode("utf-8", "surrogatepass"), "headers": {"content-type": "application/json"}}, 400),
            ("GET", "/v1/files/short", {}, 400),
            ("GET", "/v1/files/" + "a" * 65, {}, 400),
            ("GET", "/v1/files/bad.id.with.dots", {}, 400),
            ("GET", "/v1/files/%2e%2e%2f%2e%2e%2fetc", {}, 404),  # decoded, it is not one path segment
            ("POST", "/v1/files/..%2F..%2Fescape/commit", {}, 404),
            ("GET", "/v1/files/..%5C..%5Cescape", {}, 400),
            ("PUT", f"/v1/files/{fid}/data", {"content": b"x"}, 400),
            ("PUT", f"/v1/files/{fid}/data?offset=-1", {"content": b"x"}, 400),
            ("PUT", f"/v1/files/{fid}/data?offset=1e3", {"content": b"x"}, 400),
            ("PUT", f"/v1/files/{fid}/data?offset=" + "9" * 40, {"content": b"x"}, 400),
            ("PUT", f"/v1/files/{fid}/data?offset=0", {"content": b"x", "headers": {"content-length": "abc"}}, 400),
            ("PUT", f"/v1/files/{fid}/data?offset=0", {"content": b"xyz", "headers": {"content-length": "2"}}, 400),
            ("PUT", f"/v1/files/{fid}/data?offset=0",
             {"content": b"x", "headers": {"content-length": str(MAX_CHUNK_BYTES + 1)}}, 413),
            ("GET", "/v1/binary/not-an-item", {}, 400),
            ("GET", "/v1/binary/abcdefgh01-99999999999999999999", {}, 400),
            ("DELETE", f"/v1/files/{fid}", {}, 405),
            ("GET", "/v1/nothing/here", {}, 404),
        ]
        for method, path, kw, want in cases:
            r = await c.request(method, path, **kw)
            assert r.status_code == want, (method, path, r.status_code, r.text)
            assert _is_error_body(r), (method, path, r.text)
        assert (await c.get(f"/v1/files/{fid}")).json()["offset"] == 0  # nothing above changed the upload


async def test_an_oversized_chunk_is_refused_while_streaming(env: CloudEnv) -> None:
    data = b"z" * (MAX_CHUNK_BYTES + 1)
    fid = "bigfile-00001"

    async def body():  # no Content-Length: only counting while streaming can catch it
        for i in range(0, len(data), 1 << 20):
            yield data[i:i + (1 << 20)]

    async with env.client() as c:
        await c.post(f"/v1/files/{fid}", json=declaration(data, kind="file"))
        r = await c.put(f"/v1/files/{fid}/data", params={"offset": 0}, content=body())
        assert r.status_code == 413 and r.json()["error"] == "body too large"
        assert (await c.get(f"/v1/files/{fid}")).json()["offset"] == 0


async def test_an_unexpected_error_is_a_logged_500_with_an_error_body(env: CloudEnv, caplog) -> None:
    async def broken(*args, **kw):
        raise RuntimeError("store exploded")

    env.app.state.cloud.store.get_file = broken  # an instance attribute: only this app's store
    async with env.client() as c:
        r = await c.get("/v1/files/abcdefgh01")
    assert r.status_code == 500 and r.json()["error"] == "internal error"
    assert "store exploded" not in r.text
    assert any("store exploded" in (rec.exc_text or "") or rec.exc_info for rec in caplog.records)


_METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
_IDS = st.one_of(
    st.sampled_from(["abcdefgh01", "committed-file-0001", "partial-file-0001"]),
    st.text(min_size=0, max_size=80),
    st.from_regex(r"[A-Za-z0-9_-]{8,64}", fullmatch=True),
)
_TEMPLATES = st.sampled_from([
    "/v1/files/{}", "/v1/files/{}/data", "/v1/files/{}/commit", "/v1/binary/{}", "/v1/binary/{}-0",
    "/v1/tabular", "/v1/binary", "/v1/files", "/v1/health", "/{}", "/v1/{}/{}",
])
_VALUES = st.one_of(st.text(max_size=40), st.integers(-(2**70), 2**70).map(str), st.just("0"))
_QUERY = st.lists(st.tuples(st.sampled_from(["offset", "limit", "cursor", "start", "end", "tag", "method", "x"]),
                            _VALUES), max_size=4)
_BODIES = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
        st.sampled_from(["kind", "size", "sha256", "name", "mime_type", "junk"]),
        st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=70), st.sampled_from(["capture", "file"]),
                  st.none(), st.floats(allow_nan=True)),
    )),
)
_AUTH = st.sampled_from(["good", "wrong", "none", "garbage"])


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=_METHODS, template=_TEMPLATES, ids=st.lists(_IDS, min_size=2, max_size=2), query=_QUERY,
       body=_BODIES, auth=_AUTH)
def test_random_requests_never_get_a_5xx(cloud_for_fuzz, method, template, ids, query, body, auth) -> None:
    path = template.format(*(quote(i, safe="") for i in ids))
    if query:
        path += "?" + urlencode(query)
    headers = {"garbage": {"Authorization": "Basic !!!notbase64"}}.get(auth, {})
    creds = {"good": (PART_A, SECRET_A), "wrong": (PART_A, "nope")}.get(auth)

    async def one() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=cloud_for_fuzz.app, raise_app_exceptions=False),
                                     base_url="http://cloud.test", auth=creds) as c:
            return await c.request(method, path, content=body if method in ("POST", "PUT", "PATCH") else None,
                                   headers=headers)

    r = trio.run(one)
    assert r.status_code < 500, (method, path, r.status_code, r.text)
    if r.status_code >= 400 and method != "HEAD":
        assert _is_error_body(r), (method, path, r.text)


def _fuzz_env(tmp_path_factory) -> CloudEnv:
    e = make_env(tmp_path_factory.mktemp("fuzz"))

    async def seed() -> None:
        fid, data = tabular_capture(tmp_path_factory.mktemp("caps"), file_id="committed-file-0001")
        async with e.client() as c:
            await upload(c, fid, data, chunk=4096)
            await c.post("/v1/files/partial-file-0001", json=declaration(b"0123456789", kind="file"))

    trio.run(seed)
    return e


@pytest.fixture(scope="module")
def cloud_for_fuzz(tmp_path_factory) -> CloudEnv:
    """One cloud shared by every Hypothesis example: a committed and a partial file already in it."""
    return _fuzz_env(tmp_path_factory)
