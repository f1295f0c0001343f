"""The bytes the cloud holds on disk: partial uploads and committed files.

Layout under the data dir:

    uploads/<part>/<file_id>.part   bytes received so far, appended and fsynced chunk by chunk
    files/<part>/<file_id>          committed files, published with a hard link (atomic)

The size of a `.part` file is the truth about how many bytes the cloud holds: a chunk is
acknowledged only after it is written and fsynced. Every method here blocks; the app runs them
in worker threads, and serializes calls about one file with a per-file lock.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from capsync.runtime.blocking import durable_writes
from capsync.runtime.capture_file import fsync_dir


class OffsetMismatch(Exception):
    """A chunk was sent for an offset other than the number of bytes the cloud holds."""

    def __init__(self, held: int) -> None:
        super().__init__(f"cloud holds {held} bytes")
        self.held = held


def _fsync(fd: int) -> None:
    """fsync, except inside runtime.blocking.without_fsync() (the simulation never loses power)."""
    if durable_writes():
        os.fsync(fd)


class Blobs:
    """Partial and committed file bytes of every part under one data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.uploads_dir = self.data_dir / "uploads"
        self.files_dir = self.data_dir / "files"

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
        path.parent.mkdir(parents=True, exist_ok=True)
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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
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
            return offset + len(data)
        finally:
            os.close(fd)

    def sha256(self, part_id: str, file_id: str) -> str:
        """Hex SHA-256 of the bytes held for an upload."""
        h = hashlib.sha256()
        with open(self.partial_path(part_id, file_id), "rb") as f:
            while chunk := f.read(1024 * 1024):
                h.update(chunk)
        return h.hexdigest()

    def publish(self, part_id: str, file_id: str) -> Path:
        """Make the upload's bytes the committed file (hard link, so it appears whole or not at all).

        The `.part` file stays until `discard` so that a crash before the store's commit leaves the
        upload intact; a stale committed path from such a crash is replaced.
        """
        src = self.partial_path(part_id, file_id)
        dst = self.final_path(part_id, file_id)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{file_id}.linking")
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
        return dst

    def put_committed(self, part_id: str, file_id: str, data: bytes) -> None:
        """Write a whole file's bytes as its committed file (the one-request upload): a temporary
        file, fsynced, renamed into place, directory fsynced; it appears whole or not at all, and a
        stale committed path from a crash before the store's commit is replaced."""
        dst = self.final_path(part_id, file_id)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{file_id}.writing")
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

    def drop_committed(self, part_id: str, file_id: str) -> None:
        """Remove a committed file's bytes (retention)."""
        self.final_path(part_id, file_id).unlink(missing_ok=True)
