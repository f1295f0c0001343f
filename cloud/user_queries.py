"""Routes for people looking at their data: a part's summary, read-only SQL and MQL (docs/cloud.md).

- `GET /v1/summary`: the part's capture methods with item counts, time ranges, files, bytes, tags.
- `POST /v1/tabular/sql` `{"query": "SELECT ...", "limit": 1000}`: one read-only SQL statement over
  the `readings` view of the part's own tabular rows (cloud/sql.py).
- `POST /v1/tabular/mql` `{"pipeline": [...], "limit": 1000}`: an aggregation pipeline over the
  part's own readings; only when the cloud runs on MongoDB (501 otherwise).

Both queries answer `{"columns": [...], "rows": [[...]], "row_count": n, "truncated": bool}`; a
refused or failing query is a 400 with the reason.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from capsync.cloud.http import ApiError, cloud_of, endpoint, read_json_body, require_json
from capsync.cloud.store import QueryRefused, ResourceSummary, SqlResult
from capsync.cloud.timefmt import iso_from_ns
from capsync.runtime.sync_protocol import MAX_JSON_BYTES

DEFAULT_ROWS = 1000
MAX_ROWS = 10_000
#: How long one query may run before it is stopped (and answered 400).
QUERY_TIMEOUT_S = 5.0


class SqlRequest(BaseModel):
    """The body of `POST /v1/tabular/sql`."""

    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=MAX_JSON_BYTES)
    limit: int = Field(default=DEFAULT_ROWS, ge=1, le=MAX_ROWS)


class MqlRequest(BaseModel):
    """The body of `POST /v1/tabular/mql`."""

    model_config = ConfigDict(extra="forbid")
    pipeline: list[Any]
    limit: int = Field(default=DEFAULT_ROWS, ge=1, le=MAX_ROWS)


def summary_json(s: ResourceSummary) -> dict[str, Any]:
    """One capture method of the summary as JSON."""
    return {
        "resource_type": s.resource_type, "resource_name": s.resource_name, "method": s.method,
        "data_kind": s.data_kind, "items": s.items, "files": s.files, "bytes": s.bytes, "tags": list(s.tags),
        "first_ns": s.first_ns, "last_ns": s.last_ns,
        "first": None if s.first_ns is None else iso_from_ns(s.first_ns),
        "last": None if s.last_ns is None else iso_from_ns(s.last_ns),
    }


@endpoint
async def summary(request: Request) -> Response:
    """`GET /v1/summary`: what the authenticated part holds, per capture method."""
    cloud = cloud_of(request)
    part_id = await cloud.authenticate(request)
    if request.query_params:
        raise ApiError(400, "unknown query parameter", "GET /v1/summary takes no parameters")
    resources = await cloud.store.summary(part_id)
    return JSONResponse({
        "part_id": part_id, "resources": [summary_json(s) for s in resources],
        "mql": hasattr(cloud.store, "run_mql"),
    })


async def _body(request: Request, model: type[BaseModel]) -> Any:
    raw = await read_json_body(request, MAX_JSON_BYTES)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid')}"
                          for e in exc.errors()[:3])
        raise ApiError(400, "invalid query request", where[:500]) from None


def _answer(result: SqlResult) -> Response:
    return JSONResponse({"columns": result.columns, "rows": result.rows, "row_count": len(result.rows),
                         "truncated": result.truncated})


@endpoint
async def sql(request: Request) -> Response:
    """`POST /v1/tabular/sql`: one read-only statement over the part's `readings` view."""
    cloud = cloud_of(request)
    part_id = await cloud.authenticate(request)
    body = await _body(request, SqlRequest)
    try:
        result = await cloud.store.run_sql(part_id, body.query, max_rows=body.limit, timeout_s=QUERY_TIMEOUT_S)
    except QueryRefused as exc:
        raise ApiError(400, "query refused", str(exc)) from None
    return _answer(result)


@endpoint
async def mql(request: Request) -> Response:
    """`POST /v1/tabular/mql`: an aggregation pipeline over the part's own readings (MongoDB store only)."""
    cloud = cloud_of(request)
    part_id = await cloud.authenticate(request)
    require_json(request)
    run_mql = getattr(cloud.store, "run_mql", None)
    if run_mql is None:
        raise ApiError(501, "mql not available", "this cloud keeps tabular data in SQLite; MQL needs "
                       "`capsync cloud serve --mongodb-uri URI` (use POST /v1/tabular/sql)")
    raw = await read_json_body(request, MAX_JSON_BYTES)
    try:
        from bson import json_util  # Extended JSON ({"$date": ...}) for values in the pipeline

        parsed = json_util.loads(raw)
    except Exception as exc:  # any parse failure of user input is a 400: bad JSON, bad $oid, bad $date
        raise ApiError(400, "invalid query request", f"not JSON: {str(exc)[:200]}") from None
    try:
        body = MqlRequest.model_validate(parsed)
    except ValidationError as exc:
        raise ApiError(400, "invalid query request", json.dumps(exc.errors()[0].get("msg", "invalid"))[:300]) from None
    try:
        result = await run_mql(part_id, body.pipeline, max_rows=body.limit, timeout_s=QUERY_TIMEOUT_S)
    except QueryRefused as exc:
        raise ApiError(400, "query refused", str(exc)) from None
    return _answer(result)
