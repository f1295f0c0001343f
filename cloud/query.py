"""The query API: a part reads back its own committed data (tabular rows, binary items, files).

Every route answers only about the authenticated part. An id that does not exist and an id that
belongs to another part get the same 404, so nothing about other parts leaks.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import replace
from typing import Any

import logging
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from capsync.cloud import ingest
from capsync.cloud.blobs import BlobsUnavailable, CommittedBlob, in_thread
from capsync.cloud.http import ApiError, cloud_of, endpoint
from capsync.cloud.store import BinaryItem, CommittedFile, Query, SortKey, TabularRow
from capsync.cloud.timefmt import iso_from_ns, parse_time
from capsync.runtime.blocking import run_blocking
from capsync.runtime.sync_protocol import API_PREFIX, FILE_ID_RE

log = logging.getLogger("capsync.cloud.query")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: The filters every query route takes; the paged routes add `limit`, `cursor` and `order`.
FILTER_PARAMS = frozenset({"resource_type", "resource_name", "method", "start", "end", "tag"})
_QUERY_PARAMS = FILTER_PARAMS | {"limit", "cursor", "order"}
_MAX_PARAM = 1024
_LIMIT_RE = re.compile(r"^[0-9]{1,7}$")


#: Uploaded bytes of these types are shown inline (images a browser only ever decodes); any other
#: type, text/html and image/svg+xml included, is served as a download.
INLINE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp"})
_MIME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")


def _served_type(mime_type: str) -> str:
    return mime_type if _MIME_RE.match(mime_type or "") else "application/octet-stream"


def bytes_headers(mime_type: str) -> dict[str, str]:
    """Headers for uploaded bytes: never run as a page of the cloud's origin, never sniffed into one."""
    inline = (mime_type or "").lower() in INLINE_TYPES
    return {
        "Content-Disposition": "inline" if inline else "attachment",
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",
    }


def encode_cursor(key: Any) -> str:
    """An opaque cursor for a sort key (URL-safe base64 of its JSON)."""
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid cursor", "pass back next_cursor exactly as received") from None


