"""`GET /v1/tabular/aggregate` on every store: buckets checked against the rows themselves, series kept
apart by params, gaps left as gaps, part isolation, and hostile parameters answered 400."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsync.cloud.aggregate import MAX_BUCKETS
from tests.bulk_data import commit_all, every, reading_files
from tests.test_cloud_support import BACKENDS, PART_A, PART_B, CloudEnv, open_env

S = 10**9
T0 = 1_700_000_000 * S
ANALOGS = ("board", "b1", "Analogs")


@pytest.fixture(params=[b for b in BACKENDS if b != "s3"])  # the S3 backend changes where bytes go, not rows
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CloudEnv]:
    """The aggregate holds on every backend the cloud runs on."""
    with open_env(request.param, tmp_path) as e:
        yield e


def _payload(reader: str):
    def make(i: int, t: int) -> dict:
        # A1 climbs, A2 falls: merged into one series they would zigzag.
        v = i if reader == "A1" else 1000 - i
        return {"value": v, "pose": {"x": i * 0.25, "joints": [i % 5, -1.5]}, "ok": True, "name": "s"}
    return make


async def _data(env: CloudEnv) -> dict:
    """A1 and A2 at 5 Hz for 60 s with a gap from 20 s to 40 s; part B has a series of its own."""
    times = [t for t in every(T0, T0 + 60 * S, 5) if not T0 + 20 * S <= t < T0 + 40 * S]
    rows = {}
    for reader in ("A1", "A2"):
        commits = list(reading_files(PART_A, ANALOGS, times, _payload(reader), params={"reader_name": reader}, per_file=80))
        await commit_all(env.store, commits)
        rows[reader] = [r for c in commits for r in c.tabular]
    await commit_all(env.store, reading_files(PART_B, ("sensor", "other", "Readings"), times, lambda i, t: {"v": i}))
    return rows


def _expected(rows, field, start, width):
    out = defaultdict(list)
    for r in rows:
        value = {"value": r.payload["value"], "pose.x": r.payload["pose"]["x"],
                 "pose.joints[0]": r.payload["pose"]["joints"][0]}[field]
        out[(r.requested_ns - start) // width].append(value)
    return {b: (len(v), min(v), max(v), sum(v) / len(v)) for b, v in sorted(out.items())}


async def test_buckets_match_the_rows_series_stay_apart_and_gaps_stay_gaps(env: CloudEnv) -> None:
    rows = await _data(env)
    async with env.client() as c:
        r = await c.get("/v1/tabular/aggregate", params={"start": T0, "end": T0 + 60 * S, "buckets": 12})
        other = await c.get("/v1/tabular/aggregate", params={"start": T0, "end": T0 + 60 * S, "resource_name": "other"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["bucket_ns"], body["buckets"], body["truncated"]) == (5 * S, 12, False)
    assert [(s["resource_name"], s["params"]) for s in body["series"]] == [
        ("b1", {"reader_name": "A1"}), ("b1", {"reader_name": "A2"})]
    for s in body["series"]:
        fields = {f["field"]: f for f in s["fields"]}
        assert set(fields) == {"value", "pose.x", "pose.joints[0]", "pose.joints[1]"}  # no bool, no string
        for name in ("value", "pose.x", "pose.joints[0]"):
            f = fields[name]
            want = _expected(rows[s["params"]["reader_name"]], name, T0, 5 * S)
            got = {b: (n, lo, hi, mean) for b, n, lo, hi, mean in zip(f["bucket"], f["count"], f["min"], f["max"], f["mean"])}
            assert got.keys() == want.keys()
            for b in want:
                assert got[b][:3] == want[b][:3] and got[b][3] == pytest.approx(want[b][3])
        assert fields["value"]["bucket"] == [0, 1, 2, 3, 8, 9, 10, 11]  # 20 s to 40 s: a gap, not zeros
        assert sum(fields["value"]["count"]) == 200
    a1 = {f["field"]: f for f in body["series"][0]["fields"]}["value"]
    assert a1["min"][0] == 0 and a1["max"][-1] == 199  # A1 climbs on its own line
    assert other.json()["series"] == []  # part B's resource is not part A's to see


async def test_a_window_and_filters_select_rows_and_part_b_sees_only_its_own(env: CloudEnv) -> None:
    await _data(env)
    async with env.client(PART_B) as c:
        b = (await c.get("/v1/tabular/aggregate", params={"start": T0, "end": T0 + 60 * S, "buckets": 1})).json()
    async with env.client() as c:
        a = (await c.get("/v1/tabular/aggregate", params={
            "start": T0 + 5 * S, "end": T0 + 10 * S, "buckets": 5, "method": "Analogs"})).json()
    assert [s["resource_name"] for s in b["series"]] == ["other"] and b["series"][0]["fields"][0]["count"] == [200]
    counts = {s["params"]["reader_name"]: sum(f["count"]) for s in a["series"] for f in s["fields"] if f["field"] == "value"}
    assert counts == {"A1": 25, "A2": 25}


@pytest.mark.parametrize("params, error", [
    ({}, "start and end are required"),
    ({"start": 1}, "start and end are required"),
    ({"start": 10, "end": 5}, "invalid time range"),
    ({"start": 5, "end": 5}, "invalid time range"),
    ({"start": 1, "end": 9, "buckets": 0}, "invalid buckets"),
    ({"start": 1, "end": 9, "buckets": MAX_BUCKETS + 1}, "invalid buckets"),
    ({"start": 1, "end": 9, "buckets": "1e3"}, "invalid buckets"),
    ({"start": 1, "end": 9, "buckets": "9" * 40}, "invalid buckets"),
    ({"start": 1, "end": 9, "limit": 5}, "unknown query parameter"),
    ({"start": "yesterday", "end": 9}, "invalid start"),
])
async def test_hostile_aggregate_parameters_are_clear_400s(params: dict, error: str, tmp_path: Path) -> None:
    with open_env("sqlite", tmp_path) as env:
        async with env.client() as c:
            r = await c.get("/v1/tabular/aggregate", params=params)
    assert r.status_code == 400 and r.json()["error"] == error, r.text


async def test_the_newest_rows_come_first_with_order_desc_and_page_backwards(env: CloudEnv) -> None:
    await _data(env)
    async with env.client() as c:
        seen, cursor = [], None
        for _ in range(3):
            page = (await c.get("/v1/tabular", params={"order": "desc", "limit": 7, "resource_name": "b1",
                                                        **({"cursor": cursor} if cursor else {})})).json()
            seen += [(i["requested_ns"], i["file_id"], i["record_index"]) for i in page["items"]]
            cursor = page["next_cursor"]
        bad = await c.get("/v1/tabular", params={"order": "sideways"})
    assert len(seen) == 21 and seen == sorted(seen, reverse=True) and len(set(seen)) == 21
    assert seen[0][0] == T0 + 60 * S - S // 5  # the newest reading first
    assert bad.status_code == 400 and bad.json()["error"] == "invalid order"
