"""A big capture file is committed in bounded batches: one part's big commit never holds the store
for the whole file, another part commits between its batches, and staged rows stay invisible
until the commit (or vanish when the file is rejected). On SQLite, the MongoDB stand-in and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import cbor2

from capsync.cloud import ingest
from capsync.runtime.capture_file import RECORD_MARK
from tests.test_cloud_hostile_ingest import _frame
from tests.test_cloud_quota import qenv  # noqa: F401
from tests.test_cloud_support import PART_A, PART_B, CloudEnv, tabular_capture, upload

BATCH = 100
RECORDS = 2000


def _staged_rows(env: CloudEnv) -> int:
    store = env.store
    if hasattr(store, "_db"):  # SQLite
        return sum(store._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("staged_tabular", "staged_binary"))
    if hasattr(store, "schema"):  # PostgreSQL
        import psycopg

        with psycopg.connect(store.url) as db:
            return sum(db.execute(f"SELECT count(*) FROM {store.schema}.{t}").fetchone()[0]
                       for t in ("staged_tabular", "staged_binary"))
    return store.readings.count_documents({"live": False}) + store.binary.count_documents({"live": False})


async def test_another_part_commits_between_the_batches_of_a_big_file(qenv: CloudEnv, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ingest, "BATCH_ROWS", BATCH)
    store = qenv.store
    big_id, big = tabular_capture(tmp_path / "a", PART_A, n=RECORDS)
    small_id, small = tabular_capture(tmp_path / "b", PART_B, n=3)
    calls: list[tuple[str, int]] = []
    seen_during: dict[str, object] = {}
    real_stage, real_commit_many = store.stage_rows, store.commit_many

    async def stage_rows(tabular, binary):
        part = (tabular or binary)[0].part_id
        calls.append((part, len(tabular) + len(binary)))
        await real_stage(tabular, binary)
        if part == PART_A and len(calls) == 3:  # A is mid-file: B's whole upload and commit happen now
            async with qenv.client(PART_B) as b, qenv.client(PART_A) as a:
                r = await upload(b, small_id, small, chunk=4096)
                seen_during["b_commit"] = r.json()
                seen_during["a_rows"] = (await a.get("/v1/tabular")).json()["items"]
                seen_during["a_status"] = (await a.get(f"/v1/files/{big_id}")).json()["state"]

    async def commit_many(commits):
        calls.extend((c.file.part_id, len(c.tabular) + len(c.binary)) for c in commits)
        return await real_commit_many(commits)

    store.stage_rows, store.commit_many = stage_rows, commit_many
    async with qenv.client(PART_A) as a:
        r = await upload(a, big_id, big, chunk=1 << 20)
        assert r.status_code == 200 and r.json()["records"] == RECORDS, r.text
        rows = (await a.get("/v1/tabular", params={"limit": 1000})).json()
    assert seen_during["b_commit"]["state"] == "committed"
    assert seen_during["a_rows"] == [] and seen_during["a_status"] == "partial"  # staged rows are invisible
    a_calls = [n for part, n in calls if part == PART_A]
    assert len(a_calls) >= RECORDS // BATCH and max(a_calls) <= BATCH  # no store call carries the whole file
    b_at = calls.index((PART_B, 0))  # B's commit ran between A's batches
    assert 0 < b_at < len(calls) - 1 and calls[-1] == (PART_A, 0)
    assert len(rows["items"]) == 1000 and rows["next_cursor"]
    assert _staged_rows(qenv) == 0


async def test_a_file_rejected_after_some_batches_leaves_no_staged_rows(qenv: CloudEnv, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ingest, "BATCH_ROWS", BATCH)
    fid, good = tabular_capture(tmp_path, PART_A, n=5 * BATCH)
    data = good + _frame(RECORD_MARK, cbor2.dumps([2**63, 1, {"x": 1}, None]))  # bad record after 5 batches
    async with qenv.client(PART_A) as a:
        r = await upload(a, fid, data, chunk=1 << 20)
        assert r.status_code == 422 and "2^63" in r.json()["detail"], r.text
        assert (await a.get("/v1/tabular")).json()["items"] == []
        assert _staged_rows(qenv) == 0
        r = await upload(a, fid, good, chunk=1 << 20)  # the good file, same id, commits whole
        assert r.status_code == 200 and r.json()["records"] == 5 * BATCH, r.text
