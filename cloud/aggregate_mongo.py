"""The aggregate of `GET /v1/tabular/aggregate` as MongoDB aggregation pipelines (cloud/mongo_store.py).

An aggregation expression cannot walk a document of unknown shape, so it runs in two passes, both
pipelines on the server:

1. `discovery`: per series (resource type, name, method, params) in the window, the first and the
   last payload by time. Their numeric leaves are the fields to aggregate (at most
   MAX_FIELDS_PER_SERIES per series; a field that appears only between the first and last reading
   of a window is not found; keys holding `.` or starting with `$` cannot be addressed by a field
   path and are left out).
2. `buckets`: one `$group` per series and bucket with `$min`, `$max`, `$sum` and a count of each
   field, counting only numbers (`$isNumber`; booleans are not numbers, as in the chart).
"""

from __future__ import annotations

import math
from typing import Any

from capsync.cloud.store import AggregateRow, Buckets

MAX_FIELDS_PER_SERIES = 64
#: Fields of all series together that pass 2 aggregates (each is four accumulators per group).
MAX_FIELDS = 512
_SERIES_ID = {"t": "$resource_type", "n": "$resource_name", "m": "$method", "p": "$params"}


def discovery(match: dict[str, Any]) -> list[dict[str, Any]]:
    """Pass 1: the first and last payload of each series within `match`."""
    return [{"$match": match}, {"$sort": {"requested_ns": 1}},
            {"$group": {"_id": _SERIES_ID, "first": {"$first": "$payload"}, "last": {"$last": "$payload"}}}]


def numeric_paths(value: Any, path: tuple = (), out: list | None = None) -> list[tuple]:
    """The paths of the numeric leaves of a payload, as tuples of keys (str) and array indexes (int)."""
    out = [] if out is None else out
    if len(out) >= MAX_FIELDS_PER_SERIES or len(path) > 8:
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        out.append(path)
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and k and "." not in k and not k.startswith("$"):
                numeric_paths(v, (*path, k), out)
    elif isinstance(value, list):
        for i, v in enumerate(value[:32]):
            numeric_paths(v, (*path, i), out)
    return out


def field_name(path: tuple) -> str:
    """The API's name of a path: ("pose", "x") -> `pose.x`, ("joints", 0) -> `joints[0]`, () -> `value`."""
    name = ""
    for p in path:
        name += f"[{p}]" if isinstance(p, int) else (f".{p}" if name else p)
    return name or "value"


def _expression(path: tuple) -> Any:
    """The aggregation expression of a payload path: a field path while it can be one, then
    `$arrayElemAt` for indexes and `$getField` for keys below them."""
    expr: Any = "$payload"
    for p in path:
        if isinstance(p, int):
            expr = {"$arrayElemAt": [expr, p]}
        elif isinstance(expr, str):
            expr = f"{expr}.{p}"
        else:
            expr = {"$getField": {"field": p, "input": expr}}
    return expr


def buckets(match: dict[str, Any], b: Buckets, fields: list[tuple]) -> list[dict[str, Any]]:
    """Pass 2: per series and bucket, count/min/max/sum of each of `fields` (field i as `f{i}_*`)."""
    offset = {"$subtract": ["$requested_ns", b.start_ns]}
    group: dict[str, Any] = {"_id": {**_SERIES_ID, "b": {"$subtract": [offset, {"$mod": [offset, b.width_ns]}]}}}
    for i, path in enumerate(fields):
        v = _expression(path)
        num = {"$cond": [{"$isNumber": v}, v, None]}
        group[f"f{i}_n"] = {"$sum": {"$cond": [{"$isNumber": v}, 1, 0]}}
        group[f"f{i}_min"] = {"$min": num}
        group[f"f{i}_max"] = {"$max": num}
        group[f"f{i}_sum"] = {"$sum": num}
    return [{"$match": match}, {"$group": group}]


def rows_of(groups: list[dict[str, Any]], b: Buckets, fields: list[tuple], per_series: dict[Any, set]) -> list[AggregateRow]:
    """AggregateRows of pass 2's groups, only for the fields pass 1 found in each group's series."""
    out = []
    for g in groups:
        sid = g["_id"]
        wanted = per_series.get(series_key(sid), set())
        for i, path in enumerate(fields):
            n = g.get(f"f{i}_n") or 0
            if n and path in wanted:
                out.append(AggregateRow(sid.get("t", ""), sid.get("n", ""), sid.get("m", ""), sid.get("p") or {},
                                        field_name(path), int(sid["b"]) // b.width_ns, int(n),
                                        float(g[f"f{i}_min"]), float(g[f"f{i}_max"]), float(g[f"f{i}_sum"])))
    out.sort(key=lambda r: (r.resource_type, r.resource_name, r.method, repr(sorted_params(r.params)), r.field, r.bucket))
    return out


def series_key(sid: dict[str, Any]) -> tuple:
    """A hashable key of a series id from either pass."""
    return (sid.get("t", ""), sid.get("n", ""), sid.get("m", ""), repr(sorted_params(sid.get("p") or {})))


def sorted_params(params: Any) -> Any:
    """Params with their keys sorted, so that equal params compare equal whatever their key order."""
    if isinstance(params, dict):
        return sorted((k, sorted_params(v)) for k, v in params.items())
    return params
