"""The collector: captures one capture method of one resource at a fixed rate into capture files.

One collector runs per enabled capture method. Tick k is scheduled at `start + k / f` (no drift).
A tick that starts late is performed and counted as late; ticks that were missed entirely (the
previous call overran a whole period) are counted as missed, and the schedule stays on its grid.
A resource call that raises or times out is logged (once per change of error) and counted; the
collector keeps its schedule. Files finish by size, by age, on request (sync pass) and at shutdown.
A write that the disk refuses (ENOSPC, EIO, ...) drops that reading: it is counted as dropped, the
error is logged once per change of state, the file stays readable, and capture resumes when the
disk takes writes again.
"""

from __future__ import annotations

import errno
from functools import partial
from collections import Counter
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import trio

from capsync.runtime.capture_file import (
    MAX_RECORDS_PER_FILE, CaptureHeader, CaptureRecord, CaptureWriter, new_file_id, recover_prog,
)
from capsync.runtime.capture_writer import RecordRefused
from capsync.runtime.config import CaptureMethodPlan
from capsync.runtime.logs import StateChangeLog
from capsync.runtime.resources.methods import DataKind
from capsync.runtime.resources.registry import Binary, Resource
from capsync.runtime.wallclock import WallClock
from capsync.runtime.blocking import run_blocking
from capsync.runtime.faults import FaultPlan

log = logging.getLogger("capsync.collector")

#: A tick is late when it starts more than this share of its period after its scheduled time.
LATE_SHARE = 0.1
#: ... but never counts as late below this many seconds (scheduler jitter at very high rates).
LATE_FLOOR_S = 0.002
#: Window over which `measured_hz` is computed.
RATE_WINDOW_S = 1.0
#: How long finishing the open file may block at shutdown before the .prog is left for recovery.
FINISH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class CollectorSettings:
    """Where and how a collector writes: the capture dir, part identity and file limits."""

    capture_dir: Path
    part_id: str
    tags: tuple[str, ...] = ()
    max_file_bytes: int = 64 * 1024
    max_binary_file_bytes: int = 0  # 0: one binary capture per file
    max_file_age_s: float = 60.0
    fsync_interval_s: float = 1.0
    resource_timeout_s: float = 5.0


@dataclass(frozen=True)
class CollectorStats:
    """A snapshot of one collector's counters, for `capsync status` and tests."""

    name: str
    target_hz: float
    measured_hz: float | None  # captures per second over the last second; None until measured
    captured: int
    failed: int
    late_ticks: int
    missed_ticks: int
    max_lateness_s: float
    files_finished: int
    bytes_written: int
    open_file: str | None
    last_error: str | None
    dropped: int = 0  # readings the disk refused (ENOSPC, EIO, ...): lost, and counted here


def collector_name(plan: CaptureMethodPlan) -> str:
    """The actor name of the collector for `plan`, e.g. `collector board/b/Analogs(reader_name=A1)`."""
    r = plan.resource
    where = f"{r.remote}:" if r.remote else ""
    params = ",".join(f"{k}={v}" for k, v in sorted(plan.params.items()))
    return f"collector {where}{r.type}/{r.name}/{plan.method}" + (f"({params})" if params else "")


