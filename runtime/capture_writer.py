"""CaptureWriter: appends records to a capture file durably and finishes it as `.capture`.

The format itself (constants, header, record, framing, paths) is in runtime/capture_file.py,
and that is where other modules import CaptureWriter from.
"""

from __future__ import annotations

import errno
import os
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import cbor2

from capsync.runtime import capture_reader
from capsync.runtime.capture_file import (
    CAPTURE_SUFFIX,
    FORMAT_VERSION,
    FRAME,
    FRAME_HEADER_SIZE,
    HEADER_MARK,
    INT64_MAX,
    MAX_HEADER_BYTES,
    MAX_RECORD_BYTES,
    MAX_RECORDS_PER_FILE,
    PREAMBLE,
    PROG_SUFFIX,
    RECORD_MARK,
    CaptureHeader,
    CaptureRecord,
    capture_path,
    encode_frame,
    fsync_dir,
    make_private_dirs_durable,
)
from capsync.runtime.resources.methods import DataKind
from capsync.runtime.blocking import durable_writes

_U32 = 0xFFFFFFFF


class RecordRefused(TypeError):
    """A record no reader would accept (not encodable, too big, a value the cloud cannot store,
    or one record too many for one file); nothing was written. The message says why."""


_fdatasync = getattr(os, "fdatasync", os.fsync)


#: Capture files hold whatever the robot's resources return: only the agent's user may read them,
#: whatever the umask (one applied with chmod after create, since the umask only ever removes bits).
FILE_MODE = 0o600


@dataclass(frozen=True)
class WriterStatistics:
    """A snapshot of one CaptureWriter, for status reports."""

    path: Path
    state: str  # "open", "finished", "closed" (left as .prog) or "broken"
    record_count: int
    size_bytes: int
    synced_bytes: int  # bytes known to be on disk (fsynced)
    opened_at: float


