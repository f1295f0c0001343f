"""`GET /v1/export/tabular` and `GET /v1/export/binary`: every row of a part matching the query
filters, streamed with no row cap, as JSON Lines or CSV (docs/cloud.md, "Export").

The rows come in SortKey order (requested_ns, file_id, record_index), read from the store a page of
PAGE_ROWS at a time by keyset (`after` the last key sent, never OFFSET), so memory stays bounded
whatever the export's size. `cursor` (the query API's cursor of a row's key) resumes after that
row: `capsync cloud export` passes the key of the last row it wrote, so a resumed export neither
repeats nor skips one. `X-Capsync-Total` tells how many rows matched when the export (re)started,
after the cursor. CSV has a header line only when there is no cursor (a resumed file has one).

Binary exports list the items (metadata and the `url` of the bytes); the bytes themselves are
fetched one by one with `GET /v1/binary/{id}`. At most SLOTS exports run at once, SLOTS_PER_PART
of one part (429 past that). A store failure in the middle ends the stream early (an incomplete
chunked body): the client sees it and resumes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from capsync.cloud.http import ApiError, cloud_of, endpoint
from capsync.cloud.query import FILTER_PARAMS, binary_json, parse_query, tabular_json
from capsync.cloud.store import Query
from capsync.cloud.user_queries import QuerySlots

log = logging.getLogger("capsync.cloud.export")

PAGE_ROWS = 1000
SLOTS, SLOTS_PER_PART = 4, 2
FORMATS = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
#: CSV columns of each kind, in order; JSON values (params, tags, payload, metadata) are JSON text.
CSV_COLUMNS = {
    "tabular": ["part_id", "file_id", "record_index", "resource_type", "resource_name", "method", "params",
                "requested_ns", "received_ns", "requested", "received", "tags", "payload", "metadata"],
    "binary": ["id", "url", "part_id", "file_id", "record_index", "resource_type", "resource_name", "method",
               "mime_type", "size", "requested_ns", "received_ns", "requested", "received", "tags", "metadata", "name"],
}


def csv_line(values: list[Any]) -> str:
    """One CSV line: JSON text for lists and dicts, exact text for the rest (no spreadsheet escaping:
    an export is data for programs, and its cells are exactly the cloud's values)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(
        [json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else v for v in values])
    return buf.getvalue()


def _encoder(kind: str, fmt: str) -> Callable[[dict[str, Any]], str]:
    if fmt == "jsonl":
        return lambda row: json.dumps(row, separators=(",", ":")) + "\n"
    cols = CSV_COLUMNS[kind]
    return lambda row: csv_line([row[c] for c in cols])


class _HeldResponse(StreamingResponse):
    """A stream that releases its export slot when the response ends, however it ends."""

    def __init__(self, body: AsyncIterator[bytes], held: AsyncExitStack, **kw: Any) -> None:
        super().__init__(body, **kw)
        self._held = held

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self._held:
            await super().__call__(scope, receive, send)


async def _rows(request: Request, part_id: str, kind: str, q: Query, encode: Callable, header: str) -> AsyncIterator[bytes]:
    store = cloud_of(request).store
    fetch = store.query_tabular if kind == "tabular" else store.query_binary
    render = tabular_json if kind == "tabular" else binary_json
    if header:
        yield header.encode()
    after = q.after
    sent = 0
    while True:
        try:
            page = await fetch(part_id, replace(q, after=after, limit=PAGE_ROWS))
        except Exception as exc:  # the status is sent: end the body early, the client resumes
            log.error("export stopped: the store failed", extra={"part": part_id, "rows_sent": sent, "error": str(exc)[:300]})
            raise
        if not page:
            return
        yield "".join(encode(render(r)) for r in page).encode()
        sent += len(page)
        last = page[-1]
        after = (last.requested_ns, last.file_id, last.record_index)
        if len(page) < PAGE_ROWS:
            return


def _slots(request: Request) -> QuerySlots:
    state = request.app.state
    if not hasattr(state, "export_slots"):
        state.export_slots = QuerySlots(SLOTS, SLOTS_PER_PART, wait_s=5.0)
    return state.export_slots


def _route(kind: str) -> Callable[[Request], Any]:
    @endpoint
    async def export(request: Request) -> Response:
        cloud = cloud_of(request)
        part_id = await cloud.authenticate(request)
        q = parse_query(request, FILTER_PARAMS | {"cursor", "format"})
        fmt = request.query_params.get("format", "jsonl")
        if fmt not in FORMATS:
            raise ApiError(400, "invalid format", f"format is one of {', '.join(FORMATS)}")
        held = AsyncExitStack()
        await held.enter_async_context(_slots(request).hold(part_id))
        try:
            total = await cloud.store.count(part_id, kind, q)
        except BaseException:
            await held.aclose()
            raise
        header = csv_line(CSV_COLUMNS[kind]) if fmt == "csv" and q.after is None else ""
        body = _rows(request, part_id, kind, q, _encoder(kind, fmt), header)
        return _HeldResponse(body, held, media_type=FORMATS[fmt], headers={
            "X-Capsync-Total": str(total), "Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff",
            "Content-Disposition": f'attachment; filename="{kind}.{fmt}"',
        })

    export.__name__ = export.__qualname__ = f"export_{kind}"
    export.__doc__ = f"`GET /v1/export/{kind}`: every {kind} row of the part matching the filters, streamed."
    return export


export_tabular = _route("tabular")
export_binary = _route("binary")
