"""The files ready to sync, kept across sync passes so that finding them costs what changed.

The first refresh lists every directory under the roots and stats every candidate file. After
that a refresh stats each known directory once and lists again only the directories whose
mtime changed: a directory's mtime changes whenever an entry is created, renamed or removed in
it, which is how capture files appear (a `.prog` renamed to `.capture` in place) and go (deleted
once synced). Only names not seen before are stat'd. Two rules keep that exact:

- A file created in the same timestamp tick as a listing leaves the directory's mtime as it
  was. So a directory whose mtime was within MTIME_SLACK_S of the time it was listed is listed
  again at the next refresh, until it has been listed at a time well past its mtime. (And every
  directory is read again every RELIST_S, for file systems that do not keep directory mtimes.)
- A file under an additional_sync_path that has not been quiet for 10 s yet is remembered as
  waiting and stat'd again at each refresh until it is (files change in place without touching
  their directory). Just before upload, `sync_file` stats the file once more, so a file that
  changed or vanished since it was indexed is never uploaded from a stale view.

Per ready file the index holds one tuple (mtime and size, directory, name), kept in a dict per
directory and in one heap (oldest first) over all of them; no Path or SyncFile is built until a
file is about to be uploaded. Removed entries leave stale heap slots that are skipped, and the
heap is rebuilt once they outnumber the live ones. A refresh may run in a worker thread while
uploads go on (see ReadyIndex).
"""

from __future__ import annotations

import heapq
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from capsync.runtime.capture_file import CAPTURE_SUFFIX
from capsync.runtime.sync_files import FAILED_DIR, QUIET_S, SyncFile
from capsync.runtime.sync_protocol import FileKind

#: A directory whose mtime is within this many seconds of when it was listed is listed again at
#: the next refresh: a file created in the same timestamp tick would not have changed the mtime.
#: Covers file systems with coarse timestamps (2 s on FAT) as well as nanosecond ones.
MTIME_SLACK_S = 2.0

#: Every directory is read again at least this often, changed or not: a safety net for file systems
#: that do not keep directory mtimes (some network and FUSE ones). Known names are not stat'd again.
RELIST_S = 600.0

#: One ready file: (mtime_ns << SIZE_BITS | size, its directory, its name). Ordered oldest first
#: (then by size, directory and name). One int for both saves about 30 bytes a file; a plain
#: tuple keeps 100,000 of them small.
Entry = tuple  # (int, "_Dir", str)
SIZE_BITS = 48
_SIZE_MASK = (1 << SIZE_BITS) - 1  # 256 TiB: sizes beyond that (none exist) are counted as that


def _entry(mtime_ns: int, d: _Dir, name: str, size: int) -> Entry:
    return (mtime_ns << SIZE_BITS | min(size, _SIZE_MASK), d, name)


def size_of(e: Entry) -> int:
    """The entry's size in bytes, as indexed."""
    return e[0] & _SIZE_MASK


def mtime_ns_of(e: Entry) -> int:
    """The entry's modification time (ns since the epoch), as indexed."""
    return e[0] >> SIZE_BITS


class _Root:
    """A capture dir or an additional sync path, and what lives under it."""

    __slots__ = ("path", "kind", "top")

    def __init__(self, path: Path, kind: FileKind) -> None:
        self.path = path
        self.kind = kind
        self.top: _Dir | None = None


class _Dir:
    """One directory under a root: its mtime when last listed, its subdirectories and files."""

    __slots__ = ("path", "root", "parent", "mtime_ns", "listed_at", "subdirs", "files", "waiting")

    def __init__(self, path: str, root: _Root, parent: _Dir | None = None) -> None:
        self.path = path
        self.root = root
        self.parent = parent
        self.mtime_ns: int | None = None  # None: never listed
        self.listed_at = 0.0
        self.subdirs: dict[str, _Dir] = {}
        self.files: dict[str, Entry] = {}  # ready files by name
        self.waiting: dict[str, str] = {}  # additional-path files not quiet yet: name -> name

    def __lt__(self, other: _Dir) -> bool:  # ties of mtime in the heap fall back to the path
        return self.path < other.path

    def needs_listing(self, mtime_ns: int, fs_now: float) -> bool:
        """True if this directory changed, or might have changed unseen, since it was listed."""
        return (mtime_ns != self.mtime_ns or mtime_ns >= (self.listed_at - MTIME_SLACK_S) * 1e9
                or fs_now - self.listed_at >= RELIST_S)


