"""The bytes the cloud holds: partial uploads and committed files, behind the `Blobs` interface.

Two implementations: `LocalBlobs` (the default, a folder under the data dir, below) and
`capsync.cloud.s3_blobs.S3Blobs` (an S3-API object store, which several cloud processes can share).
Every method blocks; the app runs them in worker threads, and serializes calls about one file with
a per-file lock. No method hands out where the bytes live, except as a local copy for parsing
(`open_partial`, `open_committed`) or a local file to serve (`CommittedBlob.local_path`).

LocalBlobs' layout under the data dir:

    uploads/<part>/<file_id>.part   bytes received so far, appended and fsynced chunk by chunk
    files/<part>/<file_id>          committed files, published with a hard link (atomic)

The size of a `.part` file is the truth about how many bytes the cloud holds: a chunk is
acknowledged only after it is written and fsynced.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import trio

from capsync.cloud.store import StoreUnavailable
from capsync.runtime.blocking import durable_writes, run_blocking
from capsync.runtime.capture_file import fsync_dir, make_private_dirs_durable

#: Bytes per piece when committed bytes are streamed.
READ_CHUNK = 1024 * 1024


class OffsetMismatch(Exception):
    """A chunk was sent for an offset other than the number of bytes the cloud holds."""

    def __init__(self, held: int) -> None:
        super().__init__(f"cloud holds {held} bytes")
        self.held = held


class BlobsUnavailable(StoreUnavailable):
    """The bytes' backend (the object store) cannot be reached or refuses the cloud: answered 503.

    `reason` is short and safe to tell a client ("unreachable", "access denied", ...); the message
    says in full what failed and how to fix it, for the cloud's log and its operator.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class CommittedBlob:
    """A committed file's bytes, ready to serve: its size and its bytes as a blocking iterator.

    `local_path` is set when the bytes are a local file (the server may send it directly and
    never touch `chunks`). `close()` releases what `chunks` holds open; call it either way.
    """

    size: int
    chunks: Iterator[bytes]
    local_path: Path | None = None
    _close: Callable[[], None] | None = field(default=None, repr=False)

    def close(self) -> None:
        """Release the stream (idempotent)."""
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()
        if self._close is not None:
            self._close()
            self._close = None


@runtime_checkable
class Blobs(Protocol):
    """Partial and committed file bytes of every part.

    An upload's bytes grow by `append` at exactly the offset held; `publish` makes them the
    committed file, whole or not at all, and leaves them until `discard`, so that a crash before the
    store's commit leaves the upload intact (publishing again is harmless).
    """

    def describe(self) -> str:
        """Where the bytes are, for logs and errors (no secrets)."""
        ...

    def check(self) -> None:
        """Raise BlobsUnavailable now when the backend cannot be used (run at start)."""
        ...

    def held(self, part_id: str, file_id: str) -> int:
        """How many bytes of the upload are held (0 when there are none)."""
        ...

    def reset(self, part_id: str, file_id: str) -> None:
        """Start an upload's bytes afresh, empty."""
        ...

    def append(self, part_id: str, file_id: str, offset: int, data: bytes) -> int:
        """Store `data` at `offset`, which must be the bytes held; return the new size once durable.

        Raises OffsetMismatch (with the size held) when `offset` is not the end of the bytes held.
        """
        ...

    def sha256(self, part_id: str, file_id: str) -> str:
        """Hex SHA-256 of the bytes held for an upload."""
        ...

    def open_partial(self, part_id: str, file_id: str) -> AbstractContextManager[Path]:
        """A local file holding the upload's bytes, for parsing, valid inside the `with`."""
        ...

    def publish(self, part_id: str, file_id: str) -> None:
        """Make the upload's bytes the committed file, atomically; the upload's bytes stay until `discard`."""
        ...

    def put_committed(self, part_id: str, file_id: str, data: bytes) -> None:
        """Make `data` the committed file in one step (a small file that never had partial bytes)."""
        ...

    def discard(self, part_id: str, file_id: str) -> None:
        """Remove the partial bytes of an upload, if any."""
        ...

    def partial_files(self) -> list[tuple[str, str, int]]:
        """(part id, file id, last write in ns) of every upload that has bytes held."""
        ...

    def last_write_ns(self, part_id: str, file_id: str) -> int | None:
        """When the upload's bytes were last written (ns since the epoch), or None when none are held."""
        ...

    def committed_size(self, part_id: str, file_id: str) -> int | None:
        """The size of a committed file's bytes, or None when they are not stored."""
        ...

    def read_committed(self, part_id: str, file_id: str) -> CommittedBlob:
        """A committed file's bytes to stream; FileNotFoundError when they are not stored."""
        ...

    def open_committed(self, part_id: str, file_id: str) -> AbstractContextManager[Path]:
        """A local file holding a committed file's bytes, for parsing; FileNotFoundError when not stored."""
        ...

    def drop_committed(self, part_id: str, file_id: str) -> None:
        """Remove a committed file's bytes (retention), if any."""
        ...

    def drop_part(self, part_id: str) -> None:
        """Remove every byte, partial and committed, of one part (the part's removal with its data)."""
        ...

    def free_bytes(self) -> int | None:
        """Bytes free for new uploads, or None when the backend has no such limit to check."""
        ...


