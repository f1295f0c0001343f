"""The durable capture file format: what a file holds, how it is framed, where it lives.

A capture file is a preamble (magic + format version), one header frame, then record frames,
each frame individually checkable, so a torn or corrupt tail is found and the good prefix kept.
The byte layout is specified in docs/capture-format.md; the constants here are its single source
of truth in code.

This module is the public face of the format; import everything from here. The writer lives in
runtime/capture_writer.py and reading, recovery and `inspect` in runtime/capture_reader.py;
their public names are re-exported here (lazily, because both modules build on this one).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capsync.runtime.resources.methods import DataKind

FORMAT_VERSION = 1
PROG_SUFFIX = ".prog"
CAPTURE_SUFFIX = ".capture"
CORRUPT_SUFFIX = ".corrupt"

#: First 8 bytes of every capture file (PNG-style: a high byte, a name, CR LF, ^Z, LF).
MAGIC = b"\x89CAP\r\n\x1a\n"
#: Magic followed by the format version as a big-endian u32.
PREAMBLE = MAGIC + struct.pack(">I", FORMAT_VERSION)
PREAMBLE_SIZE = len(PREAMBLE)
#: Sync markers opening the header frame and each record frame.
HEADER_MARK = b"\x8fHDR"
RECORD_MARK = b"\x8fREC"
#: Frame header: marker, body length, bitwise complement of the length, crc32 of the body.
FRAME = struct.Struct(">4sIII")
FRAME_HEADER_SIZE = FRAME.size
MAX_BODY_SIZE = 0xFFFFFFFF
#: Largest header frame body and record frame body readers accept (the writer refuses bigger ones),
#: so one frame can never make a reader (the cloud's ingest included) allocate more than this.
MAX_HEADER_BYTES = 64 * 1024  # its params and metadata are copied into every row
MAX_RECORD_BYTES = 64 * 1024 * 1024
#: Most records one capture file may hold; collectors start a new file before reaching it.
MAX_RECORDS_PER_FILE = 100_000
#: Deepest nesting of a decoded header or record (the record array itself is one level).
MAX_RECORD_DEPTH = 64
#: Times in headers and records must fit a signed 64-bit integer (0..INT64_MAX), as every store keeps them.
INT64_MAX = 2**63 - 1

_U32 = 0xFFFFFFFF


def encode_frame(marker: bytes, body: bytes) -> bytes:
    """One complete frame (frame header + body) around `body`; used for the header frame."""
    n = len(body)
    if not 0 < n <= MAX_BODY_SIZE:
        raise ValueError(f"frame body must be 1..{MAX_BODY_SIZE} bytes, got {n}")
    return FRAME.pack(marker, n, n ^ _U32, zlib.crc32(body)) + body


@dataclass(frozen=True)
class CaptureHeader:
    """What a capture file holds: which resource method on which part, and how to read its payloads.

    Stored once, as the first frame of the file. `kind` may be given as its string value; `tags`
    as any sequence; both are normalised. `created_ns` 0 means "not set yet": the writer fills in
    the wall-clock time at which it opens the file.
    """

    file_id: str
    part_id: str
    resource_type: str
    resource_name: str
    method: str
    params: dict
    tags: tuple[str, ...]
    kind: DataKind
    mime_type: str = ""
    metadata: dict = field(default_factory=dict)
    created_ns: int = 0
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.kind, DataKind):
            object.__setattr__(self, "kind", DataKind(self.kind))
        if not isinstance(self.tags, tuple):
            object.__setattr__(self, "tags", tuple(self.tags))

    def to_dict(self) -> dict:
        """The header as plain CBOR/JSON-friendly values (kind as its string, tags as a list)."""
        return {
            "version": self.version,
            "file_id": self.file_id,
            "part_id": self.part_id,
            "resource_type": self.resource_type,
            "resource_name": self.resource_name,
            "method": self.method,
            "params": self.params,
            "tags": list(self.tags),
            "kind": self.kind.value,
            "mime_type": self.mime_type,
            "metadata": self.metadata,
            "created_ns": self.created_ns,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CaptureHeader:
        """The header stored as `d` (see to_dict). Unknown keys are ignored, so a newer writer may
        add fields; a missing or mistyped field raises ValueError naming it."""
        if not isinstance(d, dict):
            raise ValueError(f"header must be a map, got {type(d).__name__}")

        def get(key: str, types: type | tuple[type, ...], default: Any = ...) -> Any:
            if key not in d:
                if default is ...:
                    raise ValueError(f"header field {key!r} is missing")
                return default
            value = d[key]
            if isinstance(value, bool) or not isinstance(value, types):
                raise ValueError(f"header field {key!r} has type {type(value).__name__}")
            return value

        tags = get("tags", (list, tuple))
        if not all(isinstance(t, str) for t in tags):
            raise ValueError("header field 'tags' must hold strings only")
        kind_name = get("kind", str)
        try:
            kind = DataKind(kind_name)
        except ValueError:
            raise ValueError(f"header field 'kind' is {kind_name!r}, not one of "
                             f"{[k.value for k in DataKind]}") from None
        return cls(
            file_id=get("file_id", str),
            part_id=get("part_id", str),
            resource_type=get("resource_type", str),
            resource_name=get("resource_name", str),
            method=get("method", str),
            params=dict(get("params", dict)),
            tags=tuple(tags),
            kind=kind,
            mime_type=get("mime_type", str, ""),
            metadata=dict(get("metadata", dict, {})),
            created_ns=get("created_ns", int, 0),
            version=get("version", int),
        )


@dataclass(frozen=True)
class CaptureRecord:
    """One capture: when it was scheduled and answered (wall-clock ns), and what came back.

    `payload` is a dict of JSON-like values in a tabular file and bytes in a binary file.
    `metadata` holds optional per-record extras such as an image's source name.
    """

    requested_ns: int
    received_ns: int
    payload: Any
    metadata: dict | None = None


# --- ids and paths -------------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_id_lock = threading.Lock()
_id_last = (0, 0)


def new_file_id() -> str:
    """A new unique file id: a 26-character ULID (Crockford base32, url-safe).

    The first 10 characters are the creation time in ms, so ids sort by creation time; within
    one millisecond ids from this process still increase (the random part is incremented).
    """
    global _id_last
    ms = time.time_ns() // 1_000_000
    with _id_lock:
        last_ms, last_rand = _id_last
        if ms <= last_ms and last_rand < (1 << 80) - 1:
            ms, rand = last_ms, last_rand + 1
        else:
            rand = secrets.randbits(80)
        _id_last = (ms, rand)
    n = (ms & ((1 << 48) - 1)) << 80 | rand
    return "".join(_CROCKFORD[(n >> shift) & 31] for shift in range(125, -1, -5))


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_COMPONENT = 80


def safe_component(name: str) -> str:
    """`name` made into one readable, safe path component.

    Every character outside [A-Za-z0-9._-] becomes '_' (so 'rdk:component:board/my-esp32' is
    'rdk_component_board_my-esp32'), a leading '.' becomes '_' (no '.', '..' or hidden names), and
    an empty name is '_'. A name that is too long, or that kept no letter or digit, gets a short
    hash of the original so that different names stay apart.
    """
    out = _UNSAFE.sub("_", name)
    if out.startswith("."):
        out = "_" + out[1:]
    if not out:
        return "_"
    tag = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    if len(out) > _MAX_COMPONENT:
        return out[: _MAX_COMPONENT - 11] + "-" + tag
    if out != name and not any(c.isalnum() for c in out):
        return out + "-" + tag
    return out


def format_time_ns(ns: int) -> str:
    """`ns` since the epoch as compact UTC with microseconds, e.g. '20261125T103134.123456Z'."""
    secs, rem = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, timezone.utc).strftime("%Y%m%dT%H%M%S") + f".{rem // 1000:06d}Z"


def capture_path(capture_dir: Path, header: CaptureHeader) -> Path:
    """Where the writer of `header` puts its file:
    `<capture_dir>/<type>/<name>/<method>/<UTC time>_<file_id>.prog`, every component made safe."""
    created = header.created_ns or time.time_ns()
    leaf = f"{format_time_ns(created)}_{safe_component(header.file_id)}{PROG_SUFFIX}"
    return (
        Path(capture_dir)
        / safe_component(header.resource_type)
        / safe_component(header.resource_name)
        / safe_component(header.method)
        / leaf
    )


def fsync_dir(path: Path) -> None:
    """fsync directory `path`, making a create, rename or unlink inside it durable."""
    from capsync.runtime.blocking import durable_writes  # late: blocking imports trio, this module must not need it

    if not durable_writes():
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Mode of every directory capsync creates for its data (capture files, the cloud's data dir).
DIR_MODE = 0o700


def make_private_dirs(directory: Path) -> list[Path]:
    """mkdir -p `directory`, each directory it creates owner-only (DIR_MODE, whatever the umask);
    existing directories are left as they are. Returns the directories it created, outermost first."""
    missing = []
    d = directory
    while not d.exists() and d.parent != d:
        missing.append(d)
        d = d.parent
    created = []
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # created concurrently by another writer
        os.chmod(d, DIR_MODE)
        created.append(d)
    return created


def make_private_dirs_durable(directory: Path) -> None:
    """mkdir -p `directory` (owner-only), fsyncing the parent of every directory it creates, so a
    power cut cannot forget a directory (and with it every file in it) that was created for them."""
    for d in make_private_dirs(directory):
        fsync_dir(d.parent)


# --- public names of the writer and reader modules, re-exported ----------------------------------

_WRITER_NAMES = ("CaptureWriter", "WriterStatistics")
_READER_NAMES = (
    "CaptureContents", "CaptureFormatError", "Damage", "Recovery", "contents_as_json_lines",
    "iter_capture", "iter_capture_bytes", "read_capture", "recover_dir", "recover_prog",
)

__all__ = [
    "CAPTURE_SUFFIX", "CORRUPT_SUFFIX", "FORMAT_VERSION", "PROG_SUFFIX",
    "CaptureHeader", "CaptureRecord", "DataKind",
    "capture_path", "new_file_id", "safe_component",
    *_WRITER_NAMES, *_READER_NAMES,
]

if TYPE_CHECKING:
    from capsync.runtime.capture_reader import (  # noqa: F401
        CaptureContents, CaptureFormatError, Damage, Recovery, contents_as_json_lines,
        iter_capture, iter_capture_bytes, read_capture, recover_dir, recover_prog,
    )
    from capsync.runtime.capture_writer import CaptureWriter, WriterStatistics  # noqa: F401


def __getattr__(name: str) -> Any:
    """PEP 562: resolve the writer's and reader's public names on first use."""
    if name in _WRITER_NAMES:
        from capsync.runtime import capture_writer as module
    elif name in _READER_NAMES:
        from capsync.runtime import capture_reader as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value
