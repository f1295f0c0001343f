"""What makes a file ready to sync, and describing each one for an upload.

Ready means: a finished `.capture` file in a capture dir (never a `.prog`, never anything in
the `failed/` folder), or any regular file under an `additional_sync_paths` dir that has not
been modified for `quiet_s` seconds (10, as documented), so a file still being written is left
alone. Symlinks are not followed. runtime/ready_index.py finds them, keeping what it found
across sync passes.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from capsync.runtime.capture_file import fsync_dir, iter_capture, iter_capture_bytes, make_private_dirs_durable
from capsync.runtime.sync_protocol import FileKind

#: Folder inside a capture dir where files the cloud refused for good are set aside.
FAILED_DIR = "failed"
#: Beside each file set aside, `<name>` + this: why, when, and where it came from (JSON).
SET_ASIDE_REPORT = ".set-aside.json"
#: A file under additional_sync_paths is ready once it has not been modified for this long.
QUIET_S = 10.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SyncFile:
    """One file ready to upload: where it is, what the cloud will call it, and what it is."""

    path: Path
    root: Path  # the capture dir or additional sync path it was found under
    kind: FileKind
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        """The file's path relative to its root, as the cloud shows it."""
        return self.path.relative_to(self.root).as_posix()

    @property
    def mime_type(self) -> str:
        """A content type for plain files, guessed from the name; "" for capture files."""
        if self.kind is FileKind.CAPTURE:
            return ""
        return mimetypes.guess_type(self.path.name)[0] or "application/octet-stream"


def stable_file_id(path: Path, size: int, mtime_ns: int, sha256: str) -> str:
    """The id of a plain file: the same for the same path, size, mtime and content, so a retry
    resumes; content that changed (even with the same size and mtime) gets a new id, so the cloud
    never answers "committed" for bytes it does not hold."""
    digest = hashlib.sha256(f"{path.resolve()}\0{size}\0{mtime_ns}\0{sha256}".encode()).hexdigest()
    return "f" + digest[:31]


def file_id_of(f: SyncFile, sha256: str, data: bytes | None = None) -> str:
    """The upload id of `f` whose bytes hash to `sha256`: a capture file's own id from its header
    (read from `data`, its bytes, when the caller has them), or the stable id of a plain file."""
    if f.kind is FileKind.CAPTURE:
        items = iter_capture(f.path) if data is None else iter_capture_bytes(data, str(f.path))
        try:
            return next(items).file_id
        finally:
            items.close()
    return stable_file_id(f.path, f.size, f.mtime_ns, sha256)


def fingerprint(path: Path) -> tuple[int, str]:
    """(size, hex sha256) of exactly the bytes `path` holds now, from one read of the file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def stamp(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What changes whenever a file's content may have: device, inode, size, mtime and ctime (ns).
    ctime cannot be set back by a writer, so an unchanged stamp means unchanged bytes."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def hashed_stamp(path: Path) -> tuple[int, str, tuple | None]:
    """`fingerprint` plus the file's stamp, or None for the stamp when the file changed while it was read."""
    before = stamp(os.stat(path))
    size, digest = fingerprint(path)
    after = stamp(os.stat(path))
    return size, digest, before if before == after and before[2] == size else None


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    return fingerprint(path)[1]


def read_at(path: Path, offset: int, n: int) -> bytes:
    """Up to `n` bytes of `path` from `offset`."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(n)


def regular_files(root: Path, skip_dir: str | None = None) -> Iterator[os.DirEntry]:
    """Every regular file under `root`, never following a symlink (to a file or a dir); a
    top-level folder named `skip_dir` is left out. Files that vanish meanwhile are skipped."""
    stack = [str(root)]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    if not (skip_dir is not None and d == str(root) and e.name == skip_dir):
                        stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    yield e
            except OSError:
                continue  # vanished while we looked


def find_ready_files(capture_dirs: Iterable[Path], sync_paths: Iterable[Path], now_s: float,
                     quiet_s: float = QUIET_S) -> list[SyncFile]:
    """Every file ready to sync, oldest (by modification time) first: one full look (the sync
    scheduler keeps a ReadyIndex across passes instead; see runtime/ready_index.py)."""
    from capsync.runtime.ready_index import find_ready_files as find  # the index builds on this module

    return find(capture_dirs, sync_paths, now_s, quiet_s)


def set_aside(f: SyncFile, capture_dir: Path, error: str = "") -> Path:
    """Move a file the cloud refused into `<capture_dir>/failed/`, keeping its relative path, and
    write a report beside it (`<name>.set-aside.json`: the error, when, and the original path, which
    `capsync backlog` shows and `capsync backlog --retry-failed` puts it back to)."""
    dest = capture_dir / FAILED_DIR / f.name if f.kind is FileKind.CAPTURE else \
        capture_dir / FAILED_DIR / "additional" / f.name
    make_private_dirs_durable(dest.parent)
    report = dest.with_name(dest.name + SET_ASIDE_REPORT)
    try:  # the report first: whoever sees the file in failed/ (capsync backlog) sees why, too
        write_durably(report, json.dumps({
            "file": str(f.path), "root": str(f.root), "kind": f.kind.value, "name": f.name, "size": f.size,
            "error": error, "set_aside_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }, indent=2).encode())
    except OSError:
        pass  # without its report (a full disk) the file is still set aside, and the agent's log says why
    try:
        os.replace(f.path, dest)
    except OSError:
        report.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)  # the move survives a power cut: both directories' entries
    fsync_dir(f.path.parent)
    return dest


def write_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all (a temp file, fsync, rename, fsync of the dir)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
