"""Reading capture files, recovering `.prog` files left by a crash, and `capsync inspect`.

Reading never trusts the file: every frame's marker, length and checksum are checked, lengths
are bounded by what is left in the file before anything is allocated, and the first bad frame
ends the good prefix. Only an unreadable preamble or header is an error (CaptureFormatError);
damage after the header is reported as a Damage and the records before it are kept.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import zlib
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial
from pathlib import Path
from typing import IO, Any, Iterator, Union

import cbor2

from capsync.runtime import untrusted_cbor
from capsync.runtime.capture_file import (
    CAPTURE_SUFFIX,
    CORRUPT_SUFFIX,
    FORMAT_VERSION,
    FRAME,
    FRAME_HEADER_SIZE,
    HEADER_MARK,
    INT64_MAX,
    MAGIC,
    MAX_HEADER_BYTES,
    MAX_RECORD_BYTES,
    MAX_RECORD_DEPTH,
    MAX_RECORDS_PER_FILE,
    PREAMBLE_SIZE,
    PROG_SUFFIX,
    RECORD_MARK,
    CaptureHeader,
    CaptureRecord,
    fsync_dir,
)
from capsync.runtime.resources.methods import DataKind

log = logging.getLogger(__name__)

_U32 = 0xFFFFFFFF
_CHUNK = 1 << 20


class CaptureFormatError(Exception):
    """A file that is not a readable capture file: its preamble or header frame is missing or bad.

    `path`, `offset` (the byte where the problem is) and `reason` are kept as attributes.
    """

    def __init__(self, path: Path | str, offset: int, reason: str) -> None:
        super().__init__(path, offset, reason)
        self.path = Path(path)
        self.offset = offset
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: at byte {self.offset}: {self.reason}"


@dataclass(frozen=True)
class Damage:
    """Where the good prefix of a file ends (`offset`) and why what follows was rejected."""

    offset: int
    reason: str


@dataclass(frozen=True)
class CaptureContents:
    """A whole capture file read into memory: header, every good record, and any damage."""

    path: Path
    header: CaptureHeader
    records: list[CaptureRecord]
    good_length: int  # bytes of the good prefix; the file size when damage is None
    damage: Damage | None


@dataclass(frozen=True)
class Recovery:
    """What recover_prog did with one `.prog` file: the `.capture` it became (None when it was
    set aside as `.corrupt` or removed as empty), how many records it kept, and the damage that
    was cut off. `empty` is True for a whole file with a header and no record, which is removed."""

    original: Path
    result: Path | None
    records: int
    damage: Damage | None
    empty: bool = False


CaptureItem = Union[CaptureHeader, CaptureRecord, Damage]


# --- frame level ---------------------------------------------------------------------------------


def _rest_is_zero(f: IO[bytes], pos: int, size: int) -> bool:
    f.seek(pos)
    left = size - pos
    while left > 0:
        chunk = f.read(min(left, _CHUNK))
        if not chunk or chunk.count(0) != len(chunk):
            return False
        left -= len(chunk)
    return True


def _bad_tail(f: IO[bytes], pos: int, size: int, reason: str) -> str:
    """`reason`, unless everything from `pos` to the end is zeros (typical after power loss)."""
    if _rest_is_zero(f, pos, size):
        return f"zero-filled tail: {size - pos} zero bytes where a frame should start"
    return reason


def _read_frame(f: IO[bytes], pos: int, size: int, marker: bytes, limit: int) -> bytes | str:
    """The checked body of the frame at `pos` (where `f` is positioned), or why it is bad.

    A body longer than `limit` is refused before it is read, so a frame costs at most `limit` bytes.
    """
    remaining = size - pos
    if remaining < FRAME_HEADER_SIZE:
        return _bad_tail(f, pos, size, f"torn frame: only {remaining} of {FRAME_HEADER_SIZE} frame header bytes")
    mark, length, check, crc = FRAME.unpack(f.read(FRAME_HEADER_SIZE))
    if mark != marker:
        return _bad_tail(f, pos, size, f"bad frame marker {mark.hex()} (expected {marker.hex()})")
    if length ^ check != _U32:
        return f"bad frame length: length {length} disagrees with its check field {check:#010x}"
    if length == 0:
        return "bad frame length: 0"
    if length > limit:
        return f"frame body of {length} bytes is larger than the {limit} bytes a reader accepts"
    if length > remaining - FRAME_HEADER_SIZE:
        return f"torn frame: body of {length} bytes but only {remaining - FRAME_HEADER_SIZE} bytes left in the file"
    body = f.read(length)
    if len(body) != length:
        return f"torn frame: file ended after {len(body)} of {length} body bytes"
    actual = zlib.crc32(body)
    if actual != crc:
        return f"checksum mismatch: stored crc32 {crc:08x}, body has {actual:08x}"
    return body


def _decoder(limit: int) -> untrusted_cbor.Decoder:
    """A decoder for frame bodies of at most `limit` bytes (one per file: it is reused per record).

    Files come from other machines (the cloud ingests what parts send), so decoding is the
    bounded one for untrusted input: no shared references or tags but short bignums, bounded depth.
    """
    return untrusted_cbor.Decoder(max_bytes=limit, max_depth=MAX_RECORD_DEPTH)


def _decode(body: bytes, decoder: untrusted_cbor.Decoder) -> Any:
    """The one CBOR item that `body` must consist of (raises ValueError otherwise)."""
    try:
        return decoder.decode(body)
    except untrusted_cbor.UntrustedCBORError as exc:
        raise ValueError(f"undecodable CBOR: {exc}") from None


def _time_problem(ns: Any, name: str) -> str | None:
    if type(ns) is not int:
        return f"{name} is not an integer"
    if not 0 <= ns <= INT64_MAX:
        return f"{name} {ns} is outside 0..2^63-1 ns"
    return None


def _record(item: Any, binary: bool) -> CaptureRecord | str:
    """The record encoded as `item` (an array: requested_ns, received_ns, payload, metadata, ...)."""
    if type(item) is not list or len(item) < 4:
        return "malformed record: not an array of at least 4 items"
    req, rec, payload, meta = item[0], item[1], item[2], item[3]
    if not (req.__class__ is int and rec.__class__ is int and 0 <= req <= INT64_MAX and 0 <= rec <= INT64_MAX):
        problem = _time_problem(req, "requested_ns") or _time_problem(rec, "received_ns")
        return f"malformed record: {problem}"
    if binary and type(payload) is not bytes:
        return f"malformed record: binary payload is {type(payload).__name__}, not bytes"
    if not binary and type(payload) is not dict:
        return f"malformed record: tabular payload is {type(payload).__name__}, not a map"
    if meta is not None and type(meta) is not dict:
        return f"malformed record: metadata is {type(meta).__name__}, not a map or null"
    return CaptureRecord(req, rec, payload, meta)


def record_problem(body: bytes, binary: bool) -> str | None:
    """Why a reader would refuse the encoded record frame body `body`, or None when it accepts it.

    The writer asks this before it writes, so a file never holds a record that a reader (the
    cloud's ingest included) refuses: such a reading is a failed capture, not a file that never syncs.
    """
    try:
        got = _record(_decode(body, _decoder(MAX_RECORD_BYTES)), binary)
    except ValueError as exc:
        return str(exc)
    return got if isinstance(got, str) else None


def header_problem(header: CaptureHeader) -> str | None:
    """Why a reader would refuse `header` beyond its field types (its time must fit 64 bits), or None."""
    return _time_problem(header.created_ns, "created_ns")


def _read_header(path: Path, f: IO[bytes], size: int) -> tuple[CaptureHeader, int]:
    """The header of the file open as `f`, and the offset of the first record frame."""
    pre = f.read(PREAMBLE_SIZE)
    if len(pre) < PREAMBLE_SIZE:
        what = "file is empty" if not pre else f"file ends after {len(pre)} bytes"
        raise CaptureFormatError(path, len(pre), f"{what}, inside the {PREAMBLE_SIZE}-byte preamble")
    if pre[: len(MAGIC)] != MAGIC:
        raise CaptureFormatError(path, 0, f"not a capture file (magic is {pre[:len(MAGIC)].hex()})")
    version = int.from_bytes(pre[len(MAGIC):], "big")
    if version != FORMAT_VERSION:
        raise CaptureFormatError(path, len(MAGIC),
                                 f"unsupported format version {version} (this reader knows {FORMAT_VERSION})")
    got = _read_frame(f, PREAMBLE_SIZE, size, HEADER_MARK, MAX_HEADER_BYTES)
    if isinstance(got, str):
        raise CaptureFormatError(path, PREAMBLE_SIZE, f"unreadable header frame: {got}")
    try:
        header = CaptureHeader.from_dict(_decode(got, _decoder(MAX_HEADER_BYTES)))
    except ValueError as exc:
        raise CaptureFormatError(path, PREAMBLE_SIZE, f"unreadable header: {exc}") from None
    if (problem := header_problem(header)) is not None:
        raise CaptureFormatError(path, PREAMBLE_SIZE, f"unreadable header: {problem}")
    if header.version != version:
        raise CaptureFormatError(path, PREAMBLE_SIZE, f"header says version {header.version}, preamble {version}")
    return header, PREAMBLE_SIZE + FRAME_HEADER_SIZE + len(got)


def _walk(path: Path) -> Iterator[tuple[int, int, CaptureItem]]:
    """(start, end, item) for the header, each good record and, last, any Damage (end = size)."""
    path = Path(path)
    with open(path, "rb") as f:
        yield from _walk_open(path, f, os.fstat(f.fileno()).st_size)


def _walk_open(path: Path | str, f: IO[bytes], size: int) -> Iterator[tuple[int, int, CaptureItem]]:
    """`_walk` over the `size` bytes of `f`, open at offset 0 (`path` names it in errors)."""
    header, pos = _read_header(path, f, size)
    yield 0, pos, header
    binary = header.kind is DataKind.BINARY
    decoder = _decoder(MAX_RECORD_BYTES)
    count = 0
    while pos < size:
        if count == MAX_RECORDS_PER_FILE:
            yield pos, size, Damage(pos, f"more than {MAX_RECORDS_PER_FILE} records in one file")
            return
        got = _read_frame(f, pos, size, RECORD_MARK, MAX_RECORD_BYTES)
        if isinstance(got, str):
            yield pos, size, Damage(pos, got)
            return
        count += 1
        try:
            rec = _record(_decode(got, decoder), binary)
        except ValueError as exc:
            rec = f"undecodable record: {exc}"
        if isinstance(rec, str):
            yield pos, size, Damage(pos, rec)
            return
        end = pos + FRAME_HEADER_SIZE + len(got)
        yield pos, end, rec
        pos = end


# --- public reading ------------------------------------------------------------------------------


def read_capture(path: Path) -> CaptureContents:
    """Read a whole capture file (`.capture` or `.prog`).

    A torn, zero-filled or corrupt tail is not an error: the records before it are returned and
    the damage is reported. Raises CaptureFormatError when the preamble or header is unreadable,
    OSError when the file cannot be read.
    """
    header: CaptureHeader | None = None
    records: list[CaptureRecord] = []
    good = 0
    damage = None
    for _start, end, item in _walk(path):
        if isinstance(item, CaptureRecord):
            records.append(item)
            good = end
        elif isinstance(item, Damage):
            damage = item
        else:
            header, good = item, end
    assert header is not None
    return CaptureContents(Path(path), header, records, good, damage)


def iter_capture(path: Path) -> Iterator[CaptureItem]:
    """Stream a capture file: the CaptureHeader first, then each good CaptureRecord, then a
    Damage if the file has a bad tail. For files too big to hold in memory.

    The file stays open until the iterator is exhausted or closed. CaptureFormatError (on the
    first next()) when the header is unreadable.
    """
    for _start, _end, item in _walk(path):
        yield item


def intact_prefix(path: Path) -> tuple[CaptureHeader, int, int, Damage | None]:
    """(header, intact records, byte offset where they end, the damage after them or None) of a
    capture file, streamed. CaptureFormatError when the header is unreadable."""
    header, records, good, damage = None, 0, 0, None
    for _start, end, item in _walk(path):
        if isinstance(item, Damage):
            damage = item
        elif isinstance(item, CaptureRecord):
            records, good = records + 1, end
        else:
            header, good = item, end
    assert header is not None
    return header, records, good, damage


def iter_capture_bytes(data: bytes, name: str = "<upload>") -> Iterator[CaptureItem]:
    """`iter_capture` over a capture file held in memory (`name` stands for it in errors)."""
    for _start, _end, item in _walk_open(name, io.BytesIO(data), len(data)):
        yield item


# --- recovery ------------------------------------------------------------------------------------


def _free_name(path: Path) -> Path:
    """`path`, or `path` with a counter before its suffix if that name is taken."""
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
        n += 1
    return candidate


def recover_prog(path: Path) -> Recovery:
    """Turn a `.prog` left by a crash into a `.capture` holding exactly its good prefix.

    The file is cut to its good length (dropping a torn, zero-filled or corrupt tail), fsynced
    and renamed. A file whose header is unreadable, including an empty one, is renamed to
    `.corrupt` instead (result None). A complete file with a header and no record holds nothing
    (collectors open the next file ahead of need) and is removed; nothing else is ever deleted. Must not run while a writer still
    has the file open. Raises FileExistsError if the `.capture` name is taken, OSError on I/O errors.
    """
    path = Path(path)
    if path.suffix != PROG_SUFFIX:
        raise ValueError(f"{path}: recover_prog wants a {PROG_SUFFIX} file")
    count, good, damage = 0, 0, None
    try:
        for _start, end, item in _walk(path):
            if isinstance(item, Damage):
                damage = item
            else:
                count += isinstance(item, CaptureRecord)
                good = end
    except CaptureFormatError as exc:
        aside = _free_name(path.with_suffix(CORRUPT_SUFFIX))
        os.rename(path, aside)
        fsync_dir(path.parent)
        log.warning("unreadable capture file set aside", extra={"path": str(path), "moved_to": str(aside),
                                                                 "offset": exc.offset, "reason": exc.reason})
        return Recovery(path, None, 0, Damage(exc.offset, exc.reason))
    if count == 0 and damage is None:
        path.unlink()
        fsync_dir(path.parent)
        return Recovery(path, None, 0, None, empty=True)
    target = path.with_suffix(CAPTURE_SUFFIX)
    if target.exists():
        raise FileExistsError(f"{target}: exists already; {path} left as it is")
    with open(path, "r+b") as f:
        if damage is not None:
            f.truncate(good)
        os.fsync(f.fileno())
    os.rename(path, target)
    fsync_dir(path.parent)
    return Recovery(path, target, count, damage)


def _progs_under(top: str) -> Iterator[Path]:
    """Every `.prog` file under `top`, not following symlinks. Reads names only (no stat per
    file), so a backlog of many finished files costs little at start-up."""
    stack = [top]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    if e.name.endswith(PROG_SUFFIX):
                        if e.is_file(follow_symlinks=False):
                            yield Path(e.path)
                    elif e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
        except OSError:  # gone or unreadable: os.walk skipped these too
            continue


def recover_dir(capture_dir: Path) -> list[Recovery]:
    """recover_prog every `.prog` file under `capture_dir` (recursively, in path order).

    Run at start-up, before any writer opens. A file that fails with an OS error is logged and
    left in place for the next start; the others are still recovered.
    """
    out = []
    for prog in sorted(_progs_under(str(capture_dir))):
        try:
            out.append(recover_prog(prog))
        except OSError as exc:
            log.error("could not recover capture file", extra={"path": str(prog), "error": str(exc)})
    return out


# --- capsync inspect -----------------------------------------------------------------------------


def _bytes_json(data: bytes, include_payload: bool) -> dict:
    out: dict[str, Any] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if include_payload:
        out["base64"] = base64.b64encode(data).decode("ascii")
    return out


def _json_default(include_payload: bool, o: Any) -> Any:
    if isinstance(o, (bytes, bytearray, memoryview)):
        return _bytes_json(bytes(o), include_payload)
    if isinstance(o, (datetime, date)):
        return o.isoformat()
    if isinstance(o, (set, frozenset)):
        return list(o)
    if isinstance(o, cbor2.CBORTag):
        return {"cbor_tag": o.tag, "value": o.value}
    if isinstance(o, cbor2.CBORSimpleValue):
        return {"cbor_simple": int(o.value)}
    if isinstance(o, cbor2.frozendict):
        return dict(o)
    return repr(o)


def _plain_keys(o: Any) -> Any:
    """`o` with every map key made a string (JSON allows no other keys)."""
    if isinstance(o, dict):
        return {k if isinstance(k, str) else json.dumps(k, default=repr): _plain_keys(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain_keys(v) for v in o]
    return o


def contents_as_json_lines(path: Path, *, include_payload: bool = False) -> Iterator[str]:
    """`capsync inspect`: the header as one JSON line, then one line per record, then a line
    about damage if the file has a bad tail.

    Binary payloads (and any bytes inside payloads or metadata) show as {"size", "sha256"};
    with include_payload they also carry "base64". Raises CaptureFormatError (on the first
    next()) when the header is unreadable.
    """
    default = partial(_json_default, include_payload)

    def dumps(obj: dict) -> str:
        try:
            return json.dumps(obj, ensure_ascii=False, default=default)
        except TypeError:  # e.g. a map with array keys, which CBOR allows and JSON does not
            return json.dumps(_plain_keys(obj), ensure_ascii=False, default=default)

    index = 0
    for start, end, item in _walk(path):
        if isinstance(item, CaptureHeader):
            yield dumps({"type": "header", "path": str(path), **item.to_dict(), "records_offset": end})
        elif isinstance(item, CaptureRecord):
            yield dumps({
                "type": "record", "index": index, "offset": start, "frame_bytes": end - start,
                "requested_ns": item.requested_ns, "received_ns": item.received_ns,
                "payload": item.payload, "metadata": item.metadata,
            })
            index += 1
        else:
            yield dumps({"type": "damage", "offset": item.offset, "reason": item.reason,
                         "good_records": index, "bad_bytes": end - start})
