"""Turning a verified upload into what the store keeps: a file row plus tabular rows or binary items.

Store-independent, so every `Store` implementation ingests the same way. Capture files are
parsed with the agent's own reader (capsync.runtime.capture_file); a file that is damaged, unreadable,
or whose header names another file or part is rejected with a reason (`Rejected`).
"""

from __future__ import annotations

import base64
import math
import mimetypes
import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from capsync.cloud.store import BinaryItem, CommittedFile, TabularRow, Upload
from capsync.runtime.capture_file import CaptureFormatError, CaptureHeader, CaptureRecord, DataKind, Damage, iter_capture
from capsync.runtime.sync_protocol import FileKind

#: Deepest nesting of a payload the cloud stores; deeper ones are rejected, not crashed on.
MAX_JSON_DEPTH = 200
DEFAULT_MIME = "application/octet-stream"
#: A media type the cloud can put in a Content-Type header: printable ASCII, no CR/LF or other controls.
MIME_RE = re.compile(r"[!-~](?:[ -~]{0,253}[!-~])?")


def valid_mime(value: object) -> bool:
    """Whether `value` is a media type that can be served back as a Content-Type header."""
    return isinstance(value, str) and MIME_RE.fullmatch(value) is not None


def _mime_or_default(*candidates: object) -> str:
    """The first usable media type of `candidates` (agents' resources may name anything), else DEFAULT_MIME."""
    for value in candidates:
        if value and valid_mime(value):
            return value  # type: ignore[return-value]
    return DEFAULT_MIME


class Rejected(Exception):
    """A verified upload whose content the cloud will not store; the message says why."""


@dataclass(frozen=True)
class Ingest:
    """Everything one commit stores."""

    file: CommittedFile
    tabular: list[TabularRow]
    binary: list[BinaryItem]


def jsonable(value: Any, _depth: int = 0) -> Any:
    """A JSON-safe copy of a CBOR-decoded value.

    Non-finite floats become the strings "NaN", "Infinity", "-Infinity"; bytes become
    {"$base64": "..."}; dates become RFC 3339 text; map keys become strings; anything else
    unknown becomes its str(). Raises Rejected beyond MAX_JSON_DEPTH levels.
    """
    if _depth > MAX_JSON_DEPTH:
        raise Rejected(f"a payload is nested deeper than {MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, _depth + 1) for v in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def plain_file(upload: Upload, size: int, committed_ns: int) -> Ingest:
    """The rows of a plain file (kind=file): the file row and one binary item for the whole file."""
    mime = _mime_or_default(upload.mime_type, mimetypes.guess_type(upload.name)[0])
    f = CommittedFile(
        part_id=upload.part_id, file_id=upload.file_id, kind=FileKind.FILE, size=size, sha256=upload.sha256,
        records=1, committed_ns=committed_ns, name=upload.name, mime_type=mime, created_ns=committed_ns,
    )
    item = BinaryItem(
        part_id=upload.part_id, file_id=upload.file_id, record_index=0, resource_type="", resource_name="",
        method="", mime_type=mime, size=size, requested_ns=committed_ns, received_ns=committed_ns,
        name=upload.name, from_capture=False,
    )
    return Ingest(f, [], [item])


def capture_file(upload: Upload, path: Path, size: int, committed_ns: int) -> Ingest:
    """The rows of a capture file at `path`, checked against the upload it arrived as.

    Raises Rejected when the file cannot be read, is damaged, or its header names a different
    file id or part than the upload.
    """
    items = iter_capture(path)  # streamed: only one record's payload is in memory at a time
    try:
        try:
            h = next(items)
        except CaptureFormatError as exc:  # its str() names our path; say only where and what
            raise Rejected(f"not a readable capture file: at byte {exc.offset}: {exc.reason}") from None
        assert isinstance(h, CaptureHeader)
        if h.file_id != upload.file_id:
            raise Rejected(f"capture header names file {h.file_id!r}, uploaded as {upload.file_id!r}")
        if h.part_id != upload.part_id:
            raise Rejected(f"capture header names part {h.part_id!r}, uploaded by part {upload.part_id!r}")
        params = jsonable(h.params)
        metadata = jsonable(h.metadata)
        tags = tuple(h.tags)
        common = dict(
            part_id=upload.part_id, file_id=upload.file_id,
            resource_type=h.resource_type, resource_name=h.resource_name, method=h.method,
        )
        tabular: list[TabularRow] = []
        binary: list[BinaryItem] = []
        for i, rec in enumerate(items):
            if isinstance(rec, Damage):
                raise Rejected(f"capture file is damaged at byte {rec.offset}: {rec.reason}")
            assert isinstance(rec, CaptureRecord)
            rec_meta = jsonable(rec.metadata or {})
            if h.kind is DataKind.TABULAR:
                tabular.append(TabularRow(
                    **common, record_index=i, requested_ns=rec.requested_ns, received_ns=rec.received_ns,
                    tags=tags, payload=jsonable(rec.payload), params=params, metadata=rec_meta,
                ))
            else:
                binary.append(BinaryItem(
                    **common, record_index=i, mime_type=_mime_or_default(rec_meta.get("mime_type"), h.mime_type),
                    size=len(rec.payload), requested_ns=rec.requested_ns, received_ns=rec.received_ns,
                    tags=tags, metadata=rec_meta,
                ))
    except (ValueError, TypeError, KeyError, IndexError, EOFError, RecursionError) as exc:
        raise Rejected(f"not a readable capture file: {type(exc).__name__}: {exc}") from None
    finally:
        items.close()  # type: ignore[attr-defined]
    f = CommittedFile(
        **common, kind=FileKind.CAPTURE, size=size, sha256=upload.sha256, records=len(tabular) + len(binary),
        committed_ns=committed_ns, name=upload.name, mime_type=h.mime_type if valid_mime(h.mime_type) else "",
        data_kind=h.kind.value,
        params=params, tags=tags, created_ns=h.created_ns, metadata=metadata,
    )
    return Ingest(f, tabular, binary)


def binary_record_bytes(path: Path, record_index: int) -> bytes | None:
    """The payload of record `record_index` of the committed capture file at `path`, or None.

    Streams the file (iter_capture) and stops at the record, so only one payload is in memory.
    """
    items = iter_capture(path)
    try:
        i = -1
        for item in items:
            if isinstance(item, CaptureRecord):
                i += 1
                if i == record_index:
                    payload = item.payload
                    return bytes(payload) if isinstance(payload, (bytes, bytearray)) else None
        return None
    finally:
        items.close()  # type: ignore[attr-defined]
