"""The disk governor: keeps a robot that captures offline from filling its disk.

Every `interval_s` (default 5 s) it applies the documented disk-full rule (runtime/disk_usage.py):
when capture is enabled, the file system holding the capture dir is at least 90 % used and the
capture dir holds at least half of that file system's used bytes, it deletes every Nth finished
capture file (N = `delete_every_nth_when_disk_full`), oldest first, and logs how many files and
bytes it removed. When the disk is that full with other data, it warns once per change of state
and deletes nothing. It never deletes a `.prog` (open) file, a file being uploaded, anything in
`failed/`, or anything outside the capture dir; it does not follow symlinks.

The disk-usage and dir-usage functions are injectable, so tests drive every branch of the rule.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import trio

from capsync.runtime.blocking import run_blocking
from capsync.runtime.faults import FaultPlan
from capsync.runtime.disk_usage import (
    USAGE_THRESHOLD_PERCENT,
    DiskUsage,
    Verdict,
    dir_usage,
    disk_usage,
    every_nth,
    finished_capture_files,
    is_inside,
    verdict,
)
from capsync.runtime.logs import StateChangeLog

log = logging.getLogger("capsync.governor")

#: How often the rule is checked unless told otherwise.
DEFAULT_INTERVAL_S = 5.0
#: Deletions are done on the Trio thread (so no upload can start on a file between the check and
#: the unlink); after this many the governor yields, so capture is never held up for long.
UNLINKS_PER_CHECKPOINT = 32


@dataclass(frozen=True)
class DeletionPass:
    """What one deletion pass did."""

    at_ns: int
    files: int
    bytes: int
    usage_before_percent: float
    usage_after_percent: float


@dataclass(frozen=True)
class GovernorStats:
    """A snapshot of the governor for `capsync status` and tests."""

    capture_dir: str
    interval_s: float
    every_nth: int
    state: str  # a Verdict value, or "error" when the disk could not be measured
    checks: int
    usage_percent: float | None
    capture_share: float | None  # capture dir bytes / used bytes, measured when usage >= 90 %
    passes: int
    files_deleted: int
    bytes_deleted: int
    warnings: int  # times it warned that the disk is full of data that is not capture data
    last_pass: DeletionPass | None
    last_error: str | None


class DiskGovernor:
    """Applies the disk-full rule to `capture_dir` every `interval_s` seconds until cancelled.

    `is_busy(path)` says whether a file is being uploaded (the sync scheduler knows); such a file
    is never deleted. `usage_of(path)` and `capture_bytes_of(dir)` default to psutil and a walk of
    the capture dir; tests inject their own.
    """

    def __init__(
        self,
        capture_dir: Path,
        *,
        every_nth: int = 5,
        capture_enabled: bool = True,
        interval_s: float = DEFAULT_INTERVAL_S,
        is_busy: Callable[[Path], bool] | None = None,
        usage_of: Callable[[Path], DiskUsage] = disk_usage,
        capture_bytes_of: Callable[[Path], int] = dir_usage,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self._usage_of = usage_of
        self._capture_bytes_of = capture_bytes_of
        self._is_busy = is_busy or (lambda p: False)
        self._state_log = StateChangeLog(log)
        self._wake = trio.Event()
        self._state = "ok"
        self._checks = self._passes = self._files = self._bytes = self._warnings = 0
        self._usage: float | None = None
        self._share: float | None = None
        self._last_pass: DeletionPass | None = None
        self._last_error: str | None = None
        #: Called with each file's path right before the disk rule deletes it (the simulation's ledger).
        self.on_delete: Callable[[Path], None] | None = None
        #: Fault injection (tests): the point `check`.
        self.faults: FaultPlan | None = None
        self.reconfigure(capture_dir, every_nth=every_nth, capture_enabled=capture_enabled)

    def reconfigure(self, capture_dir: Path, *, every_nth: int, capture_enabled: bool) -> None:
        """Apply new data manager settings; they take effect at the next check, which comes at once."""
        if every_nth < 1:
            raise ValueError(f"delete_every_nth_when_disk_full must be >= 1, got {every_nth}")
        self.capture_dir = Path(capture_dir)
        self.every_nth = every_nth
        self.capture_enabled = capture_enabled
        self._wake.set()

    def statistics(self) -> GovernorStats:
        """Counters since start and what the last check saw."""
        return GovernorStats(
            capture_dir=str(self.capture_dir),
            interval_s=self.interval_s,
            every_nth=self.every_nth,
            state=self._state,
            checks=self._checks,
            usage_percent=None if self._usage is None else round(self._usage, 2),
            capture_share=None if self._share is None else round(self._share, 3),
            passes=self._passes,
            files_deleted=self._files,
            bytes_deleted=self._bytes,
            warnings=self._warnings,
            last_pass=self._last_pass,
            last_error=self._last_error,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check at once, then every `interval_s` (or right after reconfigure), until cancelled."""
        task_status.started()
        while True:
            self._wake = trio.Event()
            await self.check_once()
            with trio.move_on_after(self.interval_s):
                await self._wake.wait()

    async def check_once(self) -> Verdict | None:
        """Measure, apply the rule once (deleting if it says so) and return its verdict (None on error)."""
        try:
            return await self._check()
        finally:
            self._checks += 1  # counted when done, so a snapshot never shows a check half-way

    async def _check(self) -> Verdict | None:
        if self.faults is not None:
            await self.faults.hit("governor", "check")
        capture_dir = self.capture_dir
        try:
            usage, capture_bytes = await run_blocking(self._measure, capture_dir)
        except OSError as exc:
            self._state, self._last_error = "error", f"{type(exc).__name__}: {exc}"
            self._state_log.fail("measure", "cannot measure disk usage", capture_dir=str(capture_dir),
                                 error=self._last_error)
            return None
        self._state_log.ok("measure", "disk usage measurable again", capture_dir=str(capture_dir))
        v = verdict(self.capture_enabled, usage, capture_bytes)
        self._usage = usage.percent
        self._share = capture_bytes / usage.used if capture_bytes is not None and usage.used else None
        self._state = v.value
        if v is Verdict.NOT_OURS:
            if self._state_log.fail("share", "disk nearly full, but mostly with data outside the capture dir; "
                                    "deleting nothing", capture_dir=str(capture_dir),
                                    usage_percent=round(usage.percent, 1), capture_share=_round(self._share)):
                self._warnings += 1
        else:
            self._state_log.ok("share", "disk-full warning cleared",
                               capture_dir=str(capture_dir), usage_percent=round(usage.percent, 1))
        if v is Verdict.DELETE:
            await self._delete_pass(capture_dir, usage)
        return v

    def _measure(self, capture_dir: Path) -> tuple[DiskUsage, int | None]:
        usage = self._usage_of(capture_dir)
        if not self.capture_enabled or usage.percent < USAGE_THRESHOLD_PERCENT:
            return usage, None  # the capture dir walk is only needed when the disk is full
        return usage, self._capture_bytes_of(capture_dir)

    async def _delete_pass(self, capture_dir: Path, before: DiskUsage) -> None:
        files = await run_blocking(finished_capture_files, capture_dir)
        n_files = n_bytes = since_checkpoint = 0
        errors: list[str] = []
        for f in every_nth(files, self.every_nth, self._is_busy):  # busy is asked right before each unlink
            if since_checkpoint >= UNLINKS_PER_CHECKPOINT:
                await trio.lowlevel.checkpoint()
                since_checkpoint = 0
                if self._is_busy(f.path):  # an upload may have started while we yielded
                    continue
            since_checkpoint += 1
            try:
                if not is_inside(f.path, capture_dir) or not f.path.is_file() or f.path.is_symlink():
                    continue
                if self.on_delete is not None:
                    self.on_delete(f.path)
                os.unlink(f.path)
            except FileNotFoundError:
                continue  # synced and removed meanwhile
            except OSError as exc:
                errors.append(f"{f.path}: {exc}")
                continue
            n_files += 1
            n_bytes += f.size
            log.debug("capture file deleted by the disk-full rule", extra={"path": str(f.path), "bytes": f.size})
        after = await run_blocking(self._usage_of, capture_dir)
        self._passes += 1
        self._files += n_files
        self._bytes += n_bytes
        self._last_pass = DeletionPass(time.time_ns(), n_files, n_bytes, round(before.percent, 2),
                                       round(after.percent, 2))
        self._usage = after.percent
        log.warning("disk nearly full: deleted every Nth capture file", extra={
            "capture_dir": str(capture_dir), "every_nth": self.every_nth, "files_deleted": n_files,
            "bytes_deleted": n_bytes, "finished_files": len(files), "usage_before_percent": round(before.percent, 1),
            "usage_after_percent": round(after.percent, 1), "files_deleted_total": self._files,
            "bytes_deleted_total": self._bytes})
        if errors:
            self._last_error = errors[-1]
            log.error("could not delete some capture files", extra={"count": len(errors), "first": errors[0]})


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
