"""Hostile SQL on the PostgreSQL store: whatever part A sends, it never sees part B's rows, never writes,
and never gets out of its read-only, time- and size-bounded query (cloud/postgres_sql.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trio

from capsync.cloud import user_queries
from capsync.cloud.postgres_store import PostgresStore
from capsync.cloud.store import QueryRefused
from tests.postgres_kit import PostgresServer, postgres_server  # noqa: F401
from tests.test_cloud_support import PART_A, PART_B, TEST_SCRYPT_N, CloudEnv, open_env, tabular_capture, upload

#: A string only part B's rows hold: no answer to part A may ever contain it.
B_SECRET = "only-part-b-knows-this"


async def _seed(env: CloudEnv, tmp_path: Path) -> None:
    async with env.client(PART_A) as a:
        fid, data = tabular_capture(tmp_path / "a", n=3)
        assert (await upload(a, fid, data)).status_code == 200
    async with env.client(PART_B) as b:
        fid, data = tabular_capture(tmp_path / "b", part=PART_B, n=5, tags=(B_SECRET,),
                                    resource=("sensor", B_SECRET, "Readings"))
        assert (await upload(b, fid, data)).status_code == 200


@pytest.fixture
def pg_env(tmp_path: Path) -> Iterator[CloudEnv]:
    """A PostgreSQL cloud holding rows of parts A (3) and B (5), B's marked with B_SECRET; tables analyzed,
    so that pg_stats would hold B's values if it showed them."""
    with open_env("postgresql", tmp_path) as e:
        trio.run(_seed, e, tmp_path)
        with psycopg.connect(e.store.url, autocommit=True) as db:
            db.execute(f"ANALYZE {e.store.schema}.tabular")
        yield e


def _sql(env: CloudEnv, query: str, part: str = PART_A, **extra):
    async def go():
        async with env.client(part) as c:
            return await c.post("/v1/tabular/sql", json={"query": query, **extra})

    return trio.run(go)


def _ok_rows(r) -> list:
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def test_each_part_sees_only_its_own_rows(pg_env: CloudEnv) -> None:
    assert _ok_rows(_sql(pg_env, "SELECT count(*) FROM readings")) == [[3]]
    assert _ok_rows(_sql(pg_env, "SELECT count(*) FROM readings", PART_B)) == [[5]]
    assert _ok_rows(_sql(pg_env, "SELECT DISTINCT part_id FROM readings")) == [[PART_A]]
    r = _sql(pg_env, "SELECT count(*) FROM readings", PART_B)
    assert B_SECRET not in _sql(pg_env, "SELECT * FROM readings").text and r.json()["rows"] == [[5]]