@dataclass
class RefreshStats:
    """What one refresh looked at: its cost, which should follow what changed."""

    dirs_checked: int = 0  # directories stat'd
    dirs_listed: int = 0  # directories whose entries were read
    files_statted: int = 0  # files stat'd (new names, and waiting files)


class ReadyIndex:
    """The ready files under some capture dirs and additional sync paths, oldest first.

    `refresh` brings it up to date; `oldest_first` walks the ready files; `sync_file` turns an
    entry into an up-to-date SyncFile just before upload; `discard` drops an entry once its
    file is synced or set aside. `files` and `bytes` are the backlog, exact after each call.

    One refresh at a time, which may run in a worker thread while the other calls go on in
    another: a refresh reads the disk without the index's lock and takes it only to apply what
    it found, one directory at a time, so no call waits for more than that.
    """

    def __init__(self, quiet_s: float = QUIET_S, fs_time: Callable[[], float] = time.time) -> None:
        self.quiet_s = quiet_s
        self._fs_time = fs_time  # comparable with file system timestamps: the real wall clock
        self._lock = threading.Lock()
        self._roots: dict[tuple[FileKind, str], _Root] = {}
        self._heap: list[Entry] = []
        self._unheaped: list[Entry] | None = None  # found by the refresh under way, for the heap at its end
        self._stale = 0
        self.files = 0
        self.bytes = 0

    # -- finding -------------------------------------------------------------------------

    def refresh(self, capture_dirs: Iterable[Path], sync_paths: Iterable[Path], now_s: float) -> RefreshStats:
        """Bring the index up to date with the disk; `now_s` is the wall time for the 10 s quiet rule."""
        wanted = {(FileKind.CAPTURE, str(p)): Path(p) for p in capture_dirs}
        wanted.update({(FileKind.FILE, str(p)): Path(p) for p in sync_paths})
        with self._lock:
            for key in [k for k in self._roots if k not in wanted]:
                root = self._roots.pop(key)
                if root.top is not None:
                    self._drop(root.top)
            roots = [self._roots.setdefault(key, _Root(path, key[0])) for key, path in wanted.items()]
        stats = RefreshStats()
        fs_now = self._fs_time()
        self._unheaped = []
        try:
            for root in roots:
                self._refresh_root(root, now_s, fs_now, stats)
        finally:
            with self._lock:
                self._push(self._unheaped)
                self._unheaped = None
        with self._lock:
            if self._stale > 1024 and self._stale > len(self._heap) // 2:
                self._heap = [e for e in self._heap if e[1].files.get(e[2]) is e]
                heapq.heapify(self._heap)
                self._stale = 0
        return stats

    def _refresh_root(self, root: _Root, now_s: float, fs_now: float, stats: RefreshStats) -> None:
        if root.top is None:
            root.top = _Dir(str(root.path), root)
        stack = [root.top]
        while stack:
            d = stack.pop()
            stats.dirs_checked += 1
            try:  # the root itself may be a symlink to a dir; nothing under it is followed
                st = os.stat(d.path, follow_symlinks=d is root.top)
            except OSError:
                st = None
            if st is None or not stat.S_ISDIR(st.st_mode):
                with self._lock:
                    self._drop(d)
                    if d.parent is None:
                        root.top = None
                    elif d.parent.subdirs.get(os.path.basename(d.path)) is d:
                        del d.parent.subdirs[os.path.basename(d.path)]
                continue
            if d.needs_listing(st.st_mtime_ns, fs_now):
                self._list(d, st.st_mtime_ns, now_s, stats)
            elif d.waiting:
                self._check_waiting(d, now_s, stats)
            stack.extend(d.subdirs.values())

    def _list(self, d: _Dir, mtime_ns: int, now_s: float, stats: RefreshStats) -> None:
        """Read `d`'s entries: stat new names, forget vanished ones, note new subdirectories."""
        stats.dirs_listed += 1
        listed_at = self._fs_time()
        root = d.root
        capture = root.kind is FileKind.CAPTURE
        skip = FAILED_DIR if capture and d is root.top else None
        files, waiting, quiet_s = d.files, d.waiting, self.quiet_s
        track = bool(files or waiting)  # on a first listing nothing can have vanished
        seen: set[str] = set()
        seen_dirs: set[str] = set()
        found: list[Entry] = []
        not_quiet: list[str] = []
        try:
            with os.scandir(d.path) as it:
                for e in it:  # (the hot loop of a first look at a big backlog: kept lean)
                    name = e.name
                    try:
                        if capture and name.endswith(CAPTURE_SUFFIX) or not capture and name[:1] != ".":
                            if not e.is_file(follow_symlinks=False):
                                if e.is_dir(follow_symlinks=False) and name != skip:
                                    seen_dirs.add(name)
                                continue
                        elif e.is_dir(follow_symlinks=False):
                            if name != skip:
                                seen_dirs.add(name)
                            continue
                        else:
                            continue
                        if track:
                            known = files.get(name) or waiting.get(name)
                            if known is not None:  # keep the index's own name, let the listing's go
                                seen.add(known[2] if type(known) is tuple else known)
                                continue
                            seen.add(name)
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue  # vanished while we looked
                    if capture or now_s - st.st_mtime >= quiet_s:
                        found.append((st.st_mtime_ns << SIZE_BITS | min(st.st_size, _SIZE_MASK), d, name))
                    else:
                        not_quiet.append(name)
        except OSError:  # gone or unreadable now: the next refresh looks again
            d.mtime_ns = None
            return
        stats.files_statted += len(found) + len(not_quiet)
        with self._lock:
            self._add_all(found, fresh=not track)
            for name in not_quiet:
                if name not in files:
                    waiting[name] = name
            if track:
                for name in [n for n in files if n not in seen]:
                    self._remove(files.pop(name))
                for name in [n for n in waiting if n not in seen]:
                    del waiting[name]
            for name in seen_dirs:
                if name not in d.subdirs:
                    d.subdirs[name] = _Dir(os.path.join(d.path, name), root, d)
            for name in [n for n in d.subdirs if n not in seen_dirs]:
                self._drop(d.subdirs.pop(name))
            d.mtime_ns, d.listed_at = mtime_ns, listed_at
        if waiting:
            self._check_waiting(d, now_s, stats)

    def _check_waiting(self, d: _Dir, now_s: float, stats: RefreshStats) -> None:
        """Stat the files of `d` that were not quiet yet; those that are now become ready."""
        looked = [(name, lstat_of(os.path.join(d.path, name))) for name in list(d.waiting)]
        stats.files_statted += len(looked)
        with self._lock:
            quiet = []
            for name, st in looked:
                if name not in d.waiting:
                    continue
                if st is None:
                    del d.waiting[name]
                elif now_s - st.st_mtime >= self.quiet_s:
                    del d.waiting[name]
                    quiet.append(_entry(st.st_mtime_ns, d, name, st.st_size))
            self._add_all(quiet)

    # -- bookkeeping (with the lock held) ------------------------------------------------

    def _add_all(self, entries: list[Entry], *, fresh: bool = False) -> None:
        """Index `entries` (skipping names indexed meanwhile). A refresh puts them on the heap
        once at its end (one heapify, not one per directory); anything else right away.
        `fresh`: all of one directory that held nothing, so no name can be there already."""
        if fresh and entries:
            entries[0][1].files.update([(e[2], e) for e in entries])
            added = entries
        else:
            added = []
            for e in entries:
                files = e[1].files
                if e[2] not in files:
                    files[e[2]] = e
                    added.append(e)
        self.files += len(added)
        self.bytes += sum([e[0] & _SIZE_MASK for e in added])
        if self._unheaped is not None:
            self._unheaped.extend(added)
        else:
            self._push(added)

    def _push(self, entries: list[Entry]) -> None:
        if len(entries) > 64 and len(entries) > len(self._heap) // 8:
            self._heap.extend(entries)
            heapq.heapify(self._heap)
        else:
            for e in entries:
                heapq.heappush(self._heap, e)

    def _remove(self, e: Entry) -> None:
        self.files -= 1
        self.bytes -= e[0] & _SIZE_MASK
        self._stale += 1

    def _discard(self, e: Entry) -> None:
        if e[1].files.get(e[2]) is e:
            del e[1].files[e[2]]
            self._remove(e)

    def _drop(self, d: _Dir) -> None:
        """Forget `d` and everything under it."""
        stack = [d]
        while stack:
            x = stack.pop()
            for e in x.files.values():
                self._remove(e)
            x.files.clear()
            x.waiting.clear()
            stack.extend(x.subdirs.values())
            x.subdirs.clear()
            x.mtime_ns = None

    @staticmethod
    def _dir_at(path: str, root: _Root) -> _Dir | None:
        d = root.top
        if d is None:
            return None
        if path == d.path:
            return d
        if not path.startswith(d.path.rstrip(os.sep) + os.sep):
            return None
        for part in path[len(d.path.rstrip(os.sep)) + 1:].split(os.sep):
            d = d.subdirs.get(part)
            if d is None:
                return None
        return d

    # -- using ---------------------------------------------------------------------------

    @staticmethod
    def path_of(e: Entry) -> str:
        """The entry's file path."""
        return os.path.join(e[1].path, e[2])

    def is_live(self, e: Entry) -> bool:
        """True while `e` is in the index (not synced, set aside, vanished or replaced)."""
        return e[1].files.get(e[2]) is e

    def holds(self, path: str) -> bool:
        """True if the ready file at `path` is in the index."""
        head, name = os.path.split(path)
        with self._lock:
            for root in self._roots.values():
                d = self._dir_at(head, root)
                if d is not None and name in d.files:
                    return True
        return False

    def oldest_mtime_ns(self) -> int | None:
        """The modification time (ns since the epoch) of the oldest ready file, None when there is
        none. Cheap: the heap's top, after dropping the stale slots above it."""
        with self._lock:
            heap = self._heap
            while heap and not self.is_live(heap[0]):
                heapq.heappop(heap)
                self._stale -= 1
            return mtime_ns_of(heap[0]) if heap else None

    def oldest_first(self) -> Iterator[Entry]:
        """Every ready file, oldest (by mtime) first, as indexed now; entries discarded meanwhile
        are skipped. Walks a copy of the heap, so the index may change while this runs."""
        with self._lock:
            heap = self._heap.copy()
        while heap:
            e = heapq.heappop(heap)
            if self.is_live(e):
                yield e

    def oldest_mtime_ns(self) -> int | None:
        """The modification time of the oldest ready file (ns since the epoch), or None when there is
        none. Cheap: it looks at the top of the heap, dropping the stale slots it finds there."""
        with self._lock:
            heap = self._heap
            while heap and not self.is_live(heap[0]):
                heapq.heappop(heap)
                self._stale = max(0, self._stale - 1)
            return mtime_ns_of(heap[0]) if heap else None

    def sync_file(self, e: Entry, st: os.stat_result | None, now_s: float) -> SyncFile | None:
        """`e` as a SyncFile from `st`, a fresh `lstat_of` its file, or None if it is no longer
        ready (vanished, or an additional-path file changed less than 10 s ago); the index follows
        what `st` says. (The stat is separate so it can run in a worker thread.)"""
        d, name = e[1], e[2]
        with self._lock:
            if not self.is_live(e):
                return None
            if st is None or not stat.S_ISREG(st.st_mode):
                self._discard(e)
                return None
            if _entry(st.st_mtime_ns, d, name, st.st_size)[0] != e[0]:
                self._discard(e)
                if d.root.kind is FileKind.FILE and now_s - st.st_mtime < self.quiet_s:
                    d.waiting[name] = name
                    return None
                self._add_all([_entry(st.st_mtime_ns, d, name, st.st_size)])
        return SyncFile(Path(d.path, name), d.root.path, d.root.kind, st.st_size, st.st_mtime_ns)

    def discard(self, e: Entry) -> None:
        """Drop `e` (its file was synced, set aside or is gone); no-op if it is not in the index."""
        with self._lock:
            self._discard(e)


def lstat_of(path: str) -> os.stat_result | None:
    """The file's stat (not following a symlink), or None if it is gone or unreadable."""
    try:
        return os.stat(path, follow_symlinks=False)
    except OSError:
        return None


def find_ready_files(capture_dirs: Iterable[Path], sync_paths: Iterable[Path], now_s: float,
                     quiet_s: float = QUIET_S) -> list[SyncFile]:
    """Every file ready to sync now, oldest (by modification time) first (one full look, no index kept)."""
    index = ReadyIndex(quiet_s)
    index.refresh(capture_dirs, sync_paths, now_s)
    return [SyncFile(Path(index.path_of(e)), e[1].root.path, e[1].root.kind, size_of(e), mtime_ns_of(e))
            for e in index.oldest_first()]
