"""What waits to sync and what was set aside, read from the disk (`capsync backlog`), and putting
set-aside files back (`capsync backlog --retry-failed`). Works with or without a running agent.

Waiting: the files the sync scheduler would upload (runtime/ready_index.py's rule), by resource
(`type/name/method` for capture files, the folder for additional_sync_paths), plus the `.prog`
files still being written. Set aside: everything in `<capture_dir>/failed/`:

- a file the cloud refused for good (runtime/sync_files.py `set_aside`), with its report
  `<name>.set-aside.json` (the error, when, the original path); retryable;
- a damaged tail cut off a capture file (runtime/salvage.py), with its `.damaged-tail.json`
  report; its intact records synced already and the bytes themselves can never sync: listed, kept.

Putting a file back is one rename into the place it came from, never over an existing file, under
an flock on `failed/` (so two retries cannot race), with both directories fsynced; the report goes
only after the file is back, and only if it is still the one read (the agent may already have set
the file aside again, with a new report). Nothing is copied, so nothing can be duplicated on disk,
and the cloud commits each file id once: a capture file keeps its id (its header), a plain file
its path, size, mtime and bytes, which the rename keeps. A file whose retry fails again is set aside
again by the agent, with a new report. A capture file whose header cannot be read is not put back:
no retry can help it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from capsync.runtime.capture_file import (
    PROG_SUFFIX, CaptureFormatError, fsync_dir, iter_capture, make_private_dirs_durable,
)
from capsync.runtime.ready_index import find_ready_files
from capsync.runtime.sync_files import FAILED_DIR, SET_ASIDE_REPORT, regular_files
from capsync.runtime.sync_protocol import FileKind

DAMAGED_TAIL = ".damaged-tail"
_REPORTS = (SET_ASIDE_REPORT, DAMAGED_TAIL + ".json")
ADDITIONAL = "additional"  # failed/additional/...: files from additional_sync_paths


@dataclass
class WaitingGroup:
    """Files waiting to sync from one resource (or one additional sync path)."""

    source: str  # "sensor/env/Readings", or "additional /data/logs"
    files: int = 0
    bytes: int = 0
    oldest_mtime_ns: int | None = None


@dataclass(frozen=True)
class SetAside:
    """One file in failed/: what it is, why it is there, and where a retry would put it."""

    path: Path
    capture_dir: Path
    kind: str  # "capture", "file" or "damaged-tail"
    size: int
    mtime_ns: int
    why: str
    set_aside_at: str | None
    back_to: Path | None  # None: not retryable (see why_kept)
    why_kept: str | None = None

    @property
    def report(self) -> Path:
        """The report beside it."""
        suffix = ".json" if self.kind == "damaged-tail" else SET_ASIDE_REPORT
        return self.path.with_name(self.path.name + suffix)


@dataclass
class Backlog:
    """What waits to sync under some capture dirs and additional sync paths, and what is set aside."""

    waiting: list[WaitingGroup] = field(default_factory=list)
    open_files: int = 0  # .prog files still being written (they sync once finished)
    set_aside: list[SetAside] = field(default_factory=list)

    @property
    def files(self) -> int:
        """Files waiting to sync."""
        return sum(g.files for g in self.waiting)

    @property
    def bytes(self) -> int:
        """Bytes waiting to sync."""
        return sum(g.bytes for g in self.waiting)


def read_backlog(capture_dirs: Iterable[Path], sync_paths: Iterable[Path], now_s: float | None = None) -> Backlog:
    """One look at the disk: the waiting files by source, the open files, and failed/."""
    capture_dirs, sync_paths = [Path(d) for d in capture_dirs], [Path(p) for p in sync_paths]
    groups: dict[str, WaitingGroup] = {}
    for f in find_ready_files(capture_dirs, sync_paths, time.time() if now_s is None else now_s):
        source = str(Path(f.name).parent) if f.kind is FileKind.CAPTURE else f"additional {f.root}"
        g = groups.setdefault(source, WaitingGroup(source))
        g.files += 1
        g.bytes += f.size
        g.oldest_mtime_ns = f.mtime_ns if g.oldest_mtime_ns is None else min(g.oldest_mtime_ns, f.mtime_ns)
    backlog = Backlog(waiting=sorted(groups.values(), key=lambda g: g.source))
    for d in capture_dirs:
        backlog.open_files += sum(1 for e in regular_files(d, skip_dir=FAILED_DIR) if e.name.endswith(PROG_SUFFIX))
        backlog.set_aside += list_set_aside(d, sync_paths)
    return backlog


def _report(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def list_set_aside(capture_dir: Path, sync_paths: Iterable[Path] = ()) -> list[SetAside]:
    """Every file in `<capture_dir>/failed/`, oldest first, with why it is there."""
    failed = Path(capture_dir) / FAILED_DIR
    sync_paths = [Path(p) for p in sync_paths]
    out = []
    for e in regular_files(failed):
        name = e.name
        if name.endswith(_REPORTS) or name.endswith(".tmp") or name.startswith("."):
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        path = Path(e.path)
        rel = path.relative_to(failed)
        if name.endswith(DAMAGED_TAIL):
            r = _report(path.with_name(name + ".json")) or {}
            why = (f"damaged tail of {r.get('file', rel.as_posix()[:-len(DAMAGED_TAIL)])} from byte "
                   f"{r.get('offset', '?')}: {r.get('reason', 'no report')}; its {r.get('intact_records', '?')} "
                   "intact records synced")
            out.append(SetAside(path, Path(capture_dir), "damaged-tail", st.st_size, st.st_mtime_ns, why, None, None,
                                "damaged bytes: nothing in them can sync; delete them when you no longer need them"))
            continue
        r = _report(path.with_name(name + SET_ASIDE_REPORT))
        why = (r or {}).get("error") or "no report (set aside by a capsync older than the reports; the agent's log says why)"
        when = (r or {}).get("set_aside_at")
        if rel.parts[0] == ADDITIONAL:
            original = Path(r["file"]) if r and isinstance(r.get("file"), str) else None
            kept = None
            if original is None:
                kept = "its original path is not known (no report)"
            elif not any(_under(original, p) for p in sync_paths):
                kept = f"{original} is not under an additional_sync_path of this config"
            out.append(SetAside(path, Path(capture_dir), "file", st.st_size, st.st_mtime_ns, why, when,
                                original if kept is None else None, kept))
        else:
            kept = _unreadable(path)
            out.append(SetAside(path, Path(capture_dir), "capture", st.st_size, st.st_mtime_ns, why, when,
                                Path(capture_dir) / rel if kept is None else None, kept))
    return sorted(out, key=lambda s: (s.mtime_ns, str(s.path)))


def _under(path: Path, root: Path) -> bool:
    return path.is_relative_to(root) and path != root


def _unreadable(path: Path) -> str | None:
    """Why the capture file at `path` can never sync (its header cannot be read), or None."""
    items = iter_capture(path)
    try:
        next(items)
    except (CaptureFormatError, StopIteration) as exc:
        return f"not a readable capture file ({exc or 'empty'}): no retry can help it"
    except OSError as exc:
        return f"cannot be read: {exc}"
    finally:
        items.close()
    return None


@dataclass(frozen=True)
class RetryOutcome:
    """What `retry_set_aside` did with one file."""

    file: SetAside
    put_back: bool
    detail: str
    error: bool = False  # the move itself failed (a file system error), not a file kept on purpose


def retry_set_aside(capture_dir: Path, sync_paths: Iterable[Path] = ()) -> list[RetryOutcome]:
    """Put every retryable file in `<capture_dir>/failed/` back where it came from (see the module doc)."""
    failed = Path(capture_dir) / FAILED_DIR
    if not failed.is_dir():
        return []
    fd = os.open(failed, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one retry at a time; released when fd closes
        return [_put_back(s) for s in list_set_aside(capture_dir, sync_paths)]
    finally:
        os.close(fd)


def _put_back(s: SetAside) -> RetryOutcome:
    if s.back_to is None:
        return RetryOutcome(s, False, f"kept: {s.why_kept}")
    dest = s.back_to
    if os.path.lexists(dest):
        return RetryOutcome(s, False, f"kept: {dest} exists already")
    try:
        report_ino = os.stat(s.report).st_ino
    except OSError:
        report_ino = None
    try:
        make_private_dirs_durable(dest.parent)
        if os.path.lexists(dest):
            return RetryOutcome(s, False, f"kept: {dest} exists already")
        os.rename(s.path, dest)
        fsync_dir(dest.parent)
        fsync_dir(s.path.parent)
    except OSError as exc:
        return RetryOutcome(s, False, f"kept: cannot move it back: {exc}", error=True)
    try:  # the report, unless the agent has set the file aside again meanwhile (a new report)
        if report_ino is not None and os.stat(s.report).st_ino == report_ino:
            os.unlink(s.report)
    except OSError:
        pass
    return RetryOutcome(s, True, f"put back to {dest}")
