"""Turning a verified upload into what the store keeps: a file row plus tabular rows or binary items.

Store-independent, so every `Store` implementation ingests the same way. Capture files are
parsed with the agent's own reader (capsync.runtime.capture_file); a file that is damaged, unreadable,
or whose header names another file or part is rejected with a reason (`Rejected`). A commit reads a
capture file in batches (`CaptureIngest`), so memory and each store transaction stay bounded.
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
from capsync.runtime.capture_file import (
    CaptureFormatError, CaptureHeader, CaptureRecord, DataKind, Damage, iter_capture, iter_capture_bytes,
)
from capsync.runtime.sync_protocol import FileKind, folder_tags

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
    if value.__class__ is dict and _flat_and_plain(value):
        return value  # the common sensor reading: nothing to convert, and no copy
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


_PLAIN = (str, int, bool, type(None))


def _flat_and_plain(d: dict) -> bool:
    """Whether `d` has only str keys and finite numbers, strings, bools or None as values (JSON as it is)."""
    for k, v in d.items():
        if k.__class__ is not str:
            return False
        if v.__class__ is float:
            if v - v != 0.0:  # inf or NaN
                return False
        elif v.__class__ not in _PLAIN:
            return False
    return True


def plain_file(upload: Upload, size: int, committed_ns: int, mtime_ns: int | None = None) -> Ingest:
    """The rows of a plain file (kind=file): the file row and one binary item for the whole file.

    Its folders named `tag=<name>` tag it with `<name>` (names that are not valid tags are left
    out); `mtime_ns`, the modification time the agent stated, goes in its metadata as `mtime_ns`."""
    mime = _mime_or_default(upload.mime_type, mimetypes.guess_type(upload.name)[0])
    tags = folder_tags(upload.name)
    metadata = {} if mtime_ns is None else {"mtime_ns": mtime_ns}
    f = CommittedFile(
        part_id=upload.part_id, file_id=upload.file_id, kind=FileKind.FILE, size=size, sha256=upload.sha256,
        records=1, committed_ns=committed_ns, name=upload.name, mime_type=mime, tags=tags, created_ns=committed_ns,
        metadata=metadata,
    )
    item = BinaryItem(
        part_id=upload.part_id, file_id=upload.file_id, record_index=0, resource_type="", resource_name="",
        method="", mime_type=mime, size=size, requested_ns=committed_ns, received_ns=committed_ns,
        tags=tags, metadata=dict(metadata), name=upload.name, from_capture=False,
    )
    return Ingest(f, [], [item])


#: Rows parsed and stored per batch when a capture file is committed: memory and every store
#: transaction stay this small, whatever the file holds (at most MAX_RECORDS_PER_FILE records).
BATCH_ROWS = 2000


class CaptureIngest:
    """A capture file (at a path, or in memory as bytes) read as batches of rows, checked against the
    upload it arrived as.

    Blocking (run it in a worker thread). Opening reads the header; `next_batch()` parses up to
    `batch` more records; after the last batch, `file` is the file row. Raises Rejected when the
    file cannot be read, is damaged, or its header names a different file id or part than the upload.
    Only one batch of rows is ever in memory. `close()` releases the file.
    """

    def __init__(self, upload: Upload, source: Path | bytes, size: int, committed_ns: int) -> None:
        self._upload, self._size, self._committed_ns = upload, size, committed_ns
        self._items = iter_capture_bytes(source) if isinstance(source, bytes) else iter_capture(source)
        self._index = 0
        self._done = False
        try:
            try:
                h = next(self._items)
            except CaptureFormatError as exc:  # its str() names our path; say only where and what
                raise Rejected(f"not a readable capture file: at byte {exc.offset}: {exc.reason}") from None
            assert isinstance(h, CaptureHeader)
            if h.file_id != upload.file_id:
                raise Rejected(f"capture header names file {h.file_id!r}, uploaded as {upload.file_id!r}")
            if h.part_id != upload.part_id:
                raise Rejected(f"capture header names part {h.part_id!r}, uploaded by part {upload.part_id!r}")
            self.header = h
            self._params = jsonable(h.params)
            self._metadata = jsonable(h.metadata)
        except BaseException:
            self.close()
            raise
        self._common = dict(
            part_id=upload.part_id, file_id=upload.file_id,
            resource_type=h.resource_type, resource_name=h.resource_name, method=h.method,
        )

    def next_batch(self, batch: int | None = None) -> tuple[list[TabularRow], list[BinaryItem]] | None:
        """Up to `batch` (default BATCH_ROWS) more rows (tabular, binary), or None after the last record."""
        if self._done:
            return None
        batch = batch or BATCH_ROWS
        h, tags = self.header, tuple(self.header.tags)
        tabular: list[TabularRow] = []
        binary: list[BinaryItem] = []
        c = self._common
        part_id, file_id, rtype, rname, method = (c["part_id"], c["file_id"], c["resource_type"],
                                                  c["resource_name"], c["method"])
        is_tabular, params = h.kind is DataKind.TABULAR, self._params
        try:
            for rec in self._items:
                if rec.__class__ is not CaptureRecord:
                    assert isinstance(rec, Damage)
                    raise Rejected(f"capture file is damaged at byte {rec.offset}: {rec.reason}")
                i = self._index
                self._index += 1
                meta = rec.metadata
                rec_meta = jsonable(meta) if meta else {}
                if is_tabular:
                    tabular.append(TabularRow(part_id, file_id, i, rtype, rname, method, rec.requested_ns,
                                              rec.received_ns, tags, jsonable(rec.payload), params, rec_meta))
                else:
                    binary.append(BinaryItem(
                        **self._common, record_index=i,
                        mime_type=_mime_or_default(rec_meta.get("mime_type"), h.mime_type),
                        size=len(rec.payload), requested_ns=rec.requested_ns, received_ns=rec.received_ns,
                        tags=tags, metadata=rec_meta,
                    ))
                if len(tabular) + len(binary) >= batch:
                    return tabular, binary
        except (ValueError, TypeError, KeyError, IndexError, EOFError, RecursionError) as exc:
            raise Rejected(f"not a readable capture file: {type(exc).__name__}: {exc}") from None
        self._done = True
        self.close()
        return (tabular, binary) if tabular or binary else None

    @property
    def file(self) -> CommittedFile:
        """The file row, once every batch was read."""
        assert self._done, "read every batch first"
        h, u = self.header, self._upload
        return CommittedFile(
            **self._common, kind=FileKind.CAPTURE, size=self._size, sha256=u.sha256, records=self._index,
            committed_ns=self._committed_ns, name=u.name, mime_type=h.mime_type if valid_mime(h.mime_type) else "",
            data_kind=h.kind.value, params=self._params, tags=tuple(h.tags), created_ns=h.created_ns,
            metadata=self._metadata,
        )

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._items.close()  # type: ignore[attr-defined]


def capture_file(upload: Upload, source: Path | bytes, size: int, committed_ns: int) -> Ingest:
    """Every row of a capture file at once (small files, tests; a big file's commit streams with
    CaptureIngest). Raises Rejected as CaptureIngest does."""
    reader = CaptureIngest(upload, source, size, committed_ns)
    tabular: list[TabularRow] = []
    binary: list[BinaryItem] = []
    try:
        while (got := reader.next_batch()) is not None:
            tabular += got[0]
            binary += got[1]
    finally:
        reader.close()
    return Ingest(reader.file, tabular, binary)


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
