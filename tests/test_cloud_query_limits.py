"""SQL and MQL answers are bounded in bytes and streamed, and query slots are shared fairly between parts."""

from __future__ import annotations

from pathlib import Path

import trio

from capsync.cloud import mongo_store, user_queries
from capsync.cloud.sql import MAX_RESULT_BYTES
from tests.test_cloud_mongo_store import mongo_env  # noqa: F401
from tests.test_cloud_support import PART_A, PART_B, CloudEnv, env, tabular_capture, upload  # noqa: F401

_ROWS_OF_1MB = ("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 30) "
                "SELECT x, printf('%.*c', 1000000, 'a') AS big FROM n")


async def test_an_sql_answer_stops_at_max_result_bytes_with_the_reason(env: CloudEnv) -> None:
    async with env.client() as a:
        r = await a.post("/v1/tabular/sql", json={"query": _ROWS_OF_1MB})
        assert r.status_code == 200, r.text[:300]
        body = r.json()
        assert len(r.content) <= MAX_RESULT_BYTES + 4096
        assert body["truncated"] is True and 0 < body["row_count"] < 30 and body["row_count"] == len(body["rows"])
        assert "bytes" in body["truncated_reason"], body["truncated_reason"]
        assert [row[0] for row in body["rows"]] == list(range(1, body["row_count"] + 1))
        r = await a.post("/v1/tabular/sql", json={"query": "SELECT printf('%.*c', 9000000, 'a')"})
        assert r.status_code == 400 and "one row of the result" in r.json()["detail"], r.text[:300]
        r = await a.post("/v1/tabular/sql", json={"query": "SELECT 1 UNION ALL SELECT 2", "limit": 1})
        assert r.json()["truncated"] is True and "rows asked for" in r.json()["truncated_reason"]


async def test_an_mql_answer_stops_at_max_result_bytes(mongo_env: CloudEnv, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(mongo_store, "MAX_RESULT_BYTES", 2000)
    async with mongo_env.client(PART_A) as a:
        fid, data = tabular_capture(tmp_path / "s", n=40)
        await upload(a, fid, data, chunk=4096)
        r = await a.post("/v1/tabular/mql", json={"pipeline": [{"$sort": {"requested_ns": 1}}]})
    body = r.json()
    assert r.status_code == 200 and body["truncated"] is True and 0 < body["row_count"] < 40, r.text[:300]
    assert "bytes" in body["truncated_reason"] and len(r.content) < 2000 + 1000


async def test_one_part_cannot_hold_the_query_slots(env: CloudEnv, monkeypatch) -> None:
    monkeypatch.setattr(user_queries, "QUERY_TIMEOUT_S", 2.0)
    slow = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
    answers: list[int] = []

    async def hog(c) -> None:
        answers.append((await c.post("/v1/tabular/sql", json={"query": slow})).status_code)

    async with env.client(PART_A) as a, env.client(PART_B) as b:
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(hog, a)
            await trio.sleep(0.3)
            start = trio.current_time()
            r = await b.post("/v1/tabular/sql", json={"query": "SELECT 1"})
            took = trio.current_time() - start
        assert r.status_code == 200 and r.json()["rows"] == [[1]]
        assert took < 1.0, took  # not behind the hog's 2 s queries
    assert sorted(answers) == [400] + [429] * 5, answers  # one ran (and timed out), the rest were turned away
