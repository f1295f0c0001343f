"""The uploader: moves one file to the cloud, resuming where the cloud left off, exactly once.

A file of at most one chunk goes in one request (declaration, bytes and commit together; see
docs/sync-protocol.md), unless the cloud is older than that route. A bigger one is declared (size,
sha256), its bytes are sent from the cloud's offset in chunks, and the cloud is asked to commit.
Chunks start at 1 MiB and grow (`ChunkSizes`) while the link carries them quickly, up to the
protocol's 8 MiB: a fast link pays one request and one cloud fsync per 8 MiB instead of per MiB,
a slow or flaky one keeps small chunks, so a cut chunk loses little.
The uploader deletes the local file only once the cloud answers committed for exactly
the bytes on disk: the answer must state the size and sha256 the uploader computed from the file,
and just before the delete the file must still be those bytes: its stamp (inode, size, mtime,
ctime) unchanged since it was hashed, or else its hash again. Any other "committed" (a cloud that lies, an
older cloud that does not say, a file that changed meanwhile) keeps the file and raises
`UnverifiedCommit`; a changed plain file gets a new id from its new content and is uploaded
again at the next pass. A stale
offset resumes from the cloud's offset; a checksum mismatch starts the file over (at most
twice per attempt). Everything else is raised to the scheduler, which owns retries and backoff.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import trio

from capsync.runtime.cloud_client import (
    ChecksumMismatch, CloudClient, CloudUnavailable, OneRequestUnsupported, StaleOffset, UploadRejected,
)
from capsync.runtime.faults import FaultPlan, InjectedNetworkError
from capsync.runtime.sync_files import SyncFile, file_id_of, fingerprint, hashed_stamp, read_at, stamp
from capsync.runtime.sync_protocol import (
    DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, FileKind, FileState, FileStatus, UploadStart,
)
from capsync.runtime.blocking import run_blocking
from capsync.runtime.see_through import see_through

log = logging.getLogger("capsync.uploader")

#: How often one attempt may declare a file afresh (after a checksum mismatch or a cloud that lost
#: the partial upload) before it gives up and lets the scheduler retry later with backoff.
MAX_FRESH_STARTS = 2
#: How long a stop waits for a commit in flight (and the local delete after it) before abandoning
#: it: well inside the supervisor's shutdown timeout. Abandoning it is harmless (the cloud finishes
#: the commit; the next start declares the file again and is told it is committed).
COMMIT_GRACE_S = 2.0


class ChunkSizes:
    """The size of each next chunk of one upload: `start` bytes, doubled after a chunk the cloud
    acknowledged within GROW_BELOW_S, halved (never below `start`) after one that took longer than
    SHRINK_ABOVE_S, at most `limit` (MAX_CHUNK_BYTES, or less once a proxy refused a big chunk)."""

    GROW_BELOW_S = 0.25
    SHRINK_ABOVE_S = 1.0

    def __init__(self, start: int, limit: int) -> None:
        self.start = start
        self.limit = max(start, limit)
        self.size = start

    def took(self, seconds: float) -> None:
        """Adjust to a chunk of `size` bytes that took `seconds` from sending to its acknowledgement."""
        if seconds < self.GROW_BELOW_S:
            self.size = min(self.limit, self.size * 2)
        elif seconds > self.SHRINK_ABOVE_S:
            self.size = max(self.start, self.size // 2)

    def refused(self) -> bool:
        """A chunk of `size` bytes was refused as too large (413): True when a smaller one is worth a
        try (size and limit are then `start`, which has always been taken); False when `size` was
        already `start` (the refusal is the cloud's own)."""
        if self.size <= self.start:
            return False
        self.limit = self.size = self.start
        return True


class UnverifiedCommit(Exception):
    """The cloud answered "committed", but not for exactly the bytes on disk: the file was kept."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}; the local file is kept")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class UploadResult:
    """What one finished upload did."""

    file_id: str
    path: Path
    size: int
    bytes_sent: int
    records: int | None


async def _point(faults: FaultPlan | None, actor: str, point: str) -> None:
    if faults is None:
        return
    try:
        await faults.hit(actor, point)
    except InjectedNetworkError as exc:  # a dropped network looks like an unreachable cloud
        raise CloudUnavailable(str(exc)) from exc


async def upload_file(client: CloudClient, f: SyncFile, *, chunk_bytes: int | None = None,
                      faults: FaultPlan | None = None) -> UploadResult:
    """Upload `f` until the cloud has committed it, then delete it locally.

    Chunks are sized by ChunkSizes from DEFAULT_CHUNK_BYTES, or are all `chunk_bytes` when given
    (tests). With `faults`, the points `before_request` and `before_chunk` of actor
    `uploader <file_id>` fire.
    """
    sizes = ChunkSizes(chunk_bytes or DEFAULT_CHUNK_BYTES,
                       chunk_bytes or min(MAX_CHUNK_BYTES, client.max_chunk_bytes))
    chunk_bytes = sizes.start
    if f.size <= chunk_bytes and client.one_request:
        data, digest, file_id, seen = await run_blocking(_read_small, f, chunk_bytes)  # one hop: read, hash, id
        if data is not None:
            start = _declaration(f, len(data), digest)
            done = await _upload_whole(client, f, file_id, start, data, seen, faults)
            if done is not None:
                return done
    size, digest, seen = await run_blocking(hashed_stamp, f.path)
    file_id = await run_blocking(file_id_of, f, digest)
    start = _declaration(f, size, digest)
    actor = f"uploader {file_id}"
    sent = 0
    fresh_starts = 0
    deleted = False
    await _point(faults, actor, "before_request")
    status = await client.start(file_id, start)
    budget = _request_budget(size, chunk_bytes)
    while status.state is not FileState.COMMITTED:
        budget -= 1
        if budget < 0:  # a cloud that keeps answering without progress must not hold us forever
            raise CloudUnavailable(f"the cloud made no progress on {f.path} in {_request_budget(size, chunk_bytes)} "
                                   "requests; will retry later")
        if status.state is FileState.UNKNOWN:  # the cloud discarded the upload: declare it again
            fresh_starts += 1
            if fresh_starts > MAX_FRESH_STARTS:
                raise OSError(f"the cloud discarded {f.path} {fresh_starts - 1} times; will retry later")
            await _point(faults, actor, "before_request")
            status = await client.start(file_id, start)
            continue
        try:
            if status.offset < size:
                data = await run_blocking(read_at, f.path, status.offset, sizes.size)
                if not data:
                    raise OSError(f"{f.path} shrank to {status.offset} bytes while uploading (declared {size})")
                await _point(faults, actor, "before_chunk")
                sending = trio.current_time()
                try:
                    status = await client.send(file_id, status.offset, data)
                except UploadRejected as exc:
                    if exc.status_code != 413 or not sizes.refused():
                        raise
                    client.max_chunk_bytes = sizes.limit  # a proxy in between takes no more: remember it
                    log.info("a chunk was refused as too large; sending smaller chunks to this cloud",
                             extra={"file_id": file_id, "refused_bytes": len(data), "chunk_bytes": sizes.limit})
                    continue
                sizes.took(trio.current_time() - sending)
                sent += len(data)
            else:
                await _point(faults, actor, "before_request")
                # The cloud finishes a commit even if we go away; so do we (for a while), or a stop
                # right now would leave a committed file on disk (harmless, but re-declared at the next start).
                async def commit_and_delete() -> FileStatus:
                    status = await client.commit(file_id, _mtime_of(f))
                    if status.state is FileState.COMMITTED:
                        await _delete_verified(f.path, status, file_id, size, digest, seen)
                    return status

                status = await see_through(commit_and_delete, grace_s=COMMIT_GRACE_S)
                deleted = status.state is FileState.COMMITTED
        except StaleOffset as stale:  # the cloud holds something else than we thought: adopt its view
            status = stale.status
            log.info("adopting the cloud's view of the upload",
                     extra={"file_id": file_id, "state": status.state.value, "offset": status.offset})
        except ChecksumMismatch:
            log.warning("cloud found a checksum mismatch; sending the file again",
                        extra={"file_id": file_id, "path": str(f.path)})
            status = FileStatus(file_id=file_id, state=FileState.UNKNOWN)
    if not deleted:  # the cloud had it before our commit
        await _delete_verified(f.path, status, file_id, size, digest, seen)
    log.debug("file synced", extra={"file_id": file_id, "path": str(f.path), "bytes": sent})
    return UploadResult(file_id, f.path, size, sent, status.records)


def _mtime_of(f: SyncFile) -> int | None:
    """The modification time a plain file's commit states (the cloud keeps it); None for capture files."""
    return f.mtime_ns if f.kind is FileKind.FILE else None


def _declaration(f: SyncFile, size: int, digest: str) -> UploadStart:
    return UploadStart(kind=f.kind, size=size, sha256=digest, name=f.name, mime_type=f.mime_type)


def _read_small(f: SyncFile, limit: int) -> tuple[bytes | None, str, str, tuple | None]:
    """A small file's bytes, sha256, upload id and stamp (see `hashed_stamp`), from one read; Nones
    when it grew past `limit`."""
    before = stamp(os.stat(f.path))
    data = read_at(f.path, 0, limit + 1)
    if len(data) > limit:
        return None, "", "", None
    digest = hashlib.sha256(data).hexdigest()
    seen = before if stamp(os.stat(f.path)) == before and before[2] == len(data) else None
    return data, digest, file_id_of(f, digest, data), seen


async def _upload_whole(client: CloudClient, f: SyncFile, file_id: str, start: UploadStart, data: bytes,
                        seen: tuple | None, faults: FaultPlan | None) -> UploadResult | None:
    """The one-request upload of a small file, then the verified delete; None when the resumable
    upload must do it instead (an older cloud, a file above the cloud's one-request limit, or
    bytes the cloud found not to match their hash)."""
    actor = f"uploader {file_id}"
    await _point(faults, actor, "before_request")
    await _point(faults, actor, "before_chunk")
    # Like a commit: once sent, see it through (and delete the file), or a stop now would leave a
    # committed file on disk (harmless, but declared again at the next start).
    async def put_and_delete() -> FileStatus | None:
        try:
            status = await client.put_whole(file_id, start, data, _mtime_of(f))
        except (OneRequestUnsupported, ChecksumMismatch):
            return None
        await _delete_verified(f.path, status, file_id, start.size, start.sha256, seen)
        return status

    status = await see_through(put_and_delete, grace_s=COMMIT_GRACE_S)
    if status is None:
        return None
    log.debug("file synced in one request", extra={"file_id": file_id, "path": str(f.path), "bytes": len(data)})
    return UploadResult(file_id, f.path, start.size, len(data), status.records)


def _request_budget(size: int, chunk_bytes: int) -> int:
    """Requests one attempt may make: every chunk four times over (resumes, restarts), plus some."""
    return 4 * (size // max(1, chunk_bytes) + 1) + 16


async def _delete_verified(path: Path, status: FileStatus, file_id: str, size: int, digest: str,
                           seen: tuple | None) -> None:
    """Delete `path` if `status` acknowledges exactly its bytes and it still holds them; else
    UnverifiedCommit. `seen` is the file's stamp when it was hashed (None: unknown)."""
    _check_commit(path, status, file_id, size, digest)
    await run_blocking(_delete_if_unchanged, path, size, digest, seen)


def _check_commit(path: Path, status: FileStatus, file_id: str, size: int, digest: str) -> None:
    """Raise UnverifiedCommit unless `status` acknowledges exactly `size` bytes hashing to `digest`."""
    if status.file_id != file_id:
        raise UnverifiedCommit(path, f"the cloud answered committed for file id {status.file_id!r}, not {file_id!r}")
    if status.sha256 is None:
        raise UnverifiedCommit(path, "the cloud's commit answer does not state the sha256 of what it committed "
                                     "(a cloud older than the committed-sha256 answer, or not a capsync cloud)")
    if (status.size, status.sha256) != (size, digest):
        raise UnverifiedCommit(path, f"the cloud committed {status.size} bytes with sha256 {status.sha256}, "
                                     f"but the file holds {size} bytes with sha256 {digest}")


def _delete_if_unchanged(path: Path, size: int, digest: str, seen: tuple | None) -> None:
    """Delete `path` if it still holds exactly `size` bytes hashing to `digest`; else keep it.

    An unchanged stamp (`seen`: inode, size, mtime, ctime as when it was hashed) proves the bytes
    unchanged without reading them again; anything else is hashed again.
    """
    try:
        if seen is not None and stamp(os.stat(path)) == seen:
            os.unlink(path)
            return
        now = fingerprint(path)
    except FileNotFoundError:
        return  # someone (the user) removed it after the commit: nothing left to do
    if now != (size, digest):
        raise UnverifiedCommit(path, f"the file changed after it was committed (now {now[0]} bytes, "
                                     f"sha256 {now[1]}); it will be uploaded again as new content")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
