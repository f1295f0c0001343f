"""Keeping the good records of a finished capture file whose tail was damaged after it was finished.

SD cards rot: a `.capture` can come back with a torn or flipped last frame, or garbage appended.
The cloud refuses such a file whole, so `salvage_damaged_tail` cuts the file back to its intact
records (which then sync exactly once, under the same file id) and keeps the damaged bytes aside
in `<capture_dir>/failed/`, with a report naming the file, the byte offset and the reason:

    failed/<relative path>.damaged-tail         the bytes from the first bad frame to the end
    failed/<relative path>.damaged-tail.json    {"file", "file_id", "offset", "reason", "intact_records", ...}

The damaged bytes are written and fsynced before the file is cut, so a crash in between only means
doing it again. A file whose header is unreadable, or that has no intact record, is not touched here
(it is set aside whole by the caller).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from capsync.runtime.capture_file import CaptureFormatError, make_private_dirs_durable
from capsync.runtime.capture_reader import intact_prefix
from capsync.runtime.sync_files import write_durably


@dataclass(frozen=True)
class Salvage:
    """What `salvage_damaged_tail` did to one file."""

    path: Path
    offset: int  # where the damage starts: the file now ends here
    reason: str
    intact_records: int
    tail: Path  # the damaged bytes, under failed/
    report: Path


def salvage_damaged_tail(path: Path, failed_dir: Path, relative: str) -> Salvage | None:
    """Cut the capture file at `path` back to its intact records and keep the rest under
    `failed_dir/relative`; None when there is nothing to salvage (no damage, an unreadable header,
    or no intact record)."""
    try:
        header, records, good, damage = intact_prefix(path)
    except CaptureFormatError:
        return None
    if damage is None or records == 0:
        return None
    tail = failed_dir / f"{relative}.damaged-tail"
    report = failed_dir / f"{relative}.damaged-tail.json"
    make_private_dirs_durable(tail.parent)
    with open(path, "rb") as src:
        src.seek(good)
        rest = src.read()
    write_durably(tail, rest)
    write_durably(report, json.dumps({
        "file": str(path), "file_id": header.file_id, "offset": good, "reason": damage.reason,
        "intact_records": records, "damaged_bytes": len(rest),
        "what_happened": "the intact records before this offset stay in the file and sync; these bytes did not",
    }, indent=2).encode())
    with open(path, "r+b") as f:
        f.truncate(good)
        os.fsync(f.fileno())
    return Salvage(path, good, damage.reason, records, tail, report)


