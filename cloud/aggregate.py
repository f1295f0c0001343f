"""`GET /v1/tabular/aggregate`: per time bucket, the min, max, mean and count of every numeric payload
field of a part's readings, computed by the store itself (docs/cloud.md), so that a chart over a day
or a month of 100 Hz data is drawn from all of it.

Parameters: the query filters (`resource_type`, `resource_name`, `method`, `tag`), `start` and `end`
(required: the window), and `buckets` (1..MAX_BUCKETS, default DEFAULT_BUCKETS). The window is cut
into `buckets` equal buckets (the last may end past `end`; rows at or after `end` are not counted).

The answer keeps series apart by resource, method and params (board Analogs `A1` and `A2` are two
series) and lists, per field, only the buckets that hold data: a bucket missing between two others
is a gap in the data. At most MAX_ROWS (series, field, bucket) cells are answered; past that the
answer is cut at a series boundary and says so (`truncated`, `truncated_reason`). An aggregate that
runs longer than TIMEOUT_S is stopped (400, with the fix). Like SQL, aggregates share query slots
(at most SLOTS at once, SLOTS_PER_PART of one part: 429 past that).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from itertools import groupby
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from capsync.cloud.http import ApiError, cloud_of, endpoint
from capsync.cloud.query import FILTER_PARAMS, parse_query
from capsync.cloud.store import AggregateRow, Buckets, QueryRefused
from capsync.cloud.timefmt import iso_from_ns
from capsync.cloud.user_queries import QuerySlots

DEFAULT_BUCKETS = 300
MAX_BUCKETS = 2000
MAX_ROWS = 100_000
TIMEOUT_S = 10.0
SLOTS, SLOTS_PER_PART = 4, 2
_BUCKETS_RE = re.compile(r"^[0-9]{1,5}$")


def buckets_of(start_ns: int, end_ns: int, count: int) -> Buckets:
    """`count` equal buckets over [start_ns, end_ns) (at least 1 ns wide; fewer when the window is shorter)."""
    width = max(1, -(-(end_ns - start_ns) // count))
    return Buckets(start_ns, width, -(-(end_ns - start_ns) // width))


def _params(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _series_key(r: AggregateRow) -> tuple:
    return (r.resource_type, r.resource_name, r.method,
            r.params if isinstance(r.params, str) else json.dumps(r.params, sort_keys=True))


def shape(rows: list[AggregateRow], b: Buckets, max_rows: int) -> dict[str, Any]:
    """The answer's `series` from the store's rows (sorted by series, field, bucket), and whether it was cut."""
    truncated = len(rows) > max_rows
    if truncated:  # drop the last series whole: a half series would draw as if it had gaps
        last = _series_key(rows[max_rows])
        rows = [r for r in rows[:max_rows] if _series_key(r) != last]
    series = []
    for _, srows in groupby(rows, key=_series_key):
        srows = list(srows)
        first = srows[0]
        fields = []
        for name, frows in groupby(srows, key=lambda r: r.field):
            frows = list(frows)
            fields.append({
                "field": name, "bucket": [r.bucket for r in frows], "count": [r.count for r in frows],
                "min": [r.min for r in frows], "max": [r.max for r in frows],
                "mean": [r.sum / r.count for r in frows],
            })
        series.append({"resource_type": first.resource_type, "resource_name": first.resource_name,
                       "method": first.method, "params": _params(first.params), "fields": fields})
    out: dict[str, Any] = {"series": series, "truncated": truncated}
    if truncated:
        out["truncated_reason"] = (f"more than {max_rows} (series, field, bucket) cells: narrow the filters "
                                   "or ask for fewer buckets")
    return out


def _slots(request: Request) -> QuerySlots:
    state = request.app.state
    if not hasattr(state, "aggregate_slots"):
        state.aggregate_slots = QuerySlots(SLOTS, SLOTS_PER_PART, wait_s=TIMEOUT_S)
    return state.aggregate_slots


@endpoint
async def aggregate(request: Request) -> Response:
    """`GET /v1/tabular/aggregate`: bucketed min/max/mean/count of the part's numeric fields (see the module doc)."""
    cloud = cloud_of(request)
    part_id = await cloud.authenticate(request)
    q = parse_query(request, FILTER_PARAMS | {"buckets"})
    if q.start_ns is None or q.end_ns is None:
        raise ApiError(400, "start and end are required", "an aggregate is over a time window: pass start and end "
                       "(RFC 3339 or integer ns)")
    raw = request.query_params.get("buckets", str(DEFAULT_BUCKETS))
    if not _BUCKETS_RE.match(raw) or not 1 <= int(raw) <= MAX_BUCKETS:
        raise ApiError(400, "invalid buckets", f"buckets is an integer from 1 to {MAX_BUCKETS}")
    b = buckets_of(q.start_ns, q.end_ns, int(raw))
    try:
        async with _slots(request).hold(part_id):
            rows = await cloud.store.aggregate_tabular(part_id, replace(q, limit=0), b, max_rows=MAX_ROWS,
                                                       timeout_s=TIMEOUT_S)
    except QueryRefused as exc:
        raise ApiError(400, "aggregate refused", str(exc)) from None
    return JSONResponse({
        "start_ns": b.start_ns, "end_ns": q.end_ns, "bucket_ns": b.width_ns, "buckets": b.count,
        "start": iso_from_ns(b.start_ns), "end": iso_from_ns(q.end_ns), **shape(rows, b, MAX_ROWS),
    })
