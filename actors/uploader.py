"""The uploader: moves one file to the cloud, resuming where the cloud left off, exactly once.

It declares the file (size, sha256), sends the bytes from the cloud's offset in chunks, asks the
cloud to commit, and deletes the local file only once the cloud answers committed. A stale
offset resumes from the cloud's offset; a checksum mismatch starts the file over (at most
twice per attempt). Everything else is raised to the scheduler, which owns retries and backoff.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import trio

from capsync.runtime.cloud_client import ChecksumMismatch, CloudClient, CloudUnavailable, StaleOffset
from capsync.runtime.faults import FaultPlan, InjectedNetworkError
from capsync.runtime.sync_files import SyncFile, file_id_of, read_at, sha256_of
from capsync.runtime.sync_protocol import DEFAULT_CHUNK_BYTES, FileState, FileStatus, UploadStart
from capsync.runtime.blocking import run_blocking

log = logging.getLogger("capsync.uploader")

#: How often one attempt may declare a file afresh (after a checksum mismatch or a cloud that lost
#: the partial upload) before it gives up and lets the scheduler retry later with backoff.
MAX_FRESH_STARTS = 2
#: How long a stop waits for a commit in flight (and the local delete after it) before abandoning it.
COMMIT_GRACE_S = 30.0


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


async def upload_file(client: CloudClient, f: SyncFile, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                      faults: FaultPlan | None = None) -> UploadResult:
    """Upload `f` until the cloud has committed it, then delete it locally.

    With `faults`, the points `before_request` and `before_chunk` of actor `uploader <file_id>` fire.
    """
    file_id = await run_blocking(file_id_of, f)
    digest = await run_blocking(sha256_of, f.path)
    start = UploadStart(kind=f.kind, size=f.size, sha256=digest, name=f.name, mime_type=f.mime_type)
    sent = 0
    fresh_starts = 0
    actor = f"uploader {file_id}"
    await _point(faults, actor, "before_request")
    status = await client.start(file_id, start)
    while status.state is not FileState.COMMITTED:
        if status.state is FileState.UNKNOWN:  # the cloud discarded the upload: declare it again
            fresh_starts += 1
            if fresh_starts > MAX_FRESH_STARTS:
                raise OSError(f"the cloud discarded {f.path} {fresh_starts - 1} times; will retry later")
            await _point(faults, actor, "before_request")
            status = await client.start(file_id, start)
            continue
        try:
            if status.offset < f.size:
                data = await run_blocking(read_at, f.path, status.offset, chunk_bytes)
                if not data:
                    raise OSError(f"{f.path} shrank to {status.offset} bytes while uploading (declared {f.size})")
                await _point(faults, actor, "before_chunk")
                status = await client.send(file_id, status.offset, data)
                sent += len(data)
            else:
                await _point(faults, actor, "before_request")
                # The cloud finishes a commit even if we go away; so do we, or a stop right now would
                # leave a committed file on disk (harmless, but re-declared at the next start).
                with trio.move_on_after(COMMIT_GRACE_S, shield=True) as grace:
                    status = await client.commit(file_id)
                    if status.state is FileState.COMMITTED:
                        await run_blocking(_delete_synced, f.path)
                if grace.cancelled_caught:
                    raise CloudUnavailable(f"the commit was not answered within {COMMIT_GRACE_S:g} s")
        except StaleOffset as stale:  # the cloud holds something else than we thought: adopt its view
            status = stale.status
            log.info("adopting the cloud's view of the upload",
                     extra={"file_id": file_id, "state": status.state.value, "offset": status.offset})
        except ChecksumMismatch:
            log.warning("cloud found a checksum mismatch; sending the file again",
                        extra={"file_id": file_id, "path": str(f.path)})
            status = FileStatus(file_id=file_id, state=FileState.UNKNOWN)
    await run_blocking(_delete_synced, f.path)  # already gone after our own commit; not when the cloud had it
    log.debug("file synced", extra={"file_id": file_id, "path": str(f.path), "bytes": sent})
    return UploadResult(file_id, f.path, f.size, sent, status.records)


def _delete_synced(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # someone (the user) removed it after the commit: nothing left to do
