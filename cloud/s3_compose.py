"""Composing an upload's chunk objects into its committed object (`S3Blobs.publish`).

Each way appears whole or not at all, and writing the same bytes again is harmless:

- one chunk: a server-side CopyObject (nothing passes through the cloud);
- under 5 MiB in several chunks: one PutObject of their bytes;
- otherwise a multipart upload. S3 wants every part but the last to be at least 5 MiB, and
  agents send 1 MiB chunks by default, so consecutive chunks are grouped into parts of at least
  5 MiB: a group of one chunk is copied server-side (UploadPartCopy), a group of several is sent
  as UploadPart, read from the scratch copy the commit made if there is one, else from the chunks.
  A failed multipart upload is aborted; one cut off by a crash is left to the bucket's lifecycle
  rule (docs/cloud.md: AbortIncompleteMultipartUpload).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from capsync.cloud.s3_blobs import Chunk, S3Blobs

log = logging.getLogger("capsync.cloud.s3")

#: S3's smallest part of a multipart upload (every part but the last).
MIN_PART_BYTES = 5 * 1024 * 1024


def part_groups(chunks: tuple[Chunk, ...], min_part: int = MIN_PART_BYTES) -> list[list[Chunk]]:
    """Consecutive chunks grouped so that every group but the last holds at least `min_part` bytes."""
    groups: list[list[Chunk]] = []
    current: list[Chunk] = []
    size = 0
    for c in chunks:
        current.append(c)
        size += c.size
        if size >= min_part:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return groups


def _gather(blobs: S3Blobs, key: tuple[str, str], kept: Path | None, group: list[Chunk]) -> bytes:
    """The bytes of `group` (at most MIN_PART_BYTES plus one chunk): from the scratch copy, or GETs."""
    if kept is not None:
        with open(kept, "rb") as f:
            f.seek(group[0].offset)
            return f.read(group[-1].end - group[0].offset)
    return b"".join(piece for c in group for piece in blobs.chunk_bytes(key, c))


def compose(blobs: S3Blobs, key: tuple[str, str], chunks: tuple[Chunk, ...], kept: Path | None) -> None:
    """Write the committed object of upload `key` from its contiguous `chunks` (`kept`: a local
    file holding exactly them, if there is one)."""
    dst = blobs.final_key(*key)
    total = sum(c.size for c in chunks)

    def source(c: Chunk) -> dict:
        return {"Bucket": blobs.bucket, "Key": blobs.chunk_key(*key, c.offset)}

    if len(chunks) == 1:
        blobs.request("publish a file", blobs.s3.copy_object, Key=dst, CopySource=source(chunks[0]),
                      CopySourceIfMatch=chunks[0].etag)
        return
    if total < MIN_PART_BYTES:
        blobs.request("publish a file", blobs.s3.put_object, Key=dst, Body=_gather(blobs, key, kept, list(chunks)))
        return
    upload_id = blobs.request("start a multipart upload", blobs.s3.create_multipart_upload, Key=dst)["UploadId"]
    try:
        parts = []
        for n, group in enumerate(part_groups(chunks), start=1):
            if len(group) == 1:
                r = blobs.request("copy a part", blobs.s3.upload_part_copy, Key=dst, UploadId=upload_id, PartNumber=n,
                                  CopySource=source(group[0]), CopySourceIfMatch=group[0].etag)
                etag = r["CopyPartResult"]["ETag"]
            else:
                r = blobs.request("send a part", blobs.s3.upload_part, Key=dst, UploadId=upload_id, PartNumber=n,
                                  Body=_gather(blobs, key, kept, group))
                etag = r["ETag"]
            parts.append({"ETag": etag, "PartNumber": n})
        blobs.request("complete a multipart upload", blobs.s3.complete_multipart_upload, Key=dst, UploadId=upload_id,
                      MultipartUpload={"Parts": parts})
    except BaseException:
        try:
            blobs.request("abort a multipart upload", blobs.s3.abort_multipart_upload, Key=dst, UploadId=upload_id)
        except Exception as exc:  # the lifecycle rule removes it later; the first error is the one to tell
            log.warning("could not abort a multipart upload", extra={"key": dst, "error": str(exc)})
        raise
