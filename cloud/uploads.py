"""The upload routes of the sync protocol: status, declare, send bytes, commit (docs/sync-protocol.md).

Every step about one file runs under that file's lock, so concurrent requests for the same file
see each other's effects in order. File ids are scoped per part: another part's file with the
same id is simply not visible.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import replace

import trio
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from capsync.cloud import ingest, quotas
from capsync.cloud.blobs import OffsetMismatch, in_thread
from capsync.cloud.http import (
    ApiError,
    Cloud,
    cloud_of,
    content_length,
    endpoint,
    file_id_param,
    file_mtime,
    read_body,
    read_json_body,
)
from capsync.cloud.store import Commit, CommittedFile, Upload
from capsync.runtime.blocking import run_blocking
from capsync.runtime.sync_protocol import (
    MAX_CHUNK_BYTES,
    MAX_JSON_BYTES,
    PROTOCOL_HEADER,
    FileKind,
    FileState,
    FileStatus,
    UploadStart,
    protocol_version,
)

log = logging.getLogger("capsync.cloud.uploads")

_OFFSET_RE = re.compile(r"[0-9]{1,19}")


def committed_status(f: CommittedFile) -> FileStatus:
    """The status of a committed file."""
    return FileStatus(file_id=f.file_id, state=FileState.COMMITTED, offset=f.size, size=f.size, records=f.records,
                      sha256=f.sha256)


def unknown_status(file_id: str) -> FileStatus:
    """The status of a file the cloud knows nothing of."""
    return FileStatus(file_id=file_id, state=FileState.UNKNOWN)


def _partial(u: Upload, held: int) -> FileStatus:
    return FileStatus(file_id=u.file_id, state=FileState.PARTIAL, offset=held, size=u.size)


def ok(request: Request, status: FileStatus) -> Response:
    """200 with `status`, in the protocol revision the request speaks."""
    return JSONResponse(status.for_revision(protocol_version(request.headers.get(PROTOCOL_HEADER))))


async def lookup(cloud: Cloud, part_id: str, file_id: str) -> tuple[FileStatus, Upload | None]:
    """Where the cloud is with (part, file) — committed, partial with the bytes held, or unknown —
    and the declared upload when it is partial."""
    f = await cloud.store.get_file(part_id, file_id)
    if f is not None:
        return committed_status(f), None
    u = await cloud.store.get_upload(part_id, file_id)
    if u is None:
        return unknown_status(file_id), None
    held = await run_blocking(cloud.blobs.held, part_id, file_id)
    return _partial(u, held), u


@endpoint
async def file_resource(request: Request) -> Response:
    """`GET /v1/files/{file_id}` (status) and `POST /v1/files/{file_id}` (declare an upload)."""
    cloud = cloud_of(request)
    part_id = await cloud.authenticate(request)
    file_id = file_id_param(request)
    if request.method in ("GET", "HEAD"):
        return ok(request, (await lookup(cloud, part_id, file_id))[0])
    body = await read_json_body(request, MAX_JSON_BYTES)
    try:
        start = UploadStart.model_validate_json(body)
    except ValidationError as exc:
        raise ApiError(400, "invalid upload declaration", summarize(exc)) from None
    check_servable(start)
    async with cloud.locks.hold((part_id, file_id)):
        return ok(request, await _start(cloud, part_id, file_id, start))


def _declaring(part_id: str) -> tuple[str, str, None]:
    """Lock key serializing one part's new declarations, so that two at once cannot both pass its quotas."""
    return ("declaring", part_id, None)


