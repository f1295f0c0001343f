"""The `s3://bucket/prefix` address of `capsync cloud ... --blobs` (no boto3 here: the CLI's parser,
which an agent builds too, checks addresses with it)."""

from __future__ import annotations

import re

#: S3's rule for bucket names (3-63 of a-z 0-9 . -, starting and ending with a letter or digit).
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_RE = re.compile(r"[A-Za-z0-9!_.*'()/-]{0,512}")


def parse_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`; ValueError saying what is wrong otherwise.

    The prefix is normalized to end with "/" (or to "" for the bucket's root).
    """
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r}: expected s3://BUCKET/PREFIX (or leave --blobs out to keep files in --data-dir)")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"{uri!r}: {bucket!r} is not a valid S3 bucket name (3-63 of a-z 0-9 . -)")
    prefix = prefix.strip("/")
    if not _PREFIX_RE.fullmatch(prefix) or (prefix and any(p in ("", ".", "..") for p in prefix.split("/"))):
        raise ValueError(f"{uri!r}: the prefix may hold letters, digits and !_.*'()-, separated by single '/', "
                         "without '.' or '..' segments")
    return bucket, f"{prefix}/" if prefix else ""
