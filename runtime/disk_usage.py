"""Disk-space facts and the disk-full rule, as pure functions for the disk governor (actors/governor.py).

The documented rule: act only when capture is enabled, the file system holding the capture dir
is at least 90 % used, and the capture dir holds at least 50 % of that file system's used bytes.
Then delete every Nth finished capture file, counting oldest first. When the file system is that
full but the capture dir holds less than half of it, warn and delete nothing.

Nothing here follows a symlink: a link inside the capture dir is neither counted, nor walked
into, nor deleted. No Trio import; the governor runs the walks in a worker thread.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import psutil

from capsync.runtime.capture_file import CAPTURE_SUFFIX
from capsync.runtime.sync_files import FAILED_DIR, regular_files

#: The file system must be at least this full (percent) before anything is deleted.
USAGE_THRESHOLD_PERCENT = 90.0
#: ... and the capture dir must hold at least this share of the file system's used bytes.
CAPTURE_SHARE_THRESHOLD = 0.5


@dataclass(frozen=True)
class DiskUsage:
    """Bytes of one file system: total, used, and free to unprivileged users (as `df` shows)."""

    total: int
    used: int
    free: int

    @property
    def percent(self) -> float:
        """Used share in percent, as `df` computes it: used / (used + free); not rounded."""
        room = self.used + self.free
        return 100.0 * self.used / room if room > 0 else 0.0


class Verdict(str, enum.Enum):
    """What the disk-full rule says to do at one check."""

    CAPTURE_OFF = "capture_off"  # capture is disabled: the rule does not apply
    OK = "ok"  # below the usage threshold
    DELETE = "delete"  # full, and mostly by capture data: delete every Nth file
    NOT_OURS = "not_ours"  # full, but mostly by other data: warn, delete nothing


def verdict(capture_enabled: bool, usage: DiskUsage, capture_bytes: int | None) -> Verdict:
    """The disk-full rule. `capture_bytes` may be None when usage is below the threshold (not needed)."""
    if not capture_enabled:
        return Verdict.CAPTURE_OFF
    if usage.percent < USAGE_THRESHOLD_PERCENT:
        return Verdict.OK
    if capture_bytes is not None and usage.used > 0 and capture_bytes >= CAPTURE_SHARE_THRESHOLD * usage.used:
        return Verdict.DELETE
    return Verdict.NOT_OURS


def existing_ancestor(path: Path) -> Path:
    """`path` itself if it exists, else its nearest existing parent (the file system it will be on)."""
    p = Path(path).absolute()
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def disk_usage(path: Path) -> DiskUsage:
    """Usage of the file system holding `path` (or where `path` would be created), via psutil."""
    u = psutil.disk_usage(str(existing_ancestor(path)))
    return DiskUsage(total=u.total, used=u.used, free=u.free)


def _allocated(st: os.stat_result) -> int:
    blocks = getattr(st, "st_blocks", None)
    return blocks * 512 if blocks is not None else st.st_size


def dir_usage(root: Path) -> int:
    """Bytes the regular files under `root` occupy on disk (allocated blocks), symlinks not followed."""
    total = 0
    for e in regular_files(Path(root)):
        try:
            total += _allocated(e.stat(follow_symlinks=False))
        except OSError:
            continue
    return total


@dataclass(frozen=True)
class CaptureFile:
    """A finished capture file the governor may delete: where it is, its size, and its age key."""

    path: Path
    size: int
    mtime_ns: int


def finished_capture_files(capture_dir: Path) -> list[CaptureFile]:
    """Every finished `.capture` file under `capture_dir`, oldest first (mtime, then path).

    Never a `.prog` (still being written), nothing under `<capture_dir>/failed/` (files the cloud
    refused, kept for people to look at), never a symlink. The order is stable: finished files are
    not modified again, so the same files sort the same way at every check.
    """
    out = []
    for e in regular_files(Path(capture_dir), skip_dir=FAILED_DIR):
        if not e.name.endswith(CAPTURE_SUFFIX):
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        out.append(CaptureFile(Path(e.path), _allocated(st), st.st_mtime_ns))
    out.sort(key=lambda f: (f.mtime_ns, str(f.path)))
    return out


def every_nth(files: Iterable[CaptureFile], n: int, busy: Callable[[Path], bool] = lambda p: False
              ) -> Iterator[CaptureFile]:
    """The files to delete: the 1st, (n+1)th, (2n+1)th ... of `files` (oldest first).

    A busy file (being uploaded) is skipped and does not take a place in the count, so the file
    after it takes its turn, as in the reference implementation. `busy` is asked lazily, right
    before each file is yielded, so a caller that deletes each file as it gets it leaves no gap.
    """
    if n < 1:
        raise ValueError(f"delete_every_nth_when_disk_full must be >= 1, got {n}")
    index = 0
    for f in files:
        if index % n == 0:
            if busy(f.path):
                continue
            yield f
        index += 1


def is_inside(path: Path, root: Path) -> bool:
    """True when `path`'s real directory lies inside `root`'s real path (no symlink leads out)."""
    try:
        real_parent = Path(os.path.realpath(path.parent))
        real_root = Path(os.path.realpath(root))
    except OSError:
        return False
    return real_parent == real_root or real_root in real_parent.parents