class Collector:
    """Captures `plan.method` of `resource` at `plan.frequency_hz` into capture files.

    `on_tabular` (optional) is handed every tabular reading after it was written to the capture
    file; the MongoDB sink uses it. It must not block.
    """

    def __init__(
        self,
        plan: CaptureMethodPlan,
        resource: Resource,
        settings: CollectorSettings,
        wall: WallClock,
        on_tabular: Callable[[CaptureHeader, CaptureRecord], None] | None = None,
    ) -> None:
        self.plan = plan
        self.name = collector_name(plan)
        self._resource = resource
        self._settings = settings
        self._wall = wall
        self._on_tabular = on_tabular
        self._period = self._grid_period = 1.0 / plan.frequency_hz
        self._regrid = False
        self._last_fsync = 0.0
        self._writer: CaptureWriter | None = None
        self._finish_requested = False
        self._errors = StateChangeLog(log)
        self._disk_errors = StateChangeLog(log)  # disk-full handling: once per change of state
        self._dropped = 0
        self._captured = self._failed = self._late = self._missed = 0
        self._files_finished = self._bytes = 0
        self._max_lateness = 0.0
        self._last_error: str | None = None
        self._sleep_scope: trio.CancelScope | None = None
        self._finished = trio.Event()  # set (and replaced) each time a file is finished
        self._stop_requested = False
        #: Set once the collector has stopped after `request_stop()`.
        self.stopped = trio.Event()
        self._rate_t0: float | None = None  # start of the current rate window
        self._rate_c0 = 0
        self._measured_hz: float | None = None
        #: Fault injection (tests): points tick, before_call, after_call, before_write, after_write.
        self.faults: FaultPlan | None = None
        #: When set (simulation), counts the records appended per file id.
        self.ledger: Counter[str] | None = None
        #: When set to a list, the lateness (s) of every tick is appended to it (benchmarks).
        self.lateness_samples: list[float] | None = None

    # -- control -------------------------------------------------------------------------

    def set_frequency(self, hz: float) -> None:
        """Change the capture rate; it takes effect at the next tick and keeps the open file."""
        if hz <= 0:
            raise ValueError(f"capture frequency must be > 0 Hz, not {hz}")
        self._period = 1.0 / hz
        self._regrid = True
        self._rate_t0, self._measured_hz = None, None
        self.plan = replace(self.plan, frequency_hz=hz)
        self._wake()

    def request_stop(self) -> None:
        """Ask the collector to stop after the capture in progress, finishing its file; `stopped` is
        set when it has. Unlike cancellation, no reading that is being taken is lost."""
        self._stop_requested = True
        self._wake()

    def request_finish(self) -> None:
        """Ask the collector to finish its open file (it is then ready to sync)."""
        self._finish_requested = True
        self._wake()

    async def finish_open_file(self) -> None:
        """Finish the open file, if any, and wait until the collector has done it."""
        if self._writer is None:
            return
        done = self._finished
        self.request_finish()
        await done.wait()

    def statistics(self) -> CollectorStats:
        """Counters since this collector started."""
        return CollectorStats(
            name=self.name,
            target_hz=self.plan.frequency_hz,
            measured_hz=self._measured_hz,
            captured=self._captured,
            failed=self._failed,
            late_ticks=self._late,
            missed_ticks=self._missed,
            max_lateness_s=self._max_lateness,
            files_finished=self._files_finished,
            bytes_written=self._bytes,
            open_file=str(self._writer.path) if self._writer else None,
            last_error=self._last_error,
            dropped=self._dropped,
        )

    # -- the actor -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Capture until cancelled, then finish the open file (shielded, time-bounded)."""
        start, k = trio.current_time(), 0
        task_status.started()
        try:
            while not self._stop_requested:
                if self._regrid:  # new rate: a new grid through the last tick, from its next tick not in the past
                    self._regrid = False
                    if k > 0:
                        start += (k - 1) * self._grid_period
                    self._grid_period = self._period
                    k = max(1 if k > 0 else 0, math.ceil((trio.current_time() - start) / self._period - 1e-9))
                due = start + k * self._grid_period
                await self._sleep_until(due)
                now = trio.current_time()
                if now < due or self._regrid or self._stop_requested:  # woken early: a request or file age
                    await self._maybe_finish(now)
                    continue
                lateness = now - due
                if lateness >= self._grid_period:  # whole periods passed: those ticks are missed
                    skipped = int(lateness // self._grid_period)
                    self._missed += skipped
                    k += skipped
                    due = start + k * self._grid_period
                    lateness = now - due
                if lateness > max(LATE_FLOOR_S, LATE_SHARE * self._grid_period):
                    self._late += 1
                self._max_lateness = max(self._max_lateness, lateness)
                if self.lateness_samples is not None:
                    self.lateness_samples.append(lateness)
                if self.faults is not None:  # a bug in the collector itself: the supervisor restarts it
                    await self.faults.hit(self.name, "tick")
                await self._capture_once(due)
                await self._maybe_finish(trio.current_time())
                await self._maybe_fsync()
                k += 1
        finally:
            with trio.move_on_after(FINISH_TIMEOUT_S, shield=True) as scope:
                await self._finish_file()
            if scope.cancelled_caught:
                log.error("could not finish capture file in time; it will be recovered at next start",
                          extra={"actor": self.name})
            if self._stop_requested:
                self.stopped.set()

    async def _sleep_until(self, due: float) -> None:
        deadline = due
        if self._writer is not None and math.isfinite(self._settings.max_file_age_s):
            deadline = min(deadline, self._writer.opened_at + self._settings.max_file_age_s)
        if self._finish_requested or self._regrid or self._stop_requested:
            return
        # One cancel scope, cancelled early by _wake(): cheaper per tick than an Event plus a timeout.
        self._sleep_scope = trio.CancelScope(deadline=deadline)
        with self._sleep_scope:
            await trio.sleep_forever()
        self._sleep_scope = None

    def _wake(self) -> None:
        if self._sleep_scope is not None:
            self._sleep_scope.cancel()

    async def _capture_once(self, due: float) -> None:
        requested_ns = self._wall.ns_at(due)
        try:
            # A bare CancelScope rather than fail_after: this runs at every tick of every collector.
            with trio.CancelScope(deadline=trio.current_time() + self._settings.resource_timeout_s) as timeout:
                if self.faults is not None:
                    await self.faults.hit(self.name, "before_call")
                result = await self._resource.capture(self.plan.method, self.plan.params)
                if self.faults is not None:
                    result = await self.faults.hit(self.name, "after_call", result)
        except Exception as exc:  # a resource error is data about the robot, not a bug in us
            self._count_failure(f"{type(exc).__name__}: {exc}")
            return
        if timeout.cancelled_caught:
            self._count_failure(f"timed out after {self._settings.resource_timeout_s:g} s")
            return
        received_ns = self._wall.now_ns()
        self._errors.ok(self.name, "capture works again", actor=self.name)
        if self.plan.kind is DataKind.TABULAR:
            if not isinstance(result, dict):
                self._count_failure(f"resource returned {type(result).__name__}, expected a dict of readings")
                return
            record = CaptureRecord(requested_ns, received_ns, result)
            header = await self._write(record, "")
            if header is None:
                return  # dropped: the disk refused it
            if self._on_tabular is not None:
                self._on_tabular(header, record)
        else:
            images = result if isinstance(result, list) else [result]
            if not images or not all(isinstance(b, Binary) for b in images):
                self._count_failure("resource returned no binary data")
                return
            for img in images:
                if await self._write(CaptureRecord(requested_ns, received_ns, img.data, img.metadata),
                                     img.mime_type) is None:
                    return  # dropped: the disk refused it
            if self._settings.max_binary_file_bytes <= 0:
                await self._finish_file()
        self._captured += 1
        self._measure_rate()

    def _measure_rate(self) -> None:
        """Captures per second over the last completed window of at least RATE_WINDOW_S."""
        now = trio.current_time()
        if self._rate_t0 is None:
            self._rate_t0, self._rate_c0 = now, self._captured
        elif now - self._rate_t0 >= RATE_WINDOW_S:
            self._measured_hz = (self._captured - self._rate_c0) / (now - self._rate_t0)
            self._rate_t0, self._rate_c0 = now, self._captured

    async def _write(self, record: CaptureRecord, mime_type: str) -> CaptureHeader | None:
        """Append `record` to the open file (opening one if needed); None when the disk refused it."""
        try:
            if self.faults is not None:
                self.faults.hit_sync(self.name, "before_write")
            if self._writer is None:
                self._writer = await self._open_writer(mime_type)
            self._bytes += self._writer.append(record)
            if self.ledger is not None:
                self.ledger[self._writer.header.file_id] += 1
        except RecordRefused as exc:  # a reading no reader (the cloud included) would accept
            self._count_failure(str(exc))
            return None
        except OSError as exc:  # ENOSPC, EIO, ...: the writer cut any partial frame off again
            self._dropped += 1
            self._disk_failed(exc)
            return None
        if self.faults is not None:  # a crash right after a record reached the file
            self.faults.hit_sync(self.name, "after_write")
        self._disk_errors.ok("disk", "capture writes work again", actor=self.name, dropped_total=self._dropped)
        return self._writer.header

    async def _open_writer(self, mime_type: str) -> CaptureWriter:
        """A new capture file, created (header written and fsynced) in a worker thread so that a
        slow disk does not delay this or any other collector's ticks."""
        opened = trio.current_time()
        create = partial(CaptureWriter.create, self._settings.capture_dir, self._header(mime_type),
                         fsync_interval_s=math.inf,  # fsync happens off the event loop, in _maybe_fsync
                         clock=lambda: opened)  # only its opening time matters with no interval fsync
        return await run_blocking(create)

    def _disk_failed(self, exc: OSError) -> None:
        """Log a refused write once per change of state, and retire the open file if it is unusable."""
        reason = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        self._last_error = f"write failed: {exc}"
        self._disk_errors.fail("disk", f"capture file write failed ({reason}); readings are dropped until "
                               "writes work again", actor=self.name, error=str(exc))
        w = self._writer
        if w is not None and (w.record_count == 0 or w.statistics().state != "open"):
            self._writer = None
            self._retire(w)

    def _retire(self, w: CaptureWriter) -> None:
        """Close a writer that cannot go on: drop it if it holds no record, else keep its good prefix
        as a `.capture` file now (or leave the `.prog` for recovery at the next start)."""
        w.close_unfinished()
        try:
            if w.record_count == 0:
                w.path.unlink(missing_ok=True)
            elif w.path.exists():
                recover_prog(w.path)
                self._files_finished += 1
        except OSError as exc:
            log.error("could not close a capture file after a disk error; it is recovered at the next start",
                      extra={"actor": self.name, "path": str(w.path), "error": str(exc)})
        finally:
            self._finished.set()
            self._finished = trio.Event()

    def _header(self, mime_type: str) -> CaptureHeader:
        r = self.plan.resource
        metadata: dict = {}
        if self.plan.retention_policy:
            metadata["retention_policy"] = self.plan.retention_policy
        if r.remote:
            metadata["remote_part"] = r.remote
        return CaptureHeader(
            file_id=new_file_id(),
            part_id=self._settings.part_id,
            resource_type=r.type,
            resource_name=r.name,
            method=self.plan.method,
            params=dict(self.plan.params),
            tags=tuple(self._settings.tags),
            kind=self.plan.kind,
            mime_type=mime_type,
            metadata=metadata,
            created_ns=self._wall.now_ns(),
        )

    async def _maybe_finish(self, now: float) -> None:
        w = self._writer
        if w is None:
            self._finish_requested = False
            return
        limit = self._settings.max_file_bytes if self.plan.kind is DataKind.TABULAR else self._settings.max_binary_file_bytes
        if (
            self._finish_requested
            or (limit > 0 and w.size_bytes >= limit)
            or w.record_count >= MAX_RECORDS_PER_FILE
            or now - w.opened_at >= self._settings.max_file_age_s
        ):
            await self._finish_file()

    async def _maybe_fsync(self) -> None:
        w = self._writer
        now = trio.current_time()
        if w is not None and now - self._last_fsync >= self._settings.fsync_interval_s:
            self._last_fsync = now
            try:
                await run_blocking(w.sync)
            except OSError as exc:  # the kernel may have dropped pages: the writer is broken now
                self._disk_failed(exc)

    async def _finish_file(self) -> None:
        """Finish the open file (fsync, rename to .capture) in a worker thread: a slow disk must not
        hold up this or any other collector's next tick."""
        self._finish_requested = False
        w, self._writer = self._writer, None
        if w is None:
            return
        try:
            path = await run_blocking(w.finish)
        except OSError as exc:
            self._disk_errors.fail("finish", "could not finish a capture file", actor=self.name, error=str(exc))
            self._retire(w)
            return
        finally:
            self._finished.set()
            self._finished = trio.Event()
        self._disk_errors.ok("finish", "capture files finish again", actor=self.name)
        self._files_finished += 1
        log.debug("capture file finished", extra={"actor": self.name, "path": str(path), "records": w.record_count})

    def _count_failure(self, reason: str) -> None:
        self._failed += 1
        self._last_error = reason
        self._errors.fail(self.name, "capture failed", actor=self.name, error=reason)
