"""Routes for people looking at their data: a part's summary, read-only SQL and MQL (docs/cloud.md).

- `GET /v1/summary`: the part's capture methods with item counts, time ranges, files, bytes, tags.
- `POST /v1/tabular/sql` `{"query": "SELECT ...", "limit": 1000}`: one read-only SQL statement over
  the `readings` view of the part's own tabular rows (cloud/sql.py).
- `POST /v1/tabular/mql` `{"pipeline": [...], "limit": 1000}`: an aggregation pipeline over the
  part's own readings; only when the cloud runs on MongoDB (501 otherwise).

Both queries answer `{"columns": [...], "rows": [[...]], "row_count": n, "truncated": bool}` (with
`truncated_reason` when cut: the row limit, or MAX_RESULT_BYTES of row JSON in capsync.cloud.sql);
a refused or failing query is a 400 with the reason. At most QUERY_SLOTS queries run at once and
QUERY_SLOTS_PER_PART of one part (`QuerySlots`: 429 for a part's extra query, 503 when all stay busy).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

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


class QuerySlots:
    """Shares the query slots fairly: at most `total` queries run at once, at most `per_part` of one part.

    A part that already runs `per_part` queries is answered 429 at once (it cannot queue up and hold
    the slots), so one part's slow queries always leave slots for the others. A query that finds
    every slot busy waits up to `wait_s` for one, then gets 503.
    """

    def __init__(self, total: int, per_part: int, wait_s: float) -> None:
        self.total, self.per_part, self.wait_s = total, per_part, wait_s
        self._running: dict[str, int] = {}
        self._slots: trio.Semaphore | None = None

    @asynccontextmanager
    async def hold(self, part_id: str) -> AsyncIterator[None]:
        """Hold one of the part's slots for the duration of the block (429 or 503 when none is free)."""
        if self._slots is None:  # made inside Trio
            self._slots = trio.Semaphore(self.total)
        if self._running.get(part_id, 0) >= self.per_part:
            raise ApiError(429, "too many queries", f"a part runs at most {self.per_part} query at a time; "
                           "wait for the one running to finish", headers={"Retry-After": "1"})
        self._running[part_id] = self._running.get(part_id, 0) + 1
        try:
            with trio.move_on_after(self.wait_s) as waited:
                await self._slots.acquire()
            if waited.cancelled_caught:
                raise ApiError(503, "query slots busy", f"all {self.total} query slots stayed busy for "
                               f"{self.wait_s:g} s; retry later", headers={"Retry-After": "5"})
            try:
                yield
            finally:
                self._slots.release()
        finally:
            self._running[part_id] -= 1
            if not self._running[part_id]:
                del self._running[part_id]


#: How many SQL/MQL queries run at once over all parts, and per part.
QUERY_SLOTS, QUERY_SLOTS_PER_PART = 4, 1


def slots_of(request: Request) -> QuerySlots:
    """The app's query slots (one set per app)."""
    state = request.app.state
    if not hasattr(state, "query_slots"):
        state.query_slots = QuerySlots(QUERY_SLOTS, QUERY_SLOTS_PER_PART, wait_s=QUERY_TIMEOUT_S)
    return state.query_slots


def _answer(result: SqlResult) -> Response:
    """The answer, written out row by row (never one more whole copy of the rows as text)."""
    head = {"columns": result.columns, "row_count": len(result.rows), "truncated": result.truncated}
    if result.truncated_reason:
        head["truncated_reason"] = result.truncated_reason

    def chunks() -> Iterator[bytes]:
        yield json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"rows":['
        for i, row in enumerate(result.rows):
            yield (b"," if i else b"") + json.dumps(row, separators=(",", ":"), default=str).encode()
        yield b"]}"

    return StreamingResponse(chunks(), media_type="application/json")


@endpoint
async def sql(request: Request) -> Response:
    """`POST /v1/tabular/sql`: one read-only statement over the part's `readings` view."""
    cloud = cloud_of(request)
    part_id = await cloud.authenticate(request)
    body = await _body(request, SqlRequest)
    try:
        async with slots_of(request).hold(part_id):
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
        async with slots_of(request).hold(part_id):
            result = await run_mql(part_id, body.pipeline, max_rows=body.limit, timeout_s=QUERY_TIMEOUT_S)
    except QueryRefused as exc:
        raise ApiError(400, "query refused", str(exc)) from None
    return _answer(result)