@pytest.mark.parametrize("query", [
    # the tables behind the view, qualified or not, and every other table of the store
    "SELECT * FROM {s}.tabular", "SELECT count(*) FROM {s}.tabular", "SELECT * FROM {s}.parts",
    "SELECT * FROM {s}.sql_roles", "SELECT * FROM {s}.files", "SELECT * FROM {s}.staged_tabular",
    "SELECT * FROM tabular", "SELECT * FROM parts",
    # becoming someone else: the session user is the part's own login, a member of no privileged role
    "SELECT set_config('role', '{owner}', true), (SELECT count(*) FROM readings)",
    "SELECT set_config('session_authorization', '{owner}', true)",
    "SELECT set_config('role', '{owner}', true), query_to_xml('SELECT * FROM {s}.tabular', true, false, '')",
    "SELECT query_to_xml('SELECT * FROM {s}.tabular', true, false, '')",
    "SELECT set_config('search_path', '{s}', true), query_to_xml('SELECT * FROM tabular', true, false, '')",
    "SET ROLE {owner}", "RESET ROLE", "SET SESSION AUTHORIZATION {owner}",
    # statistics of the base table: pg_stats shows only what the role may select
    "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'tabular'",
    "SELECT histogram_bounds::text FROM pg_stats WHERE schemaname = '{s}'",
    "SELECT * FROM pg_stats_ext",
    # files, other servers, large objects, COPY, writes, more statements, EXPLAIN
    "SELECT pg_read_file('/etc/passwd')", "SELECT pg_ls_dir('.')", "SELECT lo_import('/etc/passwd')",
    "SELECT * FROM dblink('dbname={db}', 'SELECT * FROM {s}.tabular') AS t(x text)",
    "COPY (SELECT * FROM readings) TO STDOUT", "COPY {s}.tabular TO '/tmp/leak'",
    "DELETE FROM readings", "UPDATE {s}.tabular SET payload = '{{}}'", "INSERT INTO readings (part_id) VALUES ('x')",
    "WITH d AS (DELETE FROM {s}.tabular RETURNING *) SELECT count(*) FROM d",
    "SELECT 1; DELETE FROM {s}.tabular", "SELECT 1; SELECT * FROM {s}.tabular",
    "CREATE TEMP TABLE t AS SELECT * FROM readings", "CREATE FUNCTION f() RETURNS int AS 'SELECT 1' LANGUAGE sql",
    "EXPLAIN SELECT * FROM readings", "explain (analyze) SELECT * FROM readings",
    "/* x */ EXPLAIN SELECT * FROM readings", "PREPARE p AS SELECT 1", "DO $$ BEGIN PERFORM 1; END $$",
    "SELECT * FROM readings FOR UPDATE", "LISTEN x", "BEGIN", "COMMIT", "VACUUM",
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{owner}'",
    "SELECT * FROM readings) AS _q, {s}.tabular t WHERE (true",
    "SELECT 1 --",
])
def test_hostile_queries_never_show_another_parts_rows_or_change_anything(pg_env: CloudEnv, query: str) -> None:
    store: PostgresStore = pg_env.store  # type: ignore[assignment]
    owner = psycopg.conninfo.conninfo_to_dict(store.url)["user"]
    text = query.format(s=store.schema, owner=owner, db=psycopg.conninfo.conninfo_to_dict(store.url)["dbname"])
    r = _sql(pg_env, text)
    assert r.status_code in (200, 400), r.text
    assert B_SECRET not in r.text and PART_B not in r.text, r.text
    if r.status_code == 200:
        for row in r.json()["rows"]:
            assert all(v in (None, False, True, 0, 1, "", "off", "on") or not isinstance(v, str) or PART_B not in v
                       for v in row), row
    else:
        assert r.json()["error"] == "query refused"
    stats = trio.run(store.statistics)
    assert (stats.tabular_rows, stats.files, stats.parts) == (8, 2, 2)  # nothing changed
    assert _ok_rows(_sql(pg_env, "SELECT count(*) FROM readings", PART_B)) == [[5]]


@pytest.mark.parametrize("query, reason", [
    ("UPDATE readings SET payload = '{}'", "read-only"),
    ("DELETE FROM readings", "read-only"),
    ("WITH d AS (DELETE FROM readings RETURNING 1) SELECT count(*) FROM d", "read-only"),
    ("SELECT 1; SELECT 2", "one statement"),
    ("EXPLAIN SELECT * FROM readings", "EXPLAIN is refused"),
    ("SELECT * FROM parts", "invalid query"),
    ("SELEKT 1", "invalid query"),
    ("SELECT * FROM capsync.tabular", "permission denied for schema"),
    ("SELECT set_config('role', 'capsync', true)", "permission denied to set role"),
])
def test_refusals_say_why(pg_env: CloudEnv, query: str, reason: str) -> None:
    r = _sql(pg_env, query.replace("capsync.", f"{pg_env.store.schema}."))
    assert r.status_code == 400 and reason in r.json()["detail"], r.text


def test_a_query_that_turns_its_timeout_off_is_still_stopped(pg_env: CloudEnv, monkeypatch) -> None:
    monkeypatch.setattr(user_queries, "QUERY_TIMEOUT_S", 0.5)
    start = time.monotonic()
    r = _sql(pg_env, "SELECT set_config('statement_timeout', '0', false), pg_sleep(30)")
    assert r.status_code == 400 and "longer than 0.5 s" in r.json()["detail"], r.text
    assert time.monotonic() - start < 5


def test_answers_are_bounded_in_rows_and_bytes(pg_env: CloudEnv) -> None:
    r = _sql(pg_env, "SELECT g FROM generate_series(1, 100000) g", limit=10000).json()
    assert (r["row_count"], r["truncated"]) == (10000, True) and "rows" in r["truncated_reason"]
    r = _sql(pg_env, "SELECT repeat('x', 100000) FROM generate_series(1, 1000)", limit=10000).json()
    assert r["truncated"] and "bytes" in r["truncated_reason"] and 70 <= r["row_count"] <= 84
    r = _sql(pg_env, "SELECT repeat('x', 9000000)")
    assert r.status_code == 400 and "more than the" in r.json()["detail"]


