"""Per-part limits on uploads, and the sweep that expires abandoned uploads (docs/sync-protocol.md).

One cloud serves many parts, so no part may fill the disk or the uploads table for the others:

- declared bytes in flight (uploads declared and not yet committed) and their count are bounded
  per part: a declaration beyond either is a 429 (retry once other uploads commit or expire);
- a part's stored bytes (committed, not expired by retention) plus what it has in flight are
  bounded: beyond that a declaration is a 507 naming the quota;
- a declaration that would leave less than `min_free_bytes` free on the data dir's disk is a 507,
  so a full disk refuses new uploads with a reason instead of failing every part's ingest (on an
  object store, which has no free space to ask about, this check is skipped);
- an upload that received no byte for `upload_expiry_s` is abandoned: the sweep (run with
  retention) forgets it and removes its bytes, as it removes partial bytes that no upload owns.

Every limit is set on `capsync cloud serve` (see `capsync.cloud.limits.UploadLimits` for the defaults); 0 turns it off.
"""

from __future__ import annotations

import logging
import time

from capsync.cloud.http import ApiError, Cloud
from capsync.cloud.limits import UploadLimits  # (also re-exported: the limits live with their checks)
from capsync.cloud.store import Upload
from capsync.runtime.blocking import run_blocking

log = logging.getLogger("capsync.cloud.quotas")


def _refuse(status: int, error: str, detail: str, flag: str) -> ApiError:
    headers = {"Retry-After": "60"} if status == 429 else None
    return ApiError(status, error, f"{detail}; the cloud's operator can raise it with `capsync cloud serve {flag}`",
                    headers=headers)


async def check_declaration(cloud: Cloud, part_id: str, file_id: str, size: int) -> None:
    """Raise the 429 or 507 ApiError when declaring `size` bytes as (part, file) would break a limit.

    An upload of the same file being replaced does not count against the new one.
    """
    usage = await cloud.store.part_usage(part_id)
    old = await cloud.store.get_upload(part_id, file_id)
    # An object store has no free space to check (free_bytes is None): then only the quotas hold.
    free = await run_blocking(cloud.blobs.free_bytes) if cloud.limits.min_free_bytes else None
    _check(cloud.limits, part_id, usage.uploads - (old is not None), usage.upload_bytes - (old.size if old else 0),
           usage.stored_bytes, size, free)


async def check_whole_upload(cloud: Cloud, part_id: str, size: int) -> None:
    """`check_declaration` for a one-request upload, against recent usage (capsync.cloud.usage_cache)."""
    usage = await cloud.usage.usage(part_id)
    free = await cloud.usage.free_bytes() if cloud.limits.min_free_bytes else None
    _check(cloud.limits, part_id, usage.uploads, usage.upload_bytes, usage.stored_bytes, size, free)


def _check(lim: UploadLimits, part_id: str, uploads: int, inflight: int, stored: int, size: int,
           free: int | None) -> None:
    if lim.max_inflight_uploads and uploads + 1 > lim.max_inflight_uploads:
        raise _refuse(429, "too many uploads in flight",
                      f"part {part_id!r} has {uploads} uploads declared and not committed; at most "
                      f"{lim.max_inflight_uploads}. Commit them or let them expire", "--max-inflight-uploads N")
    if lim.max_inflight_bytes and inflight + size > lim.max_inflight_bytes:
        raise _refuse(429, "too many bytes in flight",
                      f"part {part_id!r} has {inflight} bytes declared in uploads not committed, this one adds "
                      f"{size}; at most {lim.max_inflight_bytes}. Commit them or let them expire",
                      "--max-inflight-bytes N")
    if lim.max_stored_bytes and stored + inflight + size > lim.max_stored_bytes:
        raise _refuse(507, "part storage quota exceeded",
                      f"part {part_id!r} stores {stored} bytes with {inflight} in flight, this upload "
                      f"adds {size}; its quota is {lim.max_stored_bytes} bytes. Retention frees space",
                      "--max-stored-bytes N")
    if free is not None and free - size < lim.min_free_bytes:
        raise _refuse(507, "insufficient storage",
                      f"the cloud's disk has {free} bytes free; this upload of {size} bytes would leave less "
                      f"than the {lim.min_free_bytes} bytes it keeps free", "--min-free-bytes N")


async def expire_abandoned(cloud: Cloud, now_ns: int | None = None) -> list[Upload]:
    """Forget every upload that received no byte for `upload_expiry_s`, remove its bytes, and remove
    partial bytes as old that no upload owns; return the uploads expired."""
    if not cloud.limits.upload_expiry_s:
        return []
    now_ns = time.time_ns() if now_ns is None else now_ns
    cutoff = now_ns - int(cloud.limits.upload_expiry_s * 1e9)
    gone = []
    for u in await cloud.store.list_uploads():
        async with cloud.locks.hold((u.part_id, u.file_id)):
            current = await cloud.store.get_upload(u.part_id, u.file_id)
            if current is None:
                continue  # committed or discarded meanwhile
            last = max(current.created_ns, await run_blocking(cloud.blobs.last_write_ns, u.part_id, u.file_id) or 0)
            if last >= cutoff:
                continue
            await cloud.store.delete_upload(u.part_id, u.file_id)
            await cloud.store.drop_staged(u.part_id, u.file_id)  # rows of a commit cut off midway, if any
            held = await run_blocking(cloud.blobs.held, u.part_id, u.file_id)
            await run_blocking(cloud.blobs.discard, u.part_id, u.file_id)
            gone.append(current)
            log.info("abandoned upload expired", extra={"part": u.part_id, "file_id": u.file_id, "size": u.size,
                                                       "received": held})
    owned = {(u.part_id, u.file_id) for u in await cloud.store.list_uploads()}
    for part_id, file_id, mtime_ns in await run_blocking(cloud.blobs.partial_files):
        if (part_id, file_id) not in owned and mtime_ns < cutoff:
            async with cloud.locks.hold((part_id, file_id)):
                if await cloud.store.get_upload(part_id, file_id) is None:
                    await run_blocking(cloud.blobs.discard, part_id, file_id)
                    log.info("orphaned upload bytes removed", extra={"part": part_id, "file_id": file_id})
    return gone