@asynccontextmanager
async def in_thread(cm: AbstractContextManager[Path]) -> AsyncIterator[Path]:
    """`async with` over a blocking context manager of Blobs (`open_partial`, `open_committed`):
    entered and exited in worker threads, and exited even when the task is cancelled."""
    path = await run_blocking(cm.__enter__)
    try:
        yield path
    finally:
        with trio.CancelScope(shield=True):
            await run_blocking(cm.__exit__, None, None, None)


def _fsync(fd: int) -> None:
    """fsync, except inside runtime.blocking.without_fsync() (the simulation never loses power)."""
    if durable_writes():
        os.fsync(fd)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            yield chunk


#: Running hashes LocalBlobs keeps at most (uploads in progress; the oldest is forgotten first).
_MAX_RUNNING_HASHES = 10_000


class LocalBlobs:
    """Partial and committed file bytes of every part under one data dir (layout in the module doc)."""

    def __init__(self, data_dir: Path, *, shared: bool = False) -> None:
        """`shared`: other processes (the workers of `serve --workers`) write under `data_dir` too."""
        self.data_dir = Path(data_dir)
        self.uploads_dir = self.data_dir / "uploads"
        self.files_dir = self.data_dir / "files"
        # The SHA-256 of each upload's bytes so far, kept as chunks arrive, so that a commit need not
        # read a big file back; used only while it covers exactly the bytes on disk. Not when shared:
        # another process may have rewritten those bytes since, to the same size.
        self._keep_hashes = not shared
        self._hashes: dict[tuple[str, str], tuple[int, Any]] = {}
        self._hashes_lock = threading.Lock()

    def describe(self) -> str:
        """The data dir."""
        return str(self.data_dir)

    def check(self) -> None:
        """Nothing to check: the data dir is created by the app."""

    def partial_path(self, part_id: str, file_id: str) -> Path:
        """Where the bytes of an upload in progress are."""
        return self.uploads_dir / part_id / f"{file_id}.part"

    def final_path(self, part_id: str, file_id: str) -> Path:
        """Where a committed file's bytes are."""
        return self.files_dir / part_id / file_id

    def held(self, part_id: str, file_id: str) -> int:
        """How many bytes of the upload are on disk (0 when there is no partial file)."""
        try:
            return self.partial_path(part_id, file_id).stat().st_size
        except FileNotFoundError:
            return 0

    def reset(self, part_id: str, file_id: str) -> None:
        """Start an upload's bytes afresh: an empty, durable `.part` file."""
        path = self.partial_path(part_id, file_id)
        make_private_dirs_durable(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)

    def append(self, part_id: str, file_id: str, offset: int, data: bytes) -> int:
        """Write `data` at `offset`, which must be the bytes held; fsync; return the new size.

        Raises OffsetMismatch (with the size held) when `offset` is not the end of the file.
        """
        path = self.partial_path(part_id, file_id)
        make_private_dirs_durable(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # the size check and the write are one step for every process
            held = os.fstat(fd).st_size
            if held != offset:
                raise OffsetMismatch(held)
            if data:
                os.lseek(fd, offset, os.SEEK_SET)
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                _fsync(fd)
            self._hash_more((part_id, file_id), offset, data)
            return offset + len(data)
        finally:
            os.close(fd)

    def _hash_more(self, key: tuple[str, str], offset: int, data: bytes) -> None:
        if not self._keep_hashes:
            return
        with self._hashes_lock:
            size, h = self._hashes.pop(key, (0, None))
            if offset == 0:
                size, h = 0, hashlib.sha256()
            if h is None or size != offset:
                return  # bytes before this chunk were written elsewhere: hash from the file at commit
            h.update(data)
            if len(self._hashes) >= _MAX_RUNNING_HASHES:
                self._hashes.pop(next(iter(self._hashes)))
            self._hashes[key] = (size + len(data), h)

    def sha256(self, part_id: str, file_id: str) -> str:
        """Hex SHA-256 of the bytes held for an upload."""
        held = self.held(part_id, file_id)
        with self._hashes_lock:
            size, running = self._hashes.get((part_id, file_id), (-1, None))
            if running is not None and size == held:
                return running.copy().hexdigest()
        h = hashlib.sha256()
        for chunk in _file_chunks(self.partial_path(part_id, file_id)):
            h.update(chunk)
        return h.hexdigest()

    @contextmanager
    def open_partial(self, part_id: str, file_id: str) -> Iterator[Path]:
        """The `.part` file itself."""
        yield self.partial_path(part_id, file_id)

    def publish(self, part_id: str, file_id: str) -> None:
        """Make the upload's bytes the committed file (hard link, so it appears whole or not at all).

        The `.part` file stays until `discard` so that a crash before the store's commit leaves the
        upload intact; a stale committed path from such a crash is replaced.
        """
        src = self.partial_path(part_id, file_id)
        dst = self.final_path(part_id, file_id)
        make_private_dirs_durable(dst.parent)
        tmp = dst.with_name(f".{file_id}.{os.getpid()}.linking")  # per process: workers may race here
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
        fsync_dir(dst.parent)

    def put_committed(self, part_id: str, file_id: str, data: bytes) -> None:
        """Write a whole file's bytes as its committed file (the one-request upload): a temporary
        file, fsynced, renamed into place, directory fsynced; it appears whole or not at all, and a
        stale committed path from a crash before the store's commit is replaced."""
        dst = self.final_path(part_id, file_id)
        make_private_dirs_durable(dst.parent)
        tmp = dst.with_name(f".{file_id}.{os.getpid()}.writing")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            _fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dst)
        fsync_dir(dst.parent)

    def discard(self, part_id: str, file_id: str) -> None:
        """Remove the partial bytes of an upload, if any."""
        with self._hashes_lock:
            self._hashes.pop((part_id, file_id), None)
        self.partial_path(part_id, file_id).unlink(missing_ok=True)

    def partial_files(self) -> list[tuple[str, str, int]]:
        """(part id, file id, mtime in ns) of every `.part` file held (for expiring abandoned uploads)."""
        out = []
        try:
            parts = list(os.scandir(self.uploads_dir))
        except FileNotFoundError:
            return out
        for part in parts:
            if not part.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(part.path):
                if entry.name.endswith(".part") and entry.is_file(follow_symlinks=False):
                    out.append((part.name, entry.name[: -len(".part")], entry.stat(follow_symlinks=False).st_mtime_ns))
        return out

    def last_write_ns(self, part_id: str, file_id: str) -> int | None:
        """The `.part` file's mtime, or None when there is none."""
        try:
            return self.partial_path(part_id, file_id).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def committed_size(self, part_id: str, file_id: str) -> int | None:
        """The committed file's size, or None when it is not stored."""
        try:
            return self.final_path(part_id, file_id).stat().st_size
        except FileNotFoundError:
            return None

    def read_committed(self, part_id: str, file_id: str) -> CommittedBlob:
        """The committed file, with `local_path` set (it is served as a file)."""
        path = self.final_path(part_id, file_id)
        if not path.is_file():
            raise FileNotFoundError(f"no committed bytes for {part_id}/{file_id}")
        return CommittedBlob(path.stat().st_size, _file_chunks(path), local_path=path)

    @contextmanager
    def open_committed(self, part_id: str, file_id: str) -> Iterator[Path]:
        """The committed file itself."""
        path = self.final_path(part_id, file_id)
        if not path.is_file():
            raise FileNotFoundError(f"no committed bytes for {part_id}/{file_id}")
        yield path

    def drop_committed(self, part_id: str, file_id: str) -> None:
        """Remove a committed file's bytes (retention)."""
        self.final_path(part_id, file_id).unlink(missing_ok=True)

    def drop_part(self, part_id: str) -> None:
        """Remove the part's folders under uploads/ and files/."""
        for base in (self.uploads_dir, self.files_dir):
            shutil.rmtree(base / part_id, ignore_errors=True)

    def free_bytes(self) -> int | None:
        """Free bytes on the data dir's disk."""
        return shutil.disk_usage(self.data_dir).free
