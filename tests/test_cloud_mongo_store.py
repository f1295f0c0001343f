"""The MongoDB cloud store: same Store protocol and exactly-once commits without transactions; MQL.

Runs against the MongoDB stand-in (tests/mongo_standin_query.py) and, when
CAPSYNC_TEST_MONGODB_URI is set, against that real server as well.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trio
from pymongo import MongoClient

from capsync.cloud import ingest
from capsync.cloud.app import create_app
from capsync.cloud.cli import main as cli_main
from capsync.cloud.mongo_store import MongoStore
from capsync.cloud.store import Store, StoreUnavailable, Upload
from capsync.runtime.sync_protocol import FileKind
from tests.mongo_standin import REAL_URI_ENV
from tests.mongo_standin_query import QueryingMongoStandIn
from tests.test_cloud_support import (  # noqa: F401
    PART_A, PART_B, SECRET_A, SECRET_B, TEST_SCRYPT_N, CloudEnv, binary_capture, env, tabular_capture, upload,
)

ROOT = Path(__file__).resolve().parents[1]


def _database() -> str:
    return f"capsync_cloud_test_{os.getpid()}_{threading.get_ident() % 10000}_{time.monotonic_ns() % 10**9}"


@contextmanager
def open_mongo_env(kind: str, tmp_path: Path) -> Iterator[CloudEnv]:
    """A cloud app on a MongoStore with parts A and B: on the stand-in (`kind` "standin"), or on the real
    server at CAPSYNC_TEST_MONGODB_URI ("real"; skips the test when it is not set). `.standin` is set
    on the env for the stand-in, else None."""
    standin = None
    if kind == "real":
        uri = os.environ.get(REAL_URI_ENV)
        if not uri:
            pytest.skip(f"set {REAL_URI_ENV} to run against a real MongoDB")
    else:
        standin = QueryingMongoStandIn().start()
        uri = standin.uri
    db = _database()
    store = MongoStore(uri, db, scrypt_n=TEST_SCRYPT_N, server_selection_timeout_ms=400)
    try:
        store.add_part_sync(PART_A, SECRET_A)
        store.add_part_sync(PART_B, SECRET_B)
        e = CloudEnv(create_app(tmp_path / "cloud", store), store, tmp_path / "cloud")  # type: ignore[arg-type]
        e.standin = standin  # type: ignore[attr-defined]
        yield e
    finally:
        store.close_sync()
        if standin is not None:
            standin.stop()
        else:
            with MongoClient(uri, serverSelectionTimeoutMS=3000) as client:
                client.drop_database(db)


@pytest.fixture(params=["standin", "real"])
def mongo_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CloudEnv]:
    """The cloud on the MongoDB stand-in, or on a real MongoDB when CAPSYNC_TEST_MONGODB_URI is set."""
    with open_mongo_env(request.param, tmp_path) as e:
        yield e


async def test_mongo_store_implements_the_store_interface_with_unique_indexes(mongo_env: CloudEnv) -> None:
    assert isinstance(mongo_env.store, Store)
    await trio.to_thread.run_sync(mongo_env.store.prepare_sync)
    for coll in ("readings", "binary_items"):
        keys = [list(ix["key"]) for ix in mongo_env.store.db[coll].list_indexes() if ix.get("unique")]
        assert ["part_id", "file_id", "record_index"] in keys


async def test_uploads_and_queries_answer_as_on_sqlite(mongo_env: CloudEnv, env: CloudEnv, tmp_path: Path) -> None:
    files = [tabular_capture(tmp_path / f"t{k}", n=12, t0=1000 + k, step=3, tags=("x", f"k{k}")) for k in range(3)]
    files.append(binary_capture(tmp_path / "b", [b"img0", b"img1"], metadata=[{"detections": [{"class_name": "a"}]}, None]))
    answers = []
    for e in (mongo_env, env):
        async with e.client() as c:
            for fid, data in files:
                r = await upload(c, fid, data, chunk=700)
                assert r.status_code == 200 and r.json()["state"] == "committed", r.text
            got = []
            for path, params in [("/v1/tabular", {"limit": 5}), ("/v1/tabular", {"tag": "k1", "start": "1010"}),
                                 ("/v1/binary", {}), ("/v1/files", {})]:
                pages, cursor = [], None
                while True:
                    body = (await c.get(path, params={**params, **({"cursor": cursor} if cursor else {})})).json()
                    pages += [{k: v for k, v in i.items() if k not in ("committed", "committed_ns")} for i in body["items"]]
                    if not (cursor := body["next_cursor"]):
                        break
                got.append(pages)
            got.append((await c.get(f"/v1/binary/{files[-1][0]}-1")).content)
            got.append((await c.get("/v1/summary")).json()["resources"])
            got.append((await c.post("/v1/tabular/sql", json={"query": "SELECT count(*), sum(json_extract(payload, '$.i')) "
                                                                       "FROM readings WHERE tags LIKE '%k2%'"})).json())
        async with e.client(PART_B) as b:
            got.append((await b.get("/v1/tabular")).json())
        answers.append(got)
    assert answers[0] == answers[1]
    assert len(answers[0][0]) == 36 and answers[0][4] == b"img1"


async def test_committing_twice_or_concurrently_stores_each_row_once(mongo_env: CloudEnv, tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path, n=30)
    (path,) = tmp_path.rglob("*.capture")
    rows = ingest.capture_file(Upload(PART_A, fid, FileKind.CAPTURE, len(data), "0" * 64), path, len(data), time.time_ns())
    results: list[bool] = []

    async def commit() -> None:
        results.append(await mongo_env.store.commit(rows.file, rows.tabular, rows.binary))

    async with trio.open_nursery() as n:
        for _ in range(3):
            n.start_soon(commit)
    assert sorted(results) == [False, False, True]
    assert await mongo_env.store.commit(rows.file, rows.tabular, rows.binary) is False
    stats = await mongo_env.store.statistics()
    assert (stats.files, stats.tabular_rows) == (1, 30)
    assert mongo_env.store.readings.count_documents({}) == 30  # not only the live ones: no duplicate at all


async def test_a_commit_interrupted_midway_is_invisible_then_completed_by_the_retry(mongo_env: CloudEnv,
                                                                                   tmp_path: Path) -> None:
    standin = mongo_env.standin  # type: ignore[attr-defined]
    if standin is None:
        pytest.skip("needs the stand-in to fail a command midway")
    fid, data = tabular_capture(tmp_path, n=25)
    async with mongo_env.client() as c:
        await upload(c, fid, data, chunk=4096, commit=False)
        standin.fail_next_update = "connection lost (test)"  # rows and marker written, making them live fails
        r = await c.post(f"/v1/files/{fid}/commit")
        assert r.status_code == 500
        assert mongo_env.store.readings.count_documents({"file_id": fid}) == 25  # written, but not live:
        assert (await c.get("/v1/tabular")).json()["items"] == []
        status = (await c.get(f"/v1/files/{fid}")).json()
        assert (status["state"], status["offset"]) == ("partial", len(data))  # the agent will commit again
        r = await c.post(f"/v1/files/{fid}/commit")
        assert (r.status_code, r.json()["state"], r.json()["records"]) == (200, "committed", 25)
        rows = (await c.get("/v1/tabular", params={"limit": 1000})).json()["items"]
    assert sorted(x["record_index"] for x in rows) == list(range(25))
    assert mongo_env.store.readings.count_documents({}) == 25


async def test_rows_left_by_a_commit_that_died_before_its_marker_are_replaced(mongo_env: CloudEnv,
                                                                             tmp_path: Path) -> None:
    fid, data = tabular_capture(tmp_path, n=10)
    (path,) = tmp_path.rglob("*.capture")
    rows = ingest.capture_file(Upload(PART_A, fid, FileKind.CAPTURE, len(data), "0" * 64), path, len(data), 1)
    store = mongo_env.store
    from capsync.cloud import mongo_docs

    # A crash after part of the rows: 4 rows written, some with stale content, no files document.
    stale = [mongo_docs.tabular_doc(r) for r in rows.tabular[:4]]
    stale[0]["payload"] = {"stale": True}
    store.readings.insert_many(stale)
    assert await store.commit(rows.file, rows.tabular, rows.binary) is True
    got = await store.query_tabular(PART_A, __import__("capsync.cloud.store", fromlist=["Query"]).Query(limit=100))
    assert [r.record_index for r in got] == list(range(10)) and got[0].payload == {"i": 0, "v": 0.0}


async def test_payloads_bson_cannot_hold_round_trip_exactly(mongo_env: CloudEnv, tmp_path: Path) -> None:
    from capsync.runtime.capture_file import CaptureHeader, CaptureRecord, CaptureWriter, new_file_id

    header = CaptureHeader(new_file_id(), PART_A, "sensor", "odd", "Readings", {"$p": 1}, (), "tabular")
    w = CaptureWriter.create(tmp_path, header)
    payload = {"big": 2**70, "raw": b"\x00\x01", "$dollar": 1, "nested": {"x.y": [1, 2.5, None, "s"]}}
    w.append(CaptureRecord(5, 6, payload))
    data = w.finish().read_bytes()
    async with mongo_env.client() as c:
        assert (await upload(c, header.file_id, data, chunk=4096)).status_code == 200
        item = (await c.get("/v1/tabular")).json()["items"][0]
        r = await c.post("/v1/tabular/mql", json={"pipeline": [{"$project": {"_id": 0, "payload": 1}}]})
    assert item["payload"] == {"big": 2**70, "raw": {"$base64": "AAE="}, "$dollar": 1, "nested": {"x.y": [1, 2.5, None, "s"]}}
    assert item["params"] == {"$p": 1}
    assert r.json()["rows"][0][0]["payload"]["big"] == str(2**70)  # pipelines see the BSON-safe form


async def test_mql_runs_over_the_callers_documents_only(mongo_env: CloudEnv, tmp_path: Path) -> None:
    async with mongo_env.client(PART_A) as a, mongo_env.client(PART_B) as b:
        for sub, res, n in [("s", ("sensor", "s1", "Readings"), 6), ("m", ("motor", "m1", "Position"), 3)]:
            fid, data = tabular_capture(tmp_path / sub, n=n, resource=res)
            await upload(a, fid, data, chunk=4096)
        fid, data = tabular_capture(tmp_path / "b", part=PART_B, n=40)
        await upload(b, fid, data, chunk=4096)
        r = await a.post("/v1/tabular/mql", json={"pipeline": [{"$count": "n"}]})
        assert r.status_code == 200 and r.json()["rows"] == [[{"n": 9}]], r.text
        assert (await b.post("/v1/tabular/mql", json={"pipeline": [{"$count": "n"}]})).json()["rows"] == [[{"n": 40}]]
        r = await a.post("/v1/tabular/mql", json={"pipeline": [
            {"$match": {"part_id": PART_B}}, {"$count": "n"}]})  # asking for B's documents finds none
        assert r.json()["rows"] == []
        r = await a.post("/v1/tabular/mql", json={"pipeline": [
            {"$group": {"_id": "$resource_name", "n": {"$sum": 1}, "top": {"$max": "$payload.i"}}}, {"$sort": {"_id": 1}}]})
        assert r.json()["rows"] == [[{"_id": "m1", "n": 3, "top": 2}], [{"_id": "s1", "n": 6, "top": 5}]]
        r = await a.post("/v1/tabular/mql", json={"pipeline": [{"$sort": {"requested_ns": 1}}], "limit": 4})
        body = r.json()
        assert (body["row_count"], body["truncated"]) == (4, True)
        assert "live" not in body["rows"][0][0] and body["rows"][0][0]["requested"].endswith("Z")
        for pipeline, reason in [
            ([{"$out": "stolen"}], "$out"), ([{"$merge": {"into": "x"}}], "$merge"),
            ([{"$lookup": {"from": "parts", "localField": "a", "foreignField": "_id", "as": "p"}}], "$lookup"),
            ([{"$unionWith": "readings"}], "$unionWith"), ([{"$match": {"$where": "true"}}], "$where"),
            ([{"$facet": {"x": [{"$out": "y"}]}}], "$out"), ([{"$collStats": {}}], "not an allowed stage"),
            ([{"$match": {}, "$limit": 1}], "exactly one key"), ({"$match": {}}, "invalid query request"),
        ]:
            r = await a.post("/v1/tabular/mql", json={"pipeline": pipeline})
            assert r.status_code == 400 and reason in r.text, (pipeline, r.text)
        assert (await a.post("/v1/tabular/mql", content=b"{nope", headers={"content-type": "application/json"})).status_code == 400
    assert mongo_env.store.db["stolen"].count_documents({}) == 0


async def test_mql_on_the_sqlite_store_is_501_with_a_reason(env: CloudEnv) -> None:
    async with env.client() as c:
        r = await c.post("/v1/tabular/mql", json={"pipeline": []})
    assert r.status_code == 501 and "--mongodb-uri" in r.json()["detail"]


async def test_an_unreachable_mongodb_is_503_not_500(mongo_env: CloudEnv) -> None:
    standin = mongo_env.standin  # type: ignore[attr-defined]
    if standin is None:
        pytest.skip("needs the stand-in to stop it")
    async with mongo_env.client() as c:
        assert (await c.get("/v1/files")).status_code == 200
        standin.stop()
        mongo_env.app.state.cloud.credentials._ok.clear()
        r = await c.get("/v1/files")
    assert r.status_code == 503 and r.json()["error"] == "store unavailable" and r.headers["retry-after"]


def test_cli_serves_and_adds_parts_on_mongodb(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("capsync.cloud.commands.configure_logging", lambda *a, **k: None)  # keep pytest's own log handlers
    standin = QueryingMongoStandIn().start()
    uri = standin.uri.replace("/?", "/cli_db?")
    try:
        cli = [sys.executable, "-m", "capsync.cloud.cli", "cloud"]
        assert cli_main(["cloud", "add-part", "--data-dir", str(tmp_path), "--mongodb-uri", uri, "robot-9"]) == 0
        secret = capsys.readouterr().out.strip()
        assert cli_main(["cloud", "add-part", "--data-dir", str(tmp_path), "--mongodb-uri", uri, "robot-9"]) == 2
        proc = subprocess.Popen([*cli, "serve", "--data-dir", str(tmp_path), "--port", "0", "--mongodb-uri", uri],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            port = int(line.rsplit(":", 1)[1])
            fid, data = tabular_capture(tmp_path / "caps", part="robot-9", n=8)

            async def push() -> int:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", auth=("robot-9", secret)) as c:
                    return (await upload(c, fid, data, chunk=4096)).json()["records"]

            assert trio.run(push) == 8
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 0
        assert len(standin.documents("cli_db", "readings")) == 8
        assert not (tmp_path / "cloud.sqlite").exists()  # nothing went to SQLite
        dead = "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200"
        assert cli_main(["cloud", "serve", "--data-dir", str(tmp_path), "--port", "0", "--mongodb-uri", dead]) == 1
        assert cli_main(["cloud", "add-part", "--data-dir", str(tmp_path), "--mongodb-uri", dead, "robot-8"]) == 1
    finally:
        standin.stop()


def test_store_unavailable_is_what_a_dead_server_raises() -> None:
    store = MongoStore("mongodb://127.0.0.1:1/?directConnection=true", "x", server_selection_timeout_ms=100)
    with pytest.raises(StoreUnavailable):
        store.prepare_sync()
    store.close_sync()
