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

from runtime.cloud_client import ChecksumMismatch, CloudClient, StaleOffset
from runtime.sync_files import SyncFile, file_id_of, read_at, sha256_of
from runtime.sync_protocol import DEFAULT_CHUNK_BYTES, FileState, FileStatus, UploadStart

log = logging.getLogger("capsync.uploader")

#: How often one attempt may declare a file afresh (after a checksum mismatch or a cloud that lost
#: the partial upload) before it gives up and lets the scheduler retry later with backoff.
MAX_FRESH_STARTS = 2


@dataclass(frozen=True)
class UploadResult:
    """What one finished upload did."""

    file_id: str
    path: Path
    size: int
    bytes_sent: int
    records: int | None


async def upload_file(client: CloudClient, f: SyncFile, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> UploadResult:
    """Upload `f` until the cloud has committed it, then delete it locally."""
    file_id = await trio.to_thread.run_sync(file_id_of, f)
    digest = await trio.to_thread.run_sync(sha256_of, f.path)
    start = UploadStart(kind=f.kind, size=f.size, sha256=digest, name=f.name, mime_type=f.mime_type)
    sent = 0
    fresh_starts = 0
    status = await client.start(file_id, start)
    while status.state is not FileState.COMMITTED:
        if status.state is FileState.UNKNOWN:  # the cloud discarded the upload: declare it again
            fresh_starts += 1
            if fresh_starts > MAX_FRESH_STARTS:
                raise OSError(f"the cloud discarded {f.path} {fresh_starts - 1} times; will retry later")
            status = await client.start(file_id, start)
            continue
        try:
            if status.offset < f.size:
                data = await trio.to_thread.run_sync(read_at, f.path, status.offset, chunk_bytes)
                if not data:
                    raise OSError(f"{f.path} shrank to {status.offset} bytes while uploading (declared {f.size})")
                status = await client.send(file_id, status.offset, data)
                sent += len(data)
            else:
                status = await client.commit(file_id)
        except StaleOffset as stale:  # the cloud holds something else than we thought: adopt its view
            status = stale.status
            log.info("adopting the cloud's view of the upload",
                     extra={"file_id": file_id, "state": status.state.value, "offset": status.offset})
        except ChecksumMismatch:
            log.warning("cloud found a checksum mismatch; sending the file again",
                        extra={"file_id": file_id, "path": str(f.path)})
            status = FileStatus(file_id=file_id, state=FileState.UNKNOWN)
    await trio.to_thread.run_sync(_delete_synced, f.path)
    log.debug("file synced", extra={"file_id": file_id, "path": str(f.path), "bytes": sent})
    return UploadResult(file_id, f.path, f.size, sent, status.records)


def _delete_synced(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # someone (the user) removed it after the commit: nothing left to do
