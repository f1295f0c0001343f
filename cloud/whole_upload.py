"""The one-request upload of a small file: `PUT /v1/files/{file_id}?kind=...&size=...&sha256=...`.

The declaration goes in the query (the same fields as the resumable path's UploadStart), the body
is the whole file. The cloud checks the size and sha256, parses a capture file, writes the bytes
durably as the committed file and commits the rows in a group commit with whatever else is being
committed (capsync.cloud.group_commit); only then does it answer `committed`. It is idempotent
like the rest of the protocol: a committed file is answered `committed` without reading the body,
and a request cut off anywhere leaves either nothing or the committed file (a crash between the
bytes and the rows leaves bytes that the next attempt replaces).

Files up to MAX_CHUNK_BYTES only (the body is held in memory, like one chunk); bigger files use the
resumable path. docs/sync-protocol.md documents the route.
"""

from __future__ import annotations

import hashlib
import logging
import time

import trio
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from capsync.cloud import ingest, quotas
from capsync.cloud.http import ApiError, Cloud, cloud_of, content_length, endpoint, file_id_param, file_mtime, read_body
from capsync.cloud.store import Commit, CommittedFile, Upload
from capsync.cloud.uploads import check_servable, committed_status, ok, summarize, unknown_status
from capsync.runtime.blocking import run_blocking
from capsync.runtime.sync_protocol import MAX_CHUNK_BYTES, FileKind, UploadStart

log = logging.getLogger("capsync.cloud.uploads")

#: Largest file the one-request path takes.
MAX_WHOLE_BYTES = MAX_CHUNK_BYTES


def _declaration(request: Request) -> UploadStart:
    """The UploadStart in the query string: 400 naming the field when it is missing or invalid."""
    q = request.query_params
    unknown = sorted(set(q) - set(UploadStart.model_fields))
    if unknown:
        raise ApiError(400, "invalid upload declaration", f"{unknown[0]}: unknown query parameter")
    try:
        return UploadStart.model_validate(dict(q))
    except ValidationError as exc:
        raise ApiError(400, "invalid upload declaration", summarize(exc)) from None


@endpoint
async def put_file(request: Request) -> Response:
    """`PUT /v1/files/{file_id}?kind=K&size=N&sha256=H[&name=..&mime_type=..]` with the whole file as body."""
    cloud = cloud_of(request)
    part_id = await cloud.authenticate(request)
    file_id = file_id_param(request)
    start = _declaration(request)
    mtime_ns = file_mtime(request)
    check_servable(start)
    if start.size > MAX_WHOLE_BYTES:
        raise ApiError(413, "file too large for one request",
                       f"a one-request upload holds at most {MAX_WHOLE_BYTES} bytes; declare this file with "
                       f"POST /v1/files/{file_id} and send it in chunks")
    declared = content_length(request, MAX_WHOLE_BYTES)
    if declared is not None and declared != start.size:
        raise ApiError(400, "wrong Content-Length", f"Content-Length says {declared}, size says {start.size}")
    async with cloud.locks.hold((part_id, file_id)):
        if (f := await cloud.store.get_file(part_id, file_id)) is not None:
            return ok(request, committed_status(f))  # the body is not even read
        await quotas.check_whole_upload(cloud, part_id, start.size)
        with cloud.usage.in_flight(part_id, start.size):
            data = await read_body(request, start.size)
            f = await _store(cloud, part_id, file_id, start, data, mtime_ns)
    return ok(request, committed_status(f))


async def _store(cloud: Cloud, part_id: str, file_id: str, start: UploadStart, data: bytes,
                 mtime_ns: int | None) -> CommittedFile:
    if len(data) != start.size:
        raise ApiError(400, "wrong body size", f"the body has {len(data)} bytes, size says {start.size}")
    fields = {"part": part_id, "file_id": file_id, "kind": start.kind.value, "size": start.size}
    now = time.time_ns()
    u = Upload(part_id, file_id, start.kind, start.size, start.sha256, start.name, start.mime_type, start.size, now)
    with trio.CancelScope(shield=True):  # bytes then rows, both durable, before anyone hears "committed"
        try:
            rows = await run_blocking(_check_and_write, cloud, u, data, mtime_ns)
        except _ChecksumMismatch as exc:
            log.warning("checksum mismatch; one-request upload refused", extra={**fields, "declared": start.sha256,
                                                                              "actual": exc.digest})
            raise ApiError(422, "checksum mismatch", f"declared sha256 {start.sha256}, the body hashes to "
                           f"{exc.digest}; send the file again", status=unknown_status(file_id)) from None
        except ingest.Rejected as exc:
            log.warning("capture file rejected", extra={**fields, "reason": str(exc)})
            raise ApiError(422, "capture file rejected", str(exc), status=unknown_status(file_id)) from None
        new = await cloud.committer.commit(Commit(rows.file, rows.tabular, rows.binary))
    if new:
        cloud.usage.committed(part_id, u.size)
        log.debug("file committed", extra={**fields, "records": rows.file.records, "new": True, "one_request": True})
        return rows.file
    f = await cloud.store.get_file(part_id, file_id)  # another cloud process committed it meanwhile
    assert f is not None
    return f


class _ChecksumMismatch(Exception):
    def __init__(self, digest: str) -> None:
        super().__init__(digest)
        self.digest = digest


def _check_and_write(cloud: Cloud, u: Upload, data: bytes, mtime_ns: int | None) -> ingest.Ingest:
    """In one worker thread: check the sha256, parse, and write the bytes as the committed file."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != u.sha256:
        raise _ChecksumMismatch(digest)
    rows = (ingest.capture_file(u, data, u.size, u.created_ns) if u.kind is FileKind.CAPTURE
            else ingest.plain_file(u, u.size, u.created_ns, mtime_ns))
    cloud.blobs.put_committed(u.part_id, u.file_id, data)
    cloud.blobs.discard(u.part_id, u.file_id)  # a resumable upload of the same file, given up for this one
    return rows
