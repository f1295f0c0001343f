"""The PostgreSQL store against a real PostgreSQL (tests/postgres_kit.py): the same answers as SQLite,
exactly once across processes, retention once, unreachable servers, and the CLI's `--store`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trio

from capsync.cloud import ingest, retention
from capsync.cloud.app import apply_retention, create_app
from capsync.cloud.cli import main as cli_main
from capsync.cloud.postgres_store import PostgresStore
from capsync.cloud.store import Commit, Query, Store, StoreUnavailable, Upload
from capsync.runtime.capture_file import CaptureHeader, CaptureRecord, CaptureWriter, new_file_id
from capsync.runtime.sync_protocol import FileKind
from tests.postgres_kit import PostgresServer, postgres_server  # noqa: F401
from tests.test_cloud_support import (
    PART_A, SECRET_A, TEST_SCRYPT_N, CloudEnv, binary_capture, make_env, open_env, tabular_capture, upload,
)


@pytest.fixture
def pg_env(tmp_path: Path) -> Iterator[CloudEnv]:
    """The in-process cloud on PostgreSQL, parts A and B registered."""
    with open_env("postgresql", tmp_path) as e:
        yield e


@pytest.fixture
def schema(postgres_server: PostgresServer) -> Iterator[str]:  # noqa: F811
    """A fresh schema name, dropped (with its roles) afterwards."""
    with postgres_server.fresh_schema() as name:
        yield name


def _store(srv: PostgresServer, schema: str, **kw) -> PostgresStore:
    return PostgresStore(srv.url(), schema=schema, scrypt_n=TEST_SCRYPT_N, **kw)


def _capture(directory: Path, n: int, part: str = PART_A, metadata: dict | None = None) -> tuple[str, bytes, Path]:
    header = CaptureHeader(new_file_id(), part, "sensor", "s1", "Readings", {"rate": 2}, ("t1",), "tabular",
                           metadata=metadata or {})
    w = CaptureWriter.create(directory, header)
    for i in range(n):
        w.append(CaptureRecord(1_000 + i, 1_007 + i, {"z": i, "a": [i, 0.5, None], "s": "x" * (i % 3)}))
    path = w.finish()
    return header.file_id, path.read_bytes(), path


def _ingest(part: str, fid: str, data: bytes, path: Path, committed_ns: int = 1) -> ingest.Ingest:
    return ingest.capture_file(Upload(part, fid, FileKind.CAPTURE, len(data), "0" * 64), path, len(data), committed_ns)


async def test_postgres_store_implements_the_store_interface(pg_env: CloudEnv) -> None:
    assert isinstance(pg_env.store, Store)
    assert pg_env.backend == "postgresql"


async def test_the_same_uploads_give_the_same_answers_as_sqlite(pg_env: CloudEnv, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_700_000_000_123_456_789)  # commit times (and a plain file's) agree
    sqlite_env = make_env(tmp_path / "sqlite")
    odd = {"max": 2**256 - 1, "min": -(2**63), "nan": float("nan"), "b": b"\xff\x00", "u": "\u2603\x00",
           "keys": {"": 0, "z": 1, "a": 2}, "deep": [[[[1.5e300]]]]}
    header = CaptureHeader(new_file_id(), PART_A, "sensor", "s1", "Readings", {"n": 2**63 - 1}, ("t", "site:x"),
                           "tabular", metadata={"retention_policy": {"days": 30}})
    w = CaptureWriter.create(tmp_path / "odd", header)
    for i in range(4):
        w.append(CaptureRecord(i, 2**62 + i, {**odd, "i": i}, {"m": i} if i % 2 else None))
    files = [(header.file_id, w.finish().read_bytes(), {})]
    for k in range(3):  # equal requested times across files: the sort must break ties the same way
        fid, data = tabular_capture(tmp_path / f"t{k}", n=6, t0=500, step=1, tags=("a", "b"))
        files.append((fid, data, {}))
    fid, data = binary_capture(tmp_path / "bin", [b"\xff\xd8one", b"\xff\xd8two"], metadata=[None, {"label": "cat"}])
    files.append((fid, data, {}))
    files.append(("plainfile-0001", b"a,b\n1,2\n", {"kind": "file", "name": "logs/run.csv"}))

    async def answers(e: CloudEnv) -> dict:
        async with e.client() as c:
            for fid, data, extra in files:
                assert (await upload(c, fid, data, chunk=4096, **extra)).status_code == 200
            got = {}
            for path, params in [("/v1/tabular", {"limit": 1000}), ("/v1/tabular", {"tag": "site:x"}),
                                 ("/v1/tabular", {"limit": 5}), ("/v1/binary", {}), ("/v1/tabular", {"start": "2"})]:
                r = await c.get(path, params=params)
                got[(path, tuple(params.items()))] = r.json()
            got["files"] = (await c.get("/v1/files", params={"limit": 1000})).json()
            summary = (await c.get("/v1/summary")).json()
            summary.pop("mql")
            got["summary"] = summary
            r = await c.post("/v1/tabular/sql", json={
                "query": "SELECT * FROM readings ORDER BY requested_ns, file_id, record_index"})
            got["sql"] = r.json()
        return got

    pg, lite = await answers(pg_env), await answers(sqlite_env)
    assert pg.keys() == lite.keys()
    for key in lite:
        assert pg[key] == lite[key], key
    assert len(lite["sql"]["rows"]) == 22 and lite["sql"]["rows"][0][12].startswith('{"max":')  # payload text, as kept
    assert await pg_env.store.statistics() == await sqlite_env.store.statistics()


def _commit_in_threads(stores: list[PostgresStore], batches: list[list[Commit]]) -> list[list[bool]]:
    """Run `store.commit_many(batch)` for every (store, batch) at once, each in its own thread and Trio run."""
    results: list[list[bool] | BaseException] = [[] for _ in batches]
    start = threading.Barrier(len(batches))

    def one(i: int) -> None:
        start.wait()
        try:
            results[i] = trio.run(stores[i % len(stores)].commit_many, batches[i])
        except BaseException as exc:  # noqa: BLE001  (reported below)
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


def test_two_processes_committing_the_same_files_at_once_store_each_row_once(
        postgres_server: PostgresServer, schema: str, tmp_path: Path) -> None:  # noqa: F811
    stores = [_store(postgres_server, schema) for _ in range(2)]  # as two cloud processes would have
    try:
        commits = []
        for k in range(8):
            fid, data, path = _capture(tmp_path / str(k), n=50 + k)
            rows = _ingest(PART_A, fid, data, path)
            commits.append(Commit(rows.file, rows.tabular, rows.binary))
        # each "process" commits all eight in a group, in opposite orders, twice over
        batches = [commits, commits[::-1], commits[2:] + commits[:2], commits[::-1]]
        results = _commit_in_threads(stores, batches)
        for k in range(len(commits)):
            assert sum(r[batches[i].index(commits[k])] for i, r in enumerate(results)) == 1, k  # one True per file
        stats = trio.run(stores[1].statistics)
        assert (stats.files, stats.tabular_rows) == (8, sum(50 + k for k in range(8)))
        with psycopg.connect(postgres_server.url()) as db:
            dup = db.execute(f"SELECT count(*) FROM (SELECT file_id, record_index FROM {schema}.tabular "
                             "GROUP BY 1, 2 HAVING count(*) > 1) d").fetchone()[0]
        assert dup == 0
    finally:
        for s in stores:
            s.close_sync()


def test_staged_commits_of_one_file_from_two_processes_publish_it_once_and_whole(
        postgres_server: PostgresServer, schema: str, tmp_path: Path) -> None:  # noqa: F811
    stores = [_store(postgres_server, schema) for _ in range(2)]
    try:
        fid, data, path = _capture(tmp_path, n=300)
        rows = _ingest(PART_A, fid, data, path)

        async def stage_and_commit(store: PostgresStore) -> bool | str:
            await store.drop_staged(PART_A, fid)  # as the upload route does before staging
            for i in range(0, 300, 60):
                await store.stage_rows(rows.tabular[i:i + 60], [])
                await trio.sleep(0)
            try:
                return await store.commit(rows.file, [], [], staged=True)
            except StoreUnavailable as exc:  # the other process dropped rows this one staged: retry later
                return str(exc)

        out: list = [None, None]
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, trio.run(stage_and_commit, stores[i])))
                   for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert out.count(True) <= 1 and all(o is False or o is True or "another cloud process" in o for o in out), out
        if True not in out:  # both were cut short by the other: the agent's retry commits it
            assert trio.run(stage_and_commit, stores[0]) is True
        stats = trio.run(stores[0].statistics)
        assert (stats.files, stats.tabular_rows) == (1, 300)
        got = trio.run(stores[1].query_tabular, PART_A, Query(limit=1000))
        assert [r.record_index for r in got] == list(range(300))
    finally:
        for s in stores:
            s.close_sync()


def test_two_processes_creating_the_schema_at_once_both_start(postgres_server: PostgresServer, schema: str) -> None:  # noqa: F811
    stores = [_store(postgres_server, schema) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def open_one(s: PostgresStore) -> None:
        start.wait()
        try:
            s.prepare_sync()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == []
        stores[0].add_part_sync(PART_A, SECRET_A)
        assert trio.run(stores[3].verify_part, PART_A, SECRET_A)
    finally:
        for s in stores:
            s.close_sync()


def test_two_processes_expiring_at_once_delete_each_file_once(
        postgres_server: PostgresServer, schema: str, tmp_path: Path) -> None:  # noqa: F811
    stores = [_store(postgres_server, schema) for _ in range(2)]
    try:
        day = retention.DAY_NS
        due = set()
        for k in range(6):
            fid, data, path = _capture(tmp_path / str(k), n=20, metadata={"retention_policy": {"days": 1}})
            rows = _ingest(PART_A, fid, data, path, committed_ns=10 * day + k)
            assert trio.run(stores[0].commit, rows.file, rows.tabular, rows.binary)
            due.add(fid)
        fid, data, path = _capture(tmp_path / "keep", n=5)  # no policy: stays
        rows = _ingest(PART_A, fid, data, path, committed_ns=10 * day)
        trio.run(stores[0].commit, rows.file, rows.tabular, rows.binary)
        gone: list[list[str]] = [[], []]
        start = threading.Barrier(2)

        def sweep(i: int) -> None:
            start.wait()
            gone[i] = [f.file_id for f in trio.run(stores[i].expire, 12 * day)]

        threads = [threading.Thread(target=sweep, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert set(gone[0]) | set(gone[1]) == due and not set(gone[0]) & set(gone[1]), gone
        assert trio.run(stores[1].statistics).tabular_rows == 5
    finally:
        for s in stores:
            s.close_sync()


async def test_a_second_process_skips_the_sweep_while_one_runs(pg_env: CloudEnv, postgres_server: PostgresServer,  # noqa: F811
                                                               tmp_path: Path) -> None:
    store = pg_env.store
    other = _store(postgres_server, store.schema)  # the same database and schema: another cloud process
    other_cloud = create_app(tmp_path / "other", other).state.cloud
    try:
        fid, data, path = _capture(tmp_path, n=3, metadata={"retention_policy": {"days": 0}})
        rows = _ingest(PART_A, fid, data, path, committed_ns=time.time_ns())
        assert await store.commit(rows.file, rows.tabular, rows.binary)
        async with store.exclusive_sweep() as mine:
            assert mine
            assert await apply_retention(other_cloud) == []  # skipped: the first process holds the sweep
            async with other.exclusive_sweep() as theirs:
                assert not theirs
        assert [f.file_id for f in await apply_retention(other_cloud)] == [fid]  # free again: it sweeps
        assert (await store.get_file(PART_A, fid)).expired_ns is not None
    finally:
        await other.aclose()


def _dead_url(srv: PostgresServer) -> str:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return srv.url().replace(f":{srv.port}/", f":{port}/")


def test_an_unreachable_server_is_store_unavailable_at_once(postgres_server: PostgresServer) -> None:  # noqa: F811
    store = PostgresStore(_dead_url(postgres_server), scrypt_n=TEST_SCRYPT_N, connect_timeout_s=2)
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match="PostgreSQL at 127.0.0.1"):
        store.add_part_sync(PART_A, SECRET_A)
    assert time.monotonic() - start < 5
    store.close_sync()
    wrong = PostgresStore(postgres_server.url(password="wrong"), scrypt_n=TEST_SCRYPT_N)
    with pytest.raises(StoreUnavailable, match="password authentication failed"):
        wrong.prepare_sync()
    wrong.close_sync()


async def test_a_server_that_goes_away_makes_requests_503_not_500(tmp_path: Path) -> None:
    from tests import postgres_kit

    try:
        srv = postgres_kit.start()  # a server of this test's own, to stop
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        store = PostgresStore(srv.url(), scrypt_n=TEST_SCRYPT_N, connect_timeout_s=2, pool_wait_s=3)
        store.add_part_sync(PART_A, SECRET_A)
        e = CloudEnv(create_app(tmp_path / "cloud", store), store, tmp_path / "cloud", backend="postgresql")
        fid, data = tabular_capture(tmp_path, n=3)
        async with e.client() as c:
            assert (await upload(c, fid, data)).status_code == 200
            srv.kill_process()
            with trio.fail_after(10):  # the first call waits for the pool (pool_wait_s) at most
                r = await c.get("/v1/tabular")
                assert r.status_code == 503 and r.json()["error"] == "store unavailable", r.text
            with trio.fail_after(2):  # then at once, without waiting for the pool each time
                r = await c.post(f"/v1/files/{fid}x", json={"kind": "capture", "size": 1, "sha256": "0" * 64})
                assert r.status_code == 503, r.text
            srv.launch()  # the server comes back: so does the cloud, with the same data
            assert srv.wait_ready()
            with trio.fail_after(15):
                r = await c.get("/v1/tabular")
            assert r.status_code == 200 and len(r.json()["items"]) == 3, r.text
        await store.aclose()
    finally:
        srv.stop()


async def test_a_name_postgresql_cannot_hold_is_a_rejected_file_not_a_500(pg_env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path, n=3, resource=("sensor", "s\x001", "Readings"))
    async with pg_env.client() as c:
        r = await upload(c, fid, data)
    assert r.status_code == 422 and "cannot store" in r.json()["detail"], r.text
    assert (await pg_env.store.statistics()).tabular_rows == 0


def test_the_cli_runs_parts_and_retention_on_postgresql(postgres_server: PostgresServer, schema: str,  # noqa: F811
                                                        tmp_path: Path, capsys) -> None:
    url = postgres_server.url() + f"?schema={schema}"
    assert cli_main(["cloud", "add-part", "--data-dir", str(tmp_path), "--store", url, "robot-1"]) == 0
    secret = capsys.readouterr().out.strip()
    assert cli_main(["cloud", "add-part", "--data-dir", str(tmp_path), "--store", url, "robot-1"]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli_main(["cloud", "disable-part", "--data-dir", str(tmp_path), "--store", url, "robot-1",
                     "--reason", "lost"]) == 0
    assert cli_main(["cloud", "parts", "--data-dir", str(tmp_path), "--store", url]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    listed = json.loads(line)
    assert (listed["part_id"], listed["enabled"], listed["disabled_reason"]) == ("robot-1", False, "lost")
    store = _store(postgres_server, schema)
    assert trio.run(store.verify_part, "robot-1", secret)  # the CLI wrote where a serve process reads
    store.close_sync()
    assert cli_main(["cloud", "retention", "--data-dir", str(tmp_path), "--store", url]) == 0
    assert cli_main(["cloud", "remove-part", "--data-dir", str(tmp_path), "--store", url, "robot-1",
                     "--delete-data"]) == 0
    assert cli_main(["cloud", "parts", "--data-dir", str(tmp_path), "--store", url]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("url, words", [
    ("mysql://u@h/db", ["--store", "scheme 'mysql'", "postgresql://"]),
    ("localhost:5432/db", ["--store", "no scheme"]),
    ("postgresql://u@h/db?schema=Bad-Name", ["--store", "schema="]),
    ("postgresql://u:hunter2@h/db?nosuchoption=1", ["--store", "not a valid postgresql URL", "u:***@h"]),
])
def test_a_bad_store_url_is_exit_2_naming_the_flag(tmp_path: Path, capsys, url: str, words: list[str]) -> None:
    for argv in (["parts"], ["add-part", "p1"], ["retention"], ["serve", "--port", "0"]):
        assert cli_main(["cloud", *argv, "--data-dir", str(tmp_path), "--store", url]) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), err
        assert "hunter2" not in err


def test_an_unreachable_store_is_exit_1_with_the_fix(postgres_server: PostgresServer, tmp_path: Path, capsys) -> None:  # noqa: F811
    url = _dead_url(postgres_server)
    assert cli_main(["cloud", "add-part", "--data-dir", str(tmp_path), "--store", url, "p1"]) == 1
    err = capsys.readouterr().err
    assert "PostgreSQL at 127.0.0.1" in err and "check the --store URL" in err and len(err.strip().splitlines()) == 1
    assert cli_main(["cloud", "parts", "--data-dir", str(tmp_path), "--store", url]) == 1


def test_mongodb_uri_stays_an_alias_of_store(tmp_path: Path, capsys) -> None:
    from tests.mongo_standin_query import QueryingMongoStandIn

    standin = QueryingMongoStandIn().start()
    try:
        uri = standin.uri
        assert cli_main(["cloud", "add-part", "--data-dir", str(tmp_path), "--mongodb-uri", uri, "p1"]) == 0
        assert cli_main(["cloud", "parts", "--data-dir", str(tmp_path), "--store", uri]) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["part_id"] == "p1"
        assert cli_main(["cloud", "parts", "--data-dir", str(tmp_path), "--store", uri, "--mongodb-uri",
                         uri + "x"]) == 2
    finally:
        standin.stop()