class CaptureWriter:
    """Appends records to one capture file, durably, and finishes it as a `.capture` file.

    Every append is handed to the OS at once (one writev, no user-space buffer), so a killed
    process loses nothing already appended; power loss loses at most what was appended since the
    last fsync, which happens every `fsync_interval_s` (measured by `clock`, checked on append;
    math.inf disables it, 0 fsyncs every record) and on sync() and finish(). If a write fails
    half-way (disk full), the partial frame is cut off again so the file stays a clean prefix.

    Not thread-safe, except that sync() may run in another thread (e.g. trio.to_thread) while
    the owner appends; sync() never calls `clock`.
    """

    def __init__(
        self,
        path: Path,
        header: CaptureHeader,
        *,
        fsync_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        path = Path(path)
        if path.suffix != PROG_SUFFIX:
            raise ValueError(f"{path}: a capture file being written must end in {PROG_SUFFIX}")
        if header.version != FORMAT_VERSION:
            raise ValueError(f"{path}: cannot write format version {header.version}, only {FORMAT_VERSION}")
        if not header.created_ns:
            header = replace(header, created_ns=time.time_ns())
        try:  # refuse a header the reader would refuse, before any file exists
            CaptureHeader.from_dict(header.to_dict())
        except ValueError as exc:
            raise ValueError(f"{path}: invalid header: {exc}") from None
        if (problem := capture_reader.header_problem(header)) is not None:
            raise ValueError(f"{path}: invalid header: {problem}")
        try:
            body = cbor2.dumps(header.to_dict())
        except (cbor2.CBOREncodeError, RecursionError) as exc:
            raise ValueError(f"{path}: header cannot be encoded as CBOR: {exc}") from exc
        if len(body) > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: header of {len(body)} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
        head = PREAMBLE + encode_frame(HEADER_MARK, body)
        final = path.with_suffix(CAPTURE_SUFFIX)
        if final.exists():
            raise FileExistsError(f"{final}: a finished capture file with this name already exists")
        make_private_dirs_durable(path.parent)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            _write_fully(fd, head)
            if durable_writes():
                os.fsync(fd)
            fsync_dir(path.parent)
        except BaseException:
            os.close(fd)
            try:
                path.unlink()  # holds no record yet: nothing is lost
            except OSError:
                pass
            raise
        self.path = path
        self.header = header
        self._fd = fd
        self._binary = header.kind is DataKind.BINARY
        self._clock = clock
        self._interval = fsync_interval_s
        self.opened_at: float = clock()
        self._last_sync = self.opened_at
        self._size = len(head)
        self._synced = self._size
        self._count = 0
        self._final: Path | None = None
        self._broken: str | None = None

    @classmethod
    def create(cls, capture_dir: Path, header: CaptureHeader, **kw: Any) -> CaptureWriter:
        """A writer for `header` at its standard place under `capture_dir` (see capture_path)."""
        if not header.created_ns:
            header = replace(header, created_ns=time.time_ns())
        return cls(capture_path(capture_dir, header), header, **kw)

    @property
    def size_bytes(self) -> int:
        """Bytes in the file so far, preamble and header included."""
        return self._size

    @property
    def synced_bytes(self) -> int:
        """Bytes known to be on disk (fsynced); below size_bytes while appends wait for an fsync."""
        return self._synced

    @property
    def record_count(self) -> int:
        """Records appended so far."""
        return self._count

    @property
    def finished(self) -> bool:
        """True once finish() has renamed the file to `.capture`."""
        return self._final is not None

    def append(self, record: CaptureRecord) -> int:
        """Write `record` as one frame and return its size in bytes; fsync if the interval is up.

        Raises TypeError for a payload of the wrong kind (tabular needs a dict, binary bytes),
        RecordRefused (a TypeError) for a record a reader would refuse (capture_reader.record_problem)
        or once the file holds MAX_RECORDS_PER_FILE records, ValueError when the writer is closed
        or broken, OSError when the disk refuses; in every error case the file still ends at a
        frame boundary.
        """
        return self.append_values(record.requested_ns, record.received_ns, record.payload, record.metadata)

    def append_values(self, req: int, rec: int, payload: Any, meta: dict | None = None) -> int:
        """append() of the record (req, rec, payload, meta), without building a CaptureRecord
        first (collectors call this once per reading)."""
        fd = self._fd
        if fd < 0 or self._broken is not None:
            self._refuse("append to")
        if type(req) is not int or type(rec) is not int:
            raise TypeError(f"{self.path}: requested_ns and received_ns must be int, "
                            f"got {type(req).__name__} and {type(rec).__name__}")
        if self._binary:
            if type(payload) is not bytes:
                if not isinstance(payload, (bytes, bytearray, memoryview)):
                    raise TypeError(f"{self.path}: a binary capture needs a bytes payload, "
                                    f"got {type(payload).__name__}")
                payload = bytes(payload)
        elif not isinstance(payload, dict):
            raise TypeError(f"{self.path}: a tabular capture needs a dict payload, got {type(payload).__name__}")
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f"{self.path}: record metadata must be a dict or None, got {type(meta).__name__}")
        if self._count >= MAX_RECORDS_PER_FILE:
            raise RecordRefused(f"{self.path}: a capture file holds at most {MAX_RECORDS_PER_FILE} records")
        try:
            body = cbor2.dumps((req, rec, payload, meta))
        except (cbor2.CBOREncodeError, RecursionError, ValueError, TypeError) as exc:
            raise RecordRefused(f"{self.path}: record cannot be encoded as CBOR: {exc}") from exc
        n = len(body)
        if n > MAX_RECORD_BYTES:
            raise RecordRefused(f"{self.path}: record of {n} bytes exceeds the {MAX_RECORD_BYTES}-byte record limit")
        plain = (0 <= req <= INT64_MAX and 0 <= rec <= INT64_MAX and _plain(payload, _PLAIN_DEPTH)
                 and (meta is None or _plain(meta, _PLAIN_DEPTH)))
        if not plain and (problem := capture_reader.record_problem(body, self._binary)) is not None:
            raise RecordRefused(f"{self.path}: record refused: {problem}")
        head = FRAME.pack(RECORD_MARK, n, n ^ _U32, zlib.crc32(body))
        total = n + FRAME_HEADER_SIZE
        try:
            written = os.writev(fd, (head, body))
            if written != total:
                _write_fully(fd, (head + body)[written:])
        except BaseException:
            self._cut_back()
            raise
        self._size += total
        self._count += 1
        now = self._clock()
        if now - self._last_sync >= self._interval:
            self._last_sync = now
            self._fsync(fd, full=False)
        return total

    def sync(self) -> None:
        """fsync now: everything appended so far survives power loss once this returns."""
        fd = self._fd
        if fd < 0 or self._broken is not None:
            self._refuse("sync")
        self._fsync(fd, full=False)

    def finish(self, *, sync_dir: bool = True) -> Path:
        """fsync, close and atomically rename the file to `.capture`; returns the new path.

        With `sync_dir` False the caller fsyncs the directory itself (capture_file.fsync_dir), e.g.
        once for several files; the rename is durable only after that. Calling it again returns
        the same path. After close_unfinished() it raises ValueError.
        """
        if self._final is not None:
            return self._final
        fd = self._fd
        if fd < 0 or self._broken is not None:
            self._refuse("finish")
        final = self.path.with_suffix(CAPTURE_SUFFIX)
        self._fsync(fd, full=True)
        self._fd = -1
        os.close(fd)
        if final.exists():
            raise FileExistsError(f"{final}: exists already; {self.path} is left for recovery")
        os.rename(self.path, final)
        if sync_dir:
            fsync_dir(self.path.parent)
        self._final = final
        return final

    def close_unfinished(self) -> None:
        """Close the file but leave it as `.prog` (abnormal shutdown, tests). Tries one last fsync.
        Does nothing if already closed or finished."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            if self._broken is None:
                os.fsync(fd)
        except OSError:
            pass  # the .prog stays for recovery either way
        finally:
            os.close(fd)

    def statistics(self) -> WriterStatistics:
        """A frozen snapshot: state, records, bytes written and bytes known durable."""
        if self._final is not None:
            state = "finished"
        elif self._broken is not None:
            state = "broken"
        elif self._fd < 0:
            state = "closed"
        else:
            state = "open"
        return WriterStatistics(self.path, state, self._count, self._size, self._synced, self.opened_at)

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<CaptureWriter {s.path} {s.state} records={s.record_count} bytes={s.size_bytes}>"

    def __del__(self) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            self._fd = -1
            os.close(fd)

    # --- internals ---

    def _fsync(self, fd: int, *, full: bool) -> None:
        size = self._size
        if not durable_writes():
            self._synced = max(self._synced, size)
            return
        try:
            (os.fsync if full else _fdatasync)(fd)
        except OSError as exc:
            # After a failed fsync the kernel may have dropped the dirty pages: never trust this
            # file again. It stays as .prog; recovery keeps whatever reached the disk.
            self._broken = f"fsync failed: {exc}"
            raise
        self._synced = max(self._synced, size)

    def _cut_back(self) -> None:
        """Remove a partially written frame, so that the file ends at a frame boundary again."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as exc:
            self._broken = f"could not cut a partial frame back to byte {self._size}: {exc}"

    def _refuse(self, what: str) -> None:
        if self._broken is not None:
            raise ValueError(f"{self.path}: cannot {what} a broken capture writer ({self._broken})")
        if self._final is not None:
            raise ValueError(f"{self.path}: cannot {what} a finished capture file (now {self._final})")
        raise ValueError(f"{self.path}: cannot {what} a closed capture writer")


