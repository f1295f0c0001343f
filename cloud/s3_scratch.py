"""Local copies of objects for `S3Blobs`, kept in its scratch dir: an upload's chunks while it is
committed (downloaded once, then checksummed, parsed and composed from), and committed files that
are parsed to serve one record (a browser showing the images of one capture file asks for many).

A copy is kept under a key with a fingerprint of what it holds (the chunks' ETags, the committed
object's ETag) and used only while the fingerprint still matches, so a copy never stands for bytes
that changed in the object store. Copies being read are never deleted; idle ones are deleted
oldest first beyond `max_files` or `max_bytes`. A copy left by a process that died is removed
when the next one starts, after a day.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

#: Scratch files older than this are left by a process that died, and removed at start.
STALE_S = 86_400
_PATTERN = "capsync-*.blob"


@dataclass
class Copy:
    """A scratch file holding what `fingerprint` names; `digest` is what the filler returned."""

    fingerprint: Any
    path: Path
    size: int
    digest: Any = None
    users: int = 0
    dropped: bool = False


class ScratchCopies:
    """Kept local copies, by key (see the module doc). Thread-safe."""

    def __init__(self, scratch_dir: Path, *, max_files: int = 16, max_bytes: int = 1024**3) -> None:
        self.dir = Path(scratch_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_files, self.max_bytes = max_files, max_bytes
        self._lock = threading.Lock()
        self._copies: OrderedDict[Hashable, Copy] = OrderedDict()
        self._filling: dict[Hashable, list] = {}  # key -> [lock, users]: one download per key at a time
        self._remove_stale()

    @contextmanager
    def use(self, key: Hashable, fingerprint: Any, fill: Callable[[BinaryIO], Any] | None = None) -> Iterator[Copy | None]:
        """The copy of `key` holding `fingerprint`, made with `fill(file)` (its result is the copy's
        digest) unless one is kept already, or None without `fill`; not deleted inside the `with`."""
        copy = self._get(key, fingerprint, fill)
        if copy is None:
            yield None
            return
        try:
            yield copy
        finally:
            with self._lock:
                copy.users -= 1
                if copy.dropped and copy.users == 0:
                    copy.path.unlink(missing_ok=True)
                self._trim()

    def _get(self, key: Hashable, fingerprint: Any, fill: Callable[[BinaryIO], Any] | None) -> Copy | None:
        with self._lock:
            gate = self._filling.setdefault(key, [threading.Lock(), 0])
            gate[1] += 1
        try:
            with gate[0]:
                with self._lock:
                    have = self._copies.get(key)
                    if have is not None and have.fingerprint == fingerprint:
                        have.users += 1
                        self._copies.move_to_end(key)
                        return have
                if fill is None:
                    return None
                fd, name = tempfile.mkstemp(prefix="capsync-", suffix=".blob", dir=self.dir)
                try:
                    with os.fdopen(fd, "wb") as f:
                        digest = fill(f)
                except BaseException:
                    os.unlink(name)
                    raise
                copy = Copy(fingerprint, Path(name), os.path.getsize(name), digest, users=1)
                with self._lock:
                    self._drop_locked(key)
                    self._copies[key] = copy
                    self._trim()
                return copy
        finally:
            with self._lock:
                gate[1] -= 1
                if gate[1] == 0:
                    del self._filling[key]

    def drop(self, key: Hashable) -> None:
        """Forget the copy of `key` (deleted now, or when its last reader is done)."""
        with self._lock:
            self._drop_locked(key)

    def drop_where(self, match: Callable[[Hashable], bool]) -> None:
        """Forget every copy whose key matches."""
        with self._lock:
            for key in [k for k in self._copies if match(k)]:
                self._drop_locked(key)

    def _drop_locked(self, key: Hashable) -> None:
        c = self._copies.pop(key, None)
        if c is not None:
            c.dropped = True
            if c.users == 0:
                c.path.unlink(missing_ok=True)

    def _trim(self) -> None:
        total = sum(c.size for c in self._copies.values())
        for key in [k for k, c in self._copies.items() if c.users == 0]:
            if len(self._copies) <= self.max_files and total <= self.max_bytes:
                return
            total -= self._copies[key].size
            self._drop_locked(key)

    def _remove_stale(self) -> None:
        cutoff = time.time() - STALE_S
        for p in self.dir.glob(_PATTERN):
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
            except OSError:
                pass
