"""MongoDB aggregation pipelines from users, confined to their own part: checks and result conversion.

`POST /v1/tabular/mql` runs a user's pipeline on the `readings` collection (cloud/mongo_store.py).
`confine(pipeline, part_id)` checks it and returns the pipeline the store runs:

    [{"$match": {"part_id": <part>, "live": true}}, {"$unset": [internal fields]}, *user stages, {"$limit": n}]

Only stages that transform the documents flowing through them are allowed (a whitelist):
anything that reads other documents (`$lookup`, `$graphLookup`, `$unionWith`, `$documents`),
writes (`$out`, `$merge`), or looks at the server (`$collStats`, `$currentOp`, `$indexStats`, ...)
is refused, as is server-side JavaScript (`$where`, `$function`, `$accumulator`) anywhere in it.
`$facet` sub-pipelines are checked the same way. Pipelines are JSON, with MongoDB Extended JSON
(`{"$date": ...}`, `{"$oid": ...}`) accepted for values.
"""

from __future__ import annotations

import base64
import math
from datetime import datetime
from typing import Any

from capsync.cloud.store import QueryRefused

ALLOWED_STAGES = frozenset({
    "$match", "$project", "$addFields", "$set", "$unset", "$group", "$sort", "$limit", "$skip", "$count",
    "$unwind", "$bucket", "$bucketAuto", "$facet", "$sortByCount", "$replaceRoot", "$replaceWith", "$sample",
    "$setWindowFields", "$densify", "$fill", "$redact",
})
_REASONS = {
    "$out": "$out writes to a collection", "$merge": "$merge writes to a collection",
    "$lookup": "$lookup reads documents outside the part's own", "$graphLookup": "$graphLookup reads other documents",
    "$unionWith": "$unionWith reads other collections", "$documents": "$documents makes documents up",
}
REFUSED_OPERATORS = frozenset({"$where", "$function", "$accumulator"})
#: Fields of the stored documents that are the cloud's bookkeeping, hidden from pipelines.
INTERNAL_FIELDS = ("live", "exact_json")
MAX_STAGES = 100
_MAX_DEPTH = 64


def _check_values(value: Any, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise QueryRefused(f"the pipeline is nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            if k in REFUSED_OPERATORS:
                raise QueryRefused(f"{k} (server-side JavaScript) is refused")
            _check_values(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_values(v, depth + 1)


def check_pipeline(pipeline: Any, depth: int = 0) -> None:
    """Raise QueryRefused unless `pipeline` is a list of allowed stages (recursing into $facet)."""
    if not isinstance(pipeline, list):
        raise QueryRefused("pipeline must be a JSON array of stages")
    if len(pipeline) > MAX_STAGES:
        raise QueryRefused(f"at most {MAX_STAGES} stages")
    for i, stage in enumerate(pipeline):
        if not isinstance(stage, dict) or len(stage) != 1:
            raise QueryRefused(f"stage {i} must be an object with exactly one key, like {{\"$match\": {{...}}}}")
        (name, body), = stage.items()
        if name not in ALLOWED_STAGES:
            reason = _REASONS.get(name, f"{str(name)[:40]} is not an allowed stage")
            raise QueryRefused(f"stage {i}: {reason}; allowed: {', '.join(sorted(ALLOWED_STAGES))}")
        if name == "$facet":
            if not isinstance(body, dict):
                raise QueryRefused(f"stage {i}: $facet takes an object of sub-pipelines")
            for sub in body.values():
                check_pipeline(sub, depth + 1)
        else:
            _check_values(body, depth + 1)


def confine(pipeline: Any, part_id: str, max_rows: int) -> list[dict[str, Any]]:
    """The pipeline to run for `part_id`: its own live documents first, at most `max_rows + 1` out."""
    check_pipeline(pipeline)
    return [
        {"$match": {"part_id": part_id, "live": True}},
        {"$unset": list(INTERNAL_FIELDS)},
        *pipeline,
        {"$limit": max_rows + 1},
    ]


def to_json(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of a BSON value: dates as RFC 3339, ObjectIds and decimals as strings, bytes as $base64."""
    if depth > 200:
        return None
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z") + ("" if value.tzinfo else "Z")
    if isinstance(value, (bytes, bytearray)):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): to_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v, depth + 1) for v in value]
    return str(value)