#: Values that cbor2 encodes without a tag, so any reader decodes them as they are.
_PLAIN_LEAVES = frozenset({str, bytes, float, bool, type(None)})
#: Nesting the fast check accepts by itself; deeper values are checked by decoding (MAX_RECORD_DEPTH).
_PLAIN_DEPTH = 32
_INT_RANGE = range(-2**64, 2**64)  # CBOR's major types 0 and 1; beyond them cbor2 writes a bignum tag


def _plain(value: Any, depth: int) -> bool:
    """True when `value` holds only maps, arrays, strings, bytes, floats, bools, None and 64-bit
    ints, nested at most `depth` deep: such a record needs no decoding to know a reader accepts it
    (the writer decodes the others with capture_reader.record_problem, which is ~3x the encode)."""
    t = type(value)
    if t in _PLAIN_LEAVES:
        return True
    if t is int:
        return value in _INT_RANGE
    if depth <= 0:
        return False
    if t is dict:
        for k, v in value.items():
            if not ((type(k) is str or _plain(k, depth - 1)) and (type(v) in _PLAIN_LEAVES or _plain(v, depth - 1))):
                return False
        return True
    if t is list or t is tuple:
        for v in value:
            if not (type(v) in _PLAIN_LEAVES or _plain(v, depth - 1)):
                return False
        return True
    return False


def _write_fully(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written (regular files only write short when nearly full)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, "No space left on device (write returned 0)")
        view = view[n:]
