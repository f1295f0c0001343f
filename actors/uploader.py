"""The uploader: moves one file to the cloud, resuming where the cloud left off, exactly once.

It declares the file (size, sha256), sends the bytes from the cloud's offset in chunks, asks the
cloud to commit, and deletes the local file only once the cloud answers committed. A stale
offset resumes from the cloud's offset; a checksum mismatch starts the file over (once more at
most per attempt). Everything else is raised to the scheduler, which owns retries and backoff.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import trio

from runtime.cloud_client import ChecksumMismatch, CloudClient, StaleOffset
from runtime.sync_files import SyncFile, file_id_of, read_at, sha256_of
from runtime.sync_protocol import DEFAULT_CHUNK_BYTES, FileState, UploadStart

log = logging.getLogger("capsync.uploader")


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
    for attempt in range(2):  # a checksum mismatch starts over once; a second one is an error
        status = await client.start(file_id, start)
        offset = status.offset
        while status.state is not FileState.COMMITTED and offset < f.size:
            data = await trio.to_thread.run_sync(read_at, f.path, offset, chunk_bytes)
            if not data:
                raise OSError(f"{f.path} shrank to {offset} bytes while uploading (declared {f.size})")
            try:
                status = await client.send(file_id, offset, data)
                sent += len(data)
            except StaleOffset as stale:
                status = stale.status
                log.info("resuming at the cloud's offset", extra={"file_id": file_id, "offset": status.offset})
            offset = status.offset
        if status.state is not FileState.COMMITTED:
            try:
                status = await client.commit(file_id)
            except ChecksumMismatch:
                if attempt:
                    raise
                log.warning("cloud found a checksum mismatch; sending the file again",
                            extra={"file_id": file_id, "path": str(f.path)})
                continue
        await trio.to_thread.run_sync(_delete_synced, f.path)
        log.debug("file synced", extra={"file_id": file_id, "path": str(f.path), "bytes": sent})
        return UploadResult(file_id, f.path, f.size, sent, status.records)
    raise AssertionError("unreachable")


def _delete_synced(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # someone (the user) removed it after the commit: nothing left to do
