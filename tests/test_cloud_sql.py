"""`POST /v1/tabular/sql`: read-only SQL over the part's own rows; writes, ATTACH, PRAGMA and escapes refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsync.cloud import user_queries
from capsync.cloud.sql import READINGS_COLUMNS, run_readonly
from capsync.cloud.store import QueryRefused
from tests.test_cloud_support import (  # noqa: F401
    PART_A, PART_B, CloudEnv, env, make_env, open_env, tabular_capture, upload,
)

#: The stores whose SQL runs natively (SQLite's dialect, PostgreSQL's); MongoDB's copies into SQLite.
SQL_BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=SQL_BACKENDS)
def any_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CloudEnv]:
    """A cloud on each store with native SQL: the promises of the SQL route hold on both."""
    with open_env(request.param, tmp_path) as e:
        yield e


async def _seed(env: CloudEnv, tmp_path: Path) -> None:
    async with env.client(PART_A) as a:
        for sub, resource, n in [("a1", ("sensor", "s1", "Readings"), 7), ("a2", ("motor", "m1", "Position"), 4)]:
            fid, data = tabular_capture(tmp_path / sub, n=n, resource=resource, tags=("site:x",))
            assert (await upload(a, fid, data, chunk=4096)).status_code == 200
    async with env.client(PART_B) as b:
        fid, data = tabular_capture(tmp_path / "b", part=PART_B, n=50)
        assert (await upload(b, fid, data, chunk=4096)).status_code == 200


async def _sql(c, query: str, **extra):
    return await c.post("/v1/tabular/sql", json={"query": query, **extra})


async def test_count_answers_for_the_callers_part_only(any_env: CloudEnv, tmp_path: Path) -> None:
    env = any_env
    await _seed(env, tmp_path)
    count = {"sqlite": "count(*)", "postgresql": "count"}[env.backend]  # each names the column its way
    async with env.client(PART_A) as a, env.client(PART_B) as b:
        r = await _sql(a, "SELECT count(*) FROM readings WHERE resource_name = 's1'")
        assert r.status_code == 200, r.text
        assert r.json() == {"columns": [count], "rows": [[7]], "row_count": 1, "truncated": False}
        assert (await _sql(a, "SELECT count(*) FROM readings")).json()["rows"] == [[11]]
        assert (await _sql(b, "SELECT count(*) FROM readings")).json()["rows"] == [[50]]
        r = await _sql(a, "SELECT DISTINCT part_id FROM readings UNION SELECT part_id FROM readings r2")
        assert r.json()["rows"] == [[PART_A]]
        # the view's columns, JSON functions, and the tags
        r = await _sql(a, "SELECT * FROM readings LIMIT 1")
        assert tuple(r.json()["columns"]) == READINGS_COLUMNS
        if env.backend == "sqlite":
            q = ("SELECT resource_name, sum(json_extract(payload, '$.i')) AS s FROM readings "
                 "WHERE EXISTS (SELECT 1 FROM json_each(tags) WHERE value = 'site:x') "
                 "GROUP BY resource_name ORDER BY resource_name")
        else:
            q = ("SELECT resource_name, sum((payload::jsonb ->> 'i')::int) AS s FROM readings "
                 "WHERE tags::jsonb ? 'site:x' GROUP BY resource_name ORDER BY resource_name")
        r = await _sql(a, q)
        assert r.json()["rows"] == [["m1", 6], ["s1", 21]], r.text
        r = await _sql(a, "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5) "
                          "SELECT count(*), (SELECT count(*) FROM readings) FROM n")
        assert r.json()["rows"] == [[5, 11]]


@pytest.mark.parametrize("query, reason", [
    ("UPDATE readings SET payload = '{}'", "read-only"),
    ("UPDATE tabular SET payload = '{}'", "read-only"),
    ("DELETE FROM tabular", "read-only"),
    ("INSERT INTO tabular (part_id) VALUES ('x')", "read-only"),
    ("CREATE TABLE t (a)", "read-only"),
    ("CREATE TEMP VIEW everything AS SELECT 1", "read-only"),
    ("DROP VIEW readings", "read-only"),
    ("BEGIN", "read-only"),
    ("ATTACH DATABASE 'other.db' AS other", "ATTACH"),
    ("DETACH DATABASE main", "ATTACH"),
    ("PRAGMA table_info(readings)", "PRAGMA"),
    ("PRAGMA query_only = 0", "PRAGMA"),
    ("SELECT * FROM pragma_database_list", "only the readings view"),
    ("SELECT * FROM parts", "only the readings view"),
    ("SELECT * FROM files", "only the readings view"),
    ("SELECT * FROM tabular", "only the readings view"),
    ("SELECT * FROM main.tabular", "only the readings view"),
    ("SELECT * FROM sqlite_temp_master", "only the readings view"),
    ("WITH readings AS (SELECT * FROM tabular) SELECT count(*) FROM readings", "only the readings view"),
    ("SELECT load_extension('x')", "load_extension"),
    ("SELECT 1; SELECT 2", "one statement"),
    ("VACUUM", "refused"),  # SQLite asks to ATTACH for it
    ("SELEKT 1", "invalid query"),
])
async def test_writes_attach_pragma_and_escapes_are_refused_with_400(env: CloudEnv, tmp_path: Path, query: str,
                                                                   reason: str) -> None:
    await _seed(env, tmp_path)
    async with env.client(PART_A) as a:
        r = await _sql(a, query)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "query refused" and reason in r.json()["detail"], r.json()
        assert "src_" not in r.text  # the attached database's secret name never shows
    assert (await env.store.statistics()).tabular_rows == 61  # nothing changed


async def test_rows_are_bounded_and_values_are_json_safe(any_env: CloudEnv, tmp_path: Path) -> None:
    env = any_env
    await _seed(env, tmp_path)
    async with env.client(PART_B) as b:
        r = (await _sql(b, "SELECT record_index FROM readings ORDER BY record_index", limit=10)).json()
        assert (r["row_count"], r["truncated"], r["rows"][-1]) == (10, True, [9])
        odd = {"sqlite": "SELECT 1e999, -1e999, x'00ff', NULL, 'text'",
               "postgresql": "SELECT 'Infinity'::float8, '-Infinity'::float8, '\\x00ff'::bytea, NULL, 'text'"}
        r = (await _sql(b, odd[env.backend])).json()
        assert r["rows"] == [["Infinity", "-Infinity", {"$base64": "AP8="}, None, "text"]], r
        huge = {"sqlite": "SELECT length(zeroblob(100000000))", "postgresql": "SELECT repeat('x', 9000000)"}
        r = await _sql(b, huge[env.backend])
        assert r.status_code == 400  # past SQLite's length limit for one value; past an answer's bytes on PostgreSQL


async def test_a_slow_query_is_stopped(any_env: CloudEnv, tmp_path: Path, monkeypatch) -> None:
    env = any_env
    monkeypatch.setattr(user_queries, "QUERY_TIMEOUT_S", 0.3)
    async with env.client(PART_A) as a:
        start = trio.current_time()
        r = await _sql(a, "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n")
        assert r.status_code == 400 and "longer than 0.3 s" in r.json()["detail"], r.text
        assert trio.current_time() - start < 3


async def test_bad_request_bodies_are_400(any_env: CloudEnv) -> None:
    env = any_env
    async with env.client(PART_A) as a:
        for body in [b"not json", b"{}", b'{"query": ""}', b'{"query": "SELECT 1", "limit": 0}',
                     b'{"query": "SELECT 1", "limit": 10001}', b'{"query": "SELECT 1", "extra": 1}', b'{"query": 5}']:
            r = await a.post("/v1/tabular/sql", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400 and r.json()["error"] == "invalid query request", (body, r.text)
        assert (await a.get("/v1/tabular/sql")).status_code == 405
    async with env.client(PART_A, "wrong") as bad:
        assert (await _sql(bad, "SELECT 1")).status_code == 401


def test_the_runner_works_on_rows_in_memory_too() -> None:
    cols = ("p", "f", 0, "sensor", "s", "Readings", "{}", 5, 6, "t1", "t2", "[]", '{"v": 2}', "{}")
    other = ("q", *cols[1:])
    res = run_readonly("p", "SELECT count(*), json_extract(max(payload), '$.v') FROM readings",
                       rows=[cols, other], max_rows=5, timeout_s=2)
    assert res.rows == [[1, 2]]
    with pytest.raises(QueryRefused, match="empty"):
        run_readonly("p", "  ", rows=[], max_rows=5, timeout_s=2)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(query=st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(["SELECT", "*", "FROM", "readings", "tabular", "parts", "WHERE", "1", "=", "(", ")",
                              "'x'", ";", "PRAGMA", "ATTACH", "json_each(tags)", ",", "count(*)", "UNION", "--"]),
             max_size=12).map(" ".join),
))
def test_random_queries_never_get_a_5xx(sql_env: CloudEnv, query: str) -> None:
    async def one() -> int:
        async with sql_env.client(PART_A) as a:
            r = await a.post("/v1/tabular/sql", json={"query": query})
            if r.status_code == 200:
                assert all(row_part == PART_A for row_part in _parts_in(r.json()))
            return r.status_code

    assert trio.run(one) in (200, 400)


def _parts_in(body: dict) -> list[str]:
    if "part_id" not in body["columns"]:
        return []
    i = body["columns"].index("part_id")
    return [row[i] for row in body["rows"]]


@pytest.fixture(scope="module", params=SQL_BACKENDS)
def sql_env(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[CloudEnv]:
    """A cloud with rows of parts A and B, shared by the Hypothesis examples."""
    with open_env(request.param, tmp_path_factory.mktemp("sql")) as e:
        trio.run(_seed, e, tmp_path_factory.mktemp("caps"))
        yield e