def sort_cursor(cursor: str) -> SortKey:
    key = _decode_cursor(cursor)
    if (
        isinstance(key, list) and len(key) == 3
        and type(key[0]) is int and isinstance(key[1], str) and type(key[2]) is int
        and -(2**63) <= key[0] < 2**63 and 0 <= key[2] < 2**63
    ):
        return (key[0], key[1], key[2])
    raise ApiError(400, "invalid cursor", "pass back next_cursor exactly as received")


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not _LIMIT_RE.match(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "invalid limit", f"limit is an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def parse_query(request: Request, allowed: frozenset[str] | set[str] = _QUERY_PARAMS) -> Query:
    """The filters of a tabular or binary query from the query string; 400 on anything malformed or
    not in `allowed` (the route's own parameters beyond the filters it reads itself)."""
    params = request.query_params
    unknown = sorted(set(params.keys()) - set(allowed))
    if unknown:
        raise ApiError(400, "unknown query parameter", f"{unknown[0][:64]!r}; known: {', '.join(sorted(allowed))}")
    for key, value in params.multi_items():
        if len(value) > _MAX_PARAM:
            raise ApiError(400, "query parameter too long", f"{key} is longer than {_MAX_PARAM} characters")
    times: dict[str, int | None] = {}
    for name in ("start", "end"):
        raw = params.get(name)
        try:
            times[name] = None if raw is None else parse_time(raw)
        except ValueError as exc:
            raise ApiError(400, f"invalid {name}", str(exc)) from None
    if times["start"] is not None and times["end"] is not None and times["end"] <= times["start"]:
        raise ApiError(400, "invalid time range", "end must be after start")
    order = params.get("order", "asc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "invalid order", "order is asc (oldest first, the default) or desc (newest first)")
    cursor = params.get("cursor")
    return Query(
        resource_type=params.get("resource_type"),
        resource_name=params.get("resource_name"),
        method=params.get("method"),
        start_ns=times["start"],
        end_ns=times["end"],
        tags=tuple(params.getlist("tag")),
        after=None if cursor is None else sort_cursor(cursor),
        limit=_limit(request),
        descending=order == "desc",
    )


def tabular_json(r: TabularRow) -> dict[str, Any]:
    """A tabular row as the query API shows it."""
    return {
        "part_id": r.part_id, "file_id": r.file_id, "record_index": r.record_index,
        "resource_type": r.resource_type, "resource_name": r.resource_name, "method": r.method,
        "params": r.params, "requested_ns": r.requested_ns, "received_ns": r.received_ns,
        "requested": iso_from_ns(r.requested_ns), "received": iso_from_ns(r.received_ns),
        "tags": list(r.tags), "payload": r.payload, "metadata": r.metadata,
    }


def binary_json(b: BinaryItem) -> dict[str, Any]:
    """A binary item as the query API shows it, with the URL of its bytes."""
    return {
        "id": b.item_id, "url": f"{API_PREFIX}/binary/{b.item_id}", "part_id": b.part_id, "file_id": b.file_id,
        "record_index": b.record_index, "resource_type": b.resource_type, "resource_name": b.resource_name,
        "method": b.method, "mime_type": b.mime_type, "size": b.size, "requested_ns": b.requested_ns,
        "received_ns": b.received_ns, "requested": iso_from_ns(b.requested_ns), "received": iso_from_ns(b.received_ns),
        "tags": list(b.tags), "metadata": b.metadata, "name": b.name,
    }


def file_json(f: CommittedFile) -> dict[str, Any]:
    """A committed file as `GET /v1/files` shows it."""
    return {
        "file_id": f.file_id, "kind": f.kind.value, "size": f.size, "sha256": f.sha256, "records": f.records,
        "name": f.name, "mime_type": f.mime_type, "resource_type": f.resource_type,
        "resource_name": f.resource_name, "method": f.method, "data_kind": f.data_kind, "params": f.params,
        "tags": list(f.tags), "metadata": f.metadata, "created_ns": f.created_ns, "committed_ns": f.committed_ns,
        "committed": iso_from_ns(f.committed_ns), "expired": f.expired_ns is not None,
    }


def _page(items: list[Any], limit: int, render: Any, key: Any) -> Response:
    more = len(items) > limit
    items = items[:limit]
    cursor = encode_cursor(key(items[-1])) if more else None
    return JSONResponse({"items": [render(i) for i in items], "next_cursor": cursor})


def sort_key(row: TabularRow | BinaryItem) -> list[Any]:
    """The SortKey of a row as the JSON list a cursor encodes."""
    return [row.requested_ns, row.file_id, row.record_index]


@endpoint
async def tabular(request: Request) -> Response:
    """`GET /v1/tabular`: the part's tabular rows matching the filters, one page."""
    cloud = cloud_of(request)
    part_id = await cloud.authenticate(request)
    q = parse_query(request)
    rows = await cloud.store.query_tabular(part_id, replace(q, limit=q.limit + 1))
    return _page(rows, q.limit, tabular_json, sort_key)


@endpoint
async def binary(request: Request) -> Response:
    """`GET /v1/binary`: the part's binary items matching the filters, one page (metadata only)."""
    cloud = cloud_of(request)
    part_id = await cloud.authenticate(request)
    q = parse_query(request)
    items = await cloud.store.query_binary(part_id, replace(q, limit=q.limit + 1))
    return _page(items, q.limit, binary_json, sort_key)


@endpoint
async def binary_bytes(request: Request) -> Response:
    """`GET /v1/binary/{item_id}`: the bytes of one binary item, with its Content-Type.

    Only INLINE_TYPES are inline; everything else is an attachment, and all of it is sandboxed
    (`bytes_headers`), so an uploaded HTML or SVG "file" can never pose as the data browser.
    """
    cloud = cloud_of(request)
    part_id = await cloud.authenticate(request)
    file_id, _, index = str(request.path_params.get("item_id", "")).rpartition("-")
    if not FILE_ID_RE.match(file_id) or not index.isdigit() or len(index) > 18:
        raise ApiError(400, "invalid item id", "item ids look like <file_id>-<record index>")
    item = await cloud.store.get_binary(part_id, file_id, int(index))
    if item is None:
        raise ApiError(404, "not found", "no such binary item")
    if not item.from_capture:
        try:
            blob = await run_blocking(cloud.blobs.read_committed, part_id, file_id)
        except FileNotFoundError:
            raise ApiError(404, "not found", "the item's bytes are no longer stored") from None
        return _blob_response(blob, _served_type(item.mime_type), bytes_headers(item.mime_type))
    try:
        async with in_thread(cloud.blobs.open_committed(part_id, file_id)) as path:
            data = await run_blocking(ingest.binary_record_bytes, path, item.record_index)
    except FileNotFoundError:
        data = None
    if data is None:
        raise ApiError(404, "not found", "the item's bytes are no longer stored")
    return Response(data, media_type=_served_type(item.mime_type), headers=bytes_headers(item.mime_type))


def _blob_response(blob: CommittedBlob, media_type: str, headers: dict[str, str]) -> Response:
    """A committed file's bytes as the answer: a local file as FileResponse, anything else streamed
    (READ_CHUNK at a time, never the whole file in memory)."""
    if blob.local_path is not None:
        blob.close()
        return FileResponse(blob.local_path, media_type=media_type, headers=headers)

    async def stream() -> AsyncIterator[bytes]:
        try:
            while (piece := await run_blocking(next, blob.chunks, None)) is not None:
                yield piece
        except BlobsUnavailable as exc:  # the status line is sent already: the client sees a short body
            log.error("object store stopped while serving a file", extra={"error": str(exc)})
        finally:
            blob.close()

    return StreamingResponse(stream(), media_type=media_type,
                             headers={**headers, "Content-Length": str(blob.size)})


@endpoint
async def files(request: Request) -> Response:
    """`GET /v1/files`: the part's committed files in file id order, one page (`limit`, `cursor`)."""
    cloud = cloud_of(request)
    part_id = await cloud.authenticate(request)
    unknown = sorted(set(request.query_params.keys()) - {"limit", "cursor"})
    if unknown:
        raise ApiError(400, "unknown query parameter", f"{unknown[0][:64]!r}; known: cursor, limit")
    limit = _limit(request)
    after = None
    if (cursor := request.query_params.get("cursor")) is not None:
        after = _decode_cursor(cursor)
        if not isinstance(after, str):
            raise ApiError(400, "invalid cursor", "pass back next_cursor exactly as received")
    rows = await cloud.store.list_files(part_id, after=after, limit=limit + 1)
    return _page(rows, limit, file_json, lambda f: f.file_id)