async def _start(cloud: Cloud, part_id: str, file_id: str, start: UploadStart) -> FileStatus:
    f = await cloud.store.get_file(part_id, file_id)
    if f is not None:
        await run_blocking(cloud.blobs.discard, part_id, file_id)  # left by a crash after commit
        return committed_status(f)
    u = await cloud.store.get_upload(part_id, file_id)
    fields = {"part": part_id, "file_id": file_id, "kind": start.kind.value, "size": start.size}
    if u is not None and (u.kind, u.size, u.sha256) == (start.kind, start.size, start.sha256):
        if (u.name, u.mime_type) != (start.name, start.mime_type):
            u = replace(u, name=start.name, mime_type=start.mime_type)
            await cloud.store.save_upload(u)
        held = await run_blocking(cloud.blobs.held, part_id, file_id)
        return _partial(u, held)
    async with cloud.locks.hold(_declaring(part_id)):
        await quotas.check_declaration(cloud, part_id, file_id, start.size)
        await run_blocking(cloud.blobs.reset, part_id, file_id)
        new = Upload(part_id, file_id, start.kind, start.size, start.sha256, start.name, start.mime_type, 0, time.time_ns())
        await cloud.store.save_upload(new)
    log.debug("upload restarted" if u is not None else "upload started", extra=fields)
    return _partial(new, 0)


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def check_servable(start: UploadStart) -> None:
    """400 for a name or media type the cloud could not serve back (control characters, CR/LF)."""
    if start.mime_type and not ingest.valid_mime(start.mime_type):
        raise ApiError(400, "invalid upload declaration",
                       "mime_type: must be printable ASCII without control characters (no CR/LF)")
    if _CONTROL_RE.search(start.name):
        raise ApiError(400, "invalid upload declaration", "name: must not contain control characters (no CR/LF)")


def summarize(exc: ValidationError) -> str:
    """The first few problems of a validation error, each with its field, for a 400's detail."""
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ())) or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


@endpoint
async def file_data(request: Request) -> Response:
    """`PUT /v1/files/{file_id}/data?offset=N`: append one chunk at the offset the cloud holds."""
    cloud = cloud_of(request)
    part_id = await cloud.authenticate(request)
    file_id = file_id_param(request)
    raw = request.query_params.get("offset")
    if raw is None or not _OFFSET_RE.fullmatch(raw):
        raise ApiError(400, "invalid offset", "send ?offset=N with N the byte offset of this chunk")
    offset = int(raw)
    content_length(request, MAX_CHUNK_BYTES)
    # Refuse a stale chunk before reading it, so a confused client does not push megabytes for nothing.
    await _check_offset(cloud, part_id, file_id, offset, None)
    data = await read_body(request, MAX_CHUNK_BYTES)
    async with cloud.locks.hold((part_id, file_id)):
        u = await _check_offset(cloud, part_id, file_id, offset, len(data))
        try:
            with trio.CancelScope(shield=True):
                # The bytes held are the truth of the offset (blobs.held); no database write per chunk.
                new = await run_blocking(cloud.blobs.append, part_id, file_id, offset, data)
        except OffsetMismatch as exc:
            raise ApiError(409, "stale offset", f"the cloud holds {exc.held} bytes", status=_partial(u, exc.held)) from None
    log.debug("chunk stored", extra={"part": part_id, "file_id": file_id, "offset": offset, "bytes": len(data)})
    return ok(request, _partial(u, new))


async def _check_offset(cloud: Cloud, part_id: str, file_id: str, offset: int, length: int | None) -> Upload:
    status, u = await lookup(cloud, part_id, file_id)
    if status.state is FileState.COMMITTED:
        raise ApiError(409, "already committed", "this file is committed; nothing more to send", status=status)
    if status.state is FileState.UNKNOWN:
        raise ApiError(409, "upload not started", "declare the upload with POST first", status=status)
    if offset != status.offset:
        raise ApiError(409, "stale offset", f"the cloud holds {status.offset} bytes; send from there", status=status)
    assert u is not None  # state is partial
    if length is not None and offset + length > u.size:
        raise ApiError(400, "chunk exceeds declared size",
                       f"{offset} + {length} bytes is more than the declared {u.size}", status=status)
    return u