def test_values_come_back_as_json(pg_env: CloudEnv) -> None:
    rows = _ok_rows(_sql(pg_env, "SELECT sum(record_index), avg(record_index), 1.5::numeric, now()::date, "
                                 "ARRAY[1, 2], '{\"k\": [1]}'::jsonb, 'NaN'::numeric, gen_random_uuid() IS NOT NULL "
                                 "FROM readings"))
    (total, avg, dec, day, arr, doc, nan, uuid_ok), = rows
    assert (total, avg, dec, arr, doc, nan, uuid_ok) == (3, 1, 1.5, [1, 2], {"k": [1]}, "NaN", True)
    assert isinstance(day, str) and len(day) == 10
    r = _sql(pg_env, "SELECT payload, tags, (payload::jsonb ->> 'i')::int AS i FROM readings ORDER BY record_index")
    assert _ok_rows(r)[1] == ['{"i":1,"v":0.5}', '["t1"]', 1]  # JSON text exactly as SQLite keeps it


def test_each_part_gets_its_own_login_and_removing_the_part_drops_it(pg_env: CloudEnv) -> None:
    store: PostgresStore = pg_env.store  # type: ignore[assignment]
    (a_user,), = _ok_rows(_sql(pg_env, "SELECT session_user::text"))
    (b_user,), = _ok_rows(_sql(pg_env, "SELECT session_user::text", PART_B))
    assert a_user != b_user and a_user.startswith("capsync_")
    with psycopg.connect(store.url, autocommit=True) as db:
        flags = db.execute("SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolcanlogin FROM pg_roles "
                           "WHERE rolname = %s", (a_user,)).fetchone()
        assert flags == (False, False, False, False, True)
        store.admin_remove_sync(PART_A, delete_data=False)
        assert db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (a_user,)).fetchone() is None


def test_without_createrole_sql_is_refused_with_the_fix_and_the_rest_works(
        postgres_server: PostgresServer, tmp_path: Path) -> None:  # noqa: F811
    from capsync.cloud.app import create_app

    role = postgres_server.unique("plain")
    with postgres_server.admin("capsync") as db:
        db.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
        db.execute(f"GRANT CREATE ON DATABASE capsync TO {role}")
    with postgres_server.fresh_schema() as schema:
        store = PostgresStore(postgres_server.url(role, "pw"), schema=schema, scrypt_n=TEST_SCRYPT_N)
        try:
            store.add_part_sync(PART_A, "s")
            e = CloudEnv(create_app(tmp_path / "c", store), store, tmp_path / "c", backend="postgresql")
            fid, data = tabular_capture(tmp_path, n=2)

            async def go():
                async with e.client(PART_A, "s") as c:
                    assert (await upload(c, fid, data)).status_code == 200
                    return await c.post("/v1/tabular/sql", json={"query": "SELECT 1"})

            r = trio.run(go)
            assert r.status_code == 400 and "CREATEROLE" in r.json()["detail"], r.text
            with pytest.raises(QueryRefused, match="CREATEROLE"):
                trio.run(lambda: store.run_sql(PART_A, "SELECT 1", max_rows=1, timeout_s=1))
        finally:
            store.close_sync()
    with postgres_server.admin("capsync") as db:
        db.execute(f"DROP OWNED BY {role}")
        db.execute(f"DROP ROLE {role}")


def test_pg_stats_holds_part_bs_values_yet_part_a_sees_none(pg_env: CloudEnv, postgres_server: PostgresServer) -> None:  # noqa: F811
    with postgres_server.admin("capsync") as db:  # the superuser sees what ANALYZE gathered: B's values are there
        seen = db.execute("SELECT string_agg(most_common_vals::text, ' ') FROM pg_stats WHERE schemaname = %s "
                          "AND tablename = 'tabular'", (pg_env.store.schema,)).fetchone()[0]
        db.execute("ANALYZE pg_catalog.pg_class")  # what autovacuum does sooner or later
    assert B_SECRET in seen
    # Statistics of pg_catalog's own tables are every role's to read (docs/cloud.md): once autovacuum
    # analyzes them, pg_class's names (e.g. "tabular") show up there. No row may be about a store table.
    rows = _ok_rows(_sql(pg_env, "SELECT schemaname, tablename, attname, most_common_vals::text FROM pg_stats"))
    assert [row for row in rows if row[0] == pg_env.store.schema] == []
    assert B_SECRET not in str(rows)