@endpoint
async def file_commit(request: Request) -> Response:
    """`POST /v1/files/{file_id}/commit`: verify the checksum, store the content, answer committed."""
    cloud = cloud_of(request)
    part_id = await cloud.authenticate(request)
    file_id = file_id_param(request)
    mtime_ns = file_mtime(request)
    async with cloud.locks.hold((part_id, file_id)):
        return ok(request, await _commit(cloud, part_id, file_id, mtime_ns))


async def _commit(cloud: Cloud, part_id: str, file_id: str, mtime_ns: int | None) -> FileStatus:
    status, u = await lookup(cloud, part_id, file_id)
    if status.state is FileState.COMMITTED:
        await run_blocking(cloud.blobs.discard, part_id, file_id)
        return status
    if status.state is FileState.UNKNOWN:
        raise ApiError(409, "upload not started", "declare and send the file before committing", status=status)
    if status.offset != status.size:
        raise ApiError(409, "upload incomplete", f"the cloud holds {status.offset} of {status.size} bytes",
                       status=status)
    assert u is not None  # state is partial
    fields = {"part": part_id, "file_id": file_id, "kind": u.kind.value, "size": u.size}
    digest = await run_blocking(cloud.blobs.sha256, part_id, file_id)
    if digest != u.sha256:
        await _discard(cloud, u)
        log.warning("checksum mismatch; upload discarded", extra={**fields, "declared": u.sha256, "actual": digest})
        raise ApiError(422, "checksum mismatch", f"declared sha256 {u.sha256}, received bytes hash to {digest}; "
                       "the upload was discarded, send the file again", status=unknown_status(file_id))
    now = time.time_ns()
    try:
        if u.kind is FileKind.CAPTURE:
            committed = await _stage_capture(cloud, u, now)
            tabular, binary = [], []
        else:
            plain = ingest.plain_file(u, u.size, now, mtime_ns)
            committed, tabular, binary = plain.file, plain.tabular, plain.binary
    except ingest.Rejected as exc:
        await _discard(cloud, u)
        log.warning("capture file rejected; upload discarded", extra={**fields, "reason": str(exc)})
        raise ApiError(422, "capture file rejected", f"{exc}; the upload was discarded",
                       status=unknown_status(file_id)) from None
    with trio.CancelScope(shield=True):  # a half-done commit must not be left by a client going away
        await run_blocking(cloud.blobs.publish, part_id, file_id)
        inserted = await cloud.committer.commit(Commit(committed, tabular, binary, staged=u.kind is FileKind.CAPTURE))
        await run_blocking(cloud.blobs.discard, part_id, file_id)
    log.debug("file committed", extra={**fields, "records": committed.records, "new": inserted})
    f = await cloud.store.get_file(part_id, file_id)
    assert f is not None
    return committed_status(f)


async def _stage_capture(cloud: Cloud, u: Upload, now: int) -> CommittedFile:
    """Parse the upload's capture file batch by batch (in a worker thread) and stage each batch in
    the store, so neither memory nor any store lock is held for the whole file; returns the file row.

    Each batch is its own short store call: another part's commit goes between two batches.
    Raises ingest.Rejected (its staged rows dropped) for a file the cloud refuses.
    """
    await cloud.store.drop_staged(u.part_id, u.file_id)  # rows of an attempt that was cut off
    async with in_thread(cloud.blobs.open_partial(u.part_id, u.file_id)) as path:
        reader = await run_blocking(ingest.CaptureIngest, u, path, u.size, now)
        try:
            while (batch := await run_blocking(reader.next_batch)) is not None:
                await cloud.store.stage_rows(*batch)
            return reader.file
        except ingest.Rejected:
            with trio.CancelScope(shield=True):
                await cloud.store.drop_staged(u.part_id, u.file_id)
            raise
        finally:
            reader.close()


async def _discard(cloud: Cloud, u: Upload) -> None:
    with trio.CancelScope(shield=True):
        await run_blocking(cloud.blobs.discard, u.part_id, u.file_id)
        await cloud.store.delete_upload(u.part_id, u.file_id)
