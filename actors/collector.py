"""The collector: captures one capture method of one resource at a fixed rate into capture files.

One collector runs per enabled capture method. Tick k is due at `start + k / f` (no drift); its
`requested` time is exactly on that grid in integer nanoseconds. `start` comes from the Metronome
(`first_tick`): collectors of one rate tick at shared instants, in groups one millisecond apart,
so they share the timer's wakeups and passes instead of each waking it at an instant of its own.
Collectors started with the agent start at once; one started later (a reload) waits at most one
period (one second for rates below 1 Hz) for its group's next instant. Collectors sleep on the
agent's Metronome (one timer for all of them). At each wakeup a collector captures every tick that is
due (a burst): at rates above what one wakeup per reading can keep (about 1 kHz), each wakeup
takes several readings, each with its own grid time as `requested` and its real `received` time.
A tick overdue by more than `catch_up_s` (max(CATCH_UP_S, one period)) is missed and counted; a
tick captured more than max(LATE_FLOOR_S, LATE_SHARE of a period) after its due time is late.
A long burst yields to other tasks every BURST_SLICE_S, so a fast collector cannot hold up others.

Direct ticks: when the resource offers a capture that never waits (resource.sync_capture_call,
e.g. the fake models) and no fault rule is armed, a tabular tick that is on time (even within a
burst) or late but the only one due is taken right in the Metronome's task (`_tick_direct`),
without waking the collector's task: a task switch and a sleep per reading are more than the
reading costs. Anything else (a late burst, a file switch, a stop or rate change, a disk that
refused a write) hands the tick back to the collector's task, which takes it the usual way. A
bug in a direct tick is raised in the collector's task, so its supervisor restarts it as for any
other failure.

A resource call that raises or times out is logged (once per change of error) and counted; the
collector keeps its schedule. A resource that answers NoCapture ("nothing to capture this time",
e.g. a filtered camera that declined the frame) is counted as skipped: nothing is written or
logged, and that is not a failure. A binary result with an `age_s` (a frame taken earlier) is
written with its requested and received times moved back by that much. Writing is
actors/record_writing.py's: files are opened ahead, fsynced and finished in the background, so a
file switch never delays a tick; they finish by size, by age, on request (sync pass) and at
shutdown; a write the disk refuses drops that reading and is counted.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable

import trio

from capsync.actors.record_writing import RecordWriting
from capsync.runtime.capture_file import CaptureHeader, CaptureWriter, new_file_id
from capsync.runtime.config import CaptureMethodPlan
from capsync.runtime.faults import FaultPlan
from capsync.runtime.fsync_rounds import FsyncRounds
from capsync.runtime.logs import StateChangeLog
from capsync.runtime.metronome import Metronome
from capsync.runtime.resources.methods import DataKind
from capsync.runtime.resources.resource import (
    MAX_AGE_S, Binary, NoCapture, Resource, capture_call, sync_capture_call,
)
from capsync.runtime.wallclock import WallClock

log = logging.getLogger("capsync.collector")

#: A tick is late when it starts more than this share of its period after its scheduled time.
LATE_SHARE = 0.1
#: ... but never counts as late below this many seconds (scheduler jitter at very high rates).
LATE_FLOOR_S = 0.002
#: A burst captures ticks overdue by up to this long (or one period, if longer); older ones are missed.
CATCH_UP_S = 0.1
#: A burst yields to other tasks after this long of back-to-back readings.
BURST_SLICE_S = 0.002
#: A resource call is abandoned after resource_timeout_s, or at most this share of it later (the
#: timeout's deadline is moved only every tenth of the timeout: a deadline per call costs more than a reading).
TIMEOUT_SLACK = 0.1
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
    skipped: int = 0  # ticks the resource answered "nothing to capture this time" (NoCapture)


def collector_name(plan: CaptureMethodPlan) -> str:
    """The actor name of the collector for `plan`, e.g. `collector board/b/Analogs(reader_name=A1)`."""
    r = plan.resource
    where = f"{r.remote}:" if r.remote else ""
    params = ",".join(f"{k}={v}" for k, v in sorted(plan.params.items()))
    return f"collector {where}{r.type}/{r.name}/{plan.method}" + (f"({params})" if params else "")


class Collector:
    """Captures `plan.method` of `resource` at `plan.frequency_hz` into capture files.

    `on_tabular` (optional) is handed every tabular reading as (header, requested_ns, received_ns,
    payload) after it was written to the capture file; the MongoDB sink uses it. It must not
    block. `metronome` is the agent's shared timer and `fsync_rounds` its shared fsync of open
    files; without them the collector runs its own.
    """

    def __init__(
        self,
        plan: CaptureMethodPlan,
        resource: Resource,
        settings: CollectorSettings,
        wall: WallClock,
        on_tabular: Callable[[CaptureHeader, int, int, dict], None] | None = None,
        metronome: Metronome | None = None,
        fsync_rounds: FsyncRounds | None = None,
    ) -> None:
        self.plan = plan
        self.name = collector_name(plan)
        self._resource = resource
        self._call = capture_call(resource, plan.method)  # resource.capture, or its do_command
        self._call_now = (sync_capture_call(resource, plan.method)  # a capture that never waits, if any
                          if plan.kind is DataKind.TABULAR else None)
        self._settings = settings
        self._wall = wall
        self._on_tabular = on_tabular
        self._metronome = metronome
        self._fsync_rounds = fsync_rounds
        self._size_limit = (settings.max_file_bytes if plan.kind is DataKind.TABULAR
                            else settings.max_binary_file_bytes)
        self._out = RecordWriting(self.name, settings.capture_dir, self._header,
                                  fsync_interval_s=settings.fsync_interval_s,
                                  max_file_age_s=settings.max_file_age_s, max_file_bytes=self._size_limit,
                                  on_refused=self._count_failure, on_error=self._note_error)
        self._files = self._out.files
        self._set_grid(plan.frequency_hz)
        self._k = 0  # index of the next tick on the grid
        self._start = 0.0
        self._start_ns = 0
        self._regrid_hz: float | None = None
        self._errors = StateChangeLog(log)
        self._failing = False
        self._skipped = 0
        self._captured = self._failed = self._late = self._missed = 0
        self._max_lateness = 0.0
        self._last_error: str | None = None
        self._sleeper = None
        self._call_scope: trio.CancelScope | None = None
        self._in_call = False
        self._stop_requested = False
        #: Set once the collector has stopped after `request_stop()`.
        self.stopped = trio.Event()
        self._rate_t0: float | None = None  # start of the current rate window
        self._rate_c0 = 0
        self._measured_hz: float | None = None
        self._faults: FaultPlan | None = None
        #: When set to a list, the lateness (s) of every tick is appended to it (benchmarks).
        self.lateness_samples: list[float] | None = None

    @property
    def faults(self) -> FaultPlan | None:
        """Fault injection (tests): points tick, before_call, after_call, before_write, after_write,
        and finish (in the background, before files are finished; taken up when `run()` starts)."""
        return self._faults

    @faults.setter
    def faults(self, plan: FaultPlan | None) -> None:
        self._faults = self._out.faults = plan

    @property
    def ledger(self) -> Counter[str] | None:
        """When set (simulation), counts the records appended per file id."""
        return self._out.ledger

    @ledger.setter
    def ledger(self, ledger: Counter[str] | None) -> None:
        self._out.ledger = ledger

    def _set_grid(self, hz: float) -> None:
        """Period of the grid, as a float (for due times) and as an exact fraction of nanoseconds."""
        rate = Fraction(hz).limit_denominator(1_000_000)
        self._period = 1.0 / hz
        self._ns_num, self._ns_den = 10**9 * rate.denominator, rate.numerator  # period_ns = num / den
        self._catch_up = max(CATCH_UP_S, self._period)
        self._late_after = max(LATE_FLOOR_S, LATE_SHARE * self._period)

    # -- control -------------------------------------------------------------------------

    def set_frequency(self, hz: float) -> None:
        """Change the capture rate; it takes effect at the next tick and keeps the open file."""
        if hz <= 0:
            raise ValueError(f"capture frequency must be > 0 Hz, not {hz}")
        self._regrid_hz = hz
        self._rate_t0, self._measured_hz = None, None
        self.plan = replace(self.plan, frequency_hz=hz)
        self._wake()

    def request_stop(self) -> None:
        """Ask the collector to stop after the capture in progress, finishing its file; `stopped` is
        set when it has. Unlike cancellation, no reading that is being taken is lost."""
        self._stop_requested = True
        self._wake()

    async def finish_open_file(self) -> None:
        """Finish the open file, if any, and wait until it (and every file retired before it) is finished."""
        await self._files.finish_open_file()

    def statistics(self) -> CollectorStats:
        """Counters since this collector started."""
        w = self._files.writer
        return CollectorStats(
            name=self.name,
            target_hz=self.plan.frequency_hz,
            measured_hz=self._measured_hz,
            captured=self._captured,
            failed=self._failed,
            late_ticks=self._late,
            missed_ticks=self._missed,
            max_lateness_s=self._max_lateness,
            files_finished=self._files.files_finished,
            bytes_written=self._out.bytes,
            open_file=str(w.path) if w is not None else None,
            last_error=self._last_error,
            dropped=self._out.dropped,
            skipped=self._skipped,
        )

    # -- the actor -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Capture until cancelled or stopped, then finish every file (shielded, time-bounded)."""
        self._files.faults = self._faults
        async with trio.open_nursery() as background:
            rounds = self._fsync_rounds
            if rounds is None:
                rounds = FsyncRounds()
                await background.start(rounds.run)
            await background.start(self._files.run, rounds)
            metronome = self._metronome
            if metronome is None:
                metronome = Metronome()
                await background.start(metronome.run)
            self._sleeper = metronome.sleeper(self._tick_direct if self._call_now is not None else None)
            self._start, self._k = metronome.first_tick(self._period, trio.current_time())  # module docstring
            self._start_ns = self._wall.ns_at(self._start)
            task_status.started()
            try:
                while not self._stop_requested:
                    # One cancel scope for many calls: it is the resource timeout (see _capture_once),
                    # entered again only after it fired.
                    with trio.CancelScope() as self._call_scope:
                        await self._capture_loop()
                    if self._call_scope.cancelled_caught and self._in_call:
                        self._in_call = False
                        self._count_failure(f"timed out after {self._settings.resource_timeout_s:g} s")
                        self._k += 1
            finally:
                with trio.move_on_after(FINISH_TIMEOUT_S, shield=True) as scope:
                    await self._files.close()
                if scope.cancelled_caught:
                    log.error("could not finish capture file in time; it will be recovered at next start",
                              extra={"actor": self.name})
                background.cancel_scope.cancel()
        if self._stop_requested:
            self.stopped.set()

    async def _capture_loop(self) -> None:
        """Sleep until the next tick is due, then capture every due tick (a burst)."""
        clock = trio.lowlevel.current_clock()
        sleeper = self._sleeper
        slice_end = -math.inf
        while not self._stop_requested:
            if self._regrid_hz is not None:
                self._regrid(clock.current_time())
            k = self._k
            due = self._due(k)
            now = clock.current_time()
            if now < due:
                await sleeper.until(due)
                slice_end = clock.current_time() + BURST_SLICE_S
                continue  # woken at the due time, or early by a request: look again
            overdue = now - due
            if overdue > self._catch_up:  # too far behind to catch up: those ticks are missed
                skipped = math.ceil((overdue - self._catch_up) / self._period)
                self._missed += skipped
                self._k = k = k + skipped
                due = self._due(k)
                overdue = now - due
            self._note_lateness(overdue)
            if self._faults is not None:  # a bug in the collector itself: the supervisor restarts it
                await self._faults.hit(self.name, "tick")
            await self._capture_once(self._requested_ns(k), now)
            self._k = k + 1
            if now > slice_end:  # a long burst: let other collectors take their ticks
                await trio.lowlevel.checkpoint()
                slice_end = clock.current_time() + BURST_SLICE_S

    def _note_lateness(self, overdue: float) -> None:
        """Count a tick taken `overdue` seconds after its due time (late ticks, worst, samples)."""
        if overdue > self._late_after:
            self._late += 1
        if overdue > self._max_lateness:
            self._max_lateness = overdue
        if self.lateness_samples is not None:
            self.lateness_samples.append(overdue)

    def _tick_direct(self) -> float | None:
        """Take the due tick here, in the Metronome's task, if it needs no waiting; returns when the
        next tick is due, or None to hand this one to the collector's task.

        On-time ticks are taken here even when several are due (a fast sensor's burst: the timer
        takes them in due order, interleaved with other collectors'), and so is a late tick that
        is the only one due: were it handed to the task, its task switch would make the next group
        of collectors later still. A late burst (catching up after a stall) goes to the task, which
        yields to other tasks as it goes."""
        w = self._files.writer
        if (w is None or self._stop_requested or self._regrid_hz is not None or self._out.disk_failing
                or (self._faults is not None and self._faults.rules)):
            return None
        k = self._k
        due = self._due(k)
        now = trio.current_time()
        if now < due:
            return due
        nxt = self._due(k + 1)
        overdue = now - due
        if now >= nxt and overdue > self._late_after:  # a late burst
            return None
        self._note_lateness(overdue)
        self._k = k + 1
        try:
            result = self._call_now(self.plan.method, self.plan.params)
        except NoCapture:
            self._skipped += 1
        except Exception as exc:  # a resource error is data about the robot, not a bug in us
            self._count_failure(f"{type(exc).__name__}: {exc}")
        else:
            self._take_tabular(w, self._requested_ns(k), self._wall.now_ns(), result, now)
        return nxt

    def _due(self, k: int) -> float:
        """Trio time at which tick `k` is due."""
        return self._start + k * self._ns_num / self._ns_den / 1e9

    def _requested_ns(self, k: int) -> int:
        """Tick `k`'s `requested` time: exactly on the grid, in integer wall-clock nanoseconds."""
        return self._start_ns + k * self._ns_num // self._ns_den

    def _regrid(self, now: float) -> None:
        """A new rate: a new grid through the last tick taken, from its next tick not in the past."""
        hz, self._regrid_hz = self._regrid_hz, None
        assert hz is not None
        if self._k > 0:
            last = self._k - 1
            self._start_ns += last * self._ns_num // self._ns_den
            self._start += last * self._ns_num / self._ns_den / 1e9
        self._set_grid(hz)
        self._k = max(1 if self._k > 0 else 0, math.ceil((now - self._start) / self._period - 1e-9))

    def _wake(self) -> None:
        if self._sleeper is not None:
            self._sleeper.wake()

    async def _capture_once(self, requested_ns: int, now: float) -> None:
        """Take one reading for the tick requested at `requested_ns` and write it."""
        timeout = self._settings.resource_timeout_s
        scope = self._call_scope
        if scope is not None and not now + timeout <= scope.deadline <= now + timeout * (1 + TIMEOUT_SLACK):
            scope.deadline = now + timeout * (1 + TIMEOUT_SLACK)
        self._in_call = True
        try:
            if self._faults is not None:
                await self._faults.hit(self.name, "before_call")
            result = await self._call(self.plan.method, self.plan.params)
            if self._faults is not None:
                result = await self._faults.hit(self.name, "after_call", result)
        except NoCapture:  # the resource had nothing to capture this time: not a failure
            self._in_call = False
            self._skipped += 1
            return
        except Exception as exc:  # a resource error is data about the robot, not a bug in us
            self._in_call = False
            self._count_failure(f"{type(exc).__name__}: {exc}")
            return
        self._in_call = False
        received_ns = self._wall.now_ns()
        if self.plan.kind is DataKind.TABULAR:
            w = await self._out.writer_for("")
            if w is not None:  # else dropped: the disk refused to open a file
                self._take_tabular(w, requested_ns, received_ns, result, now)
            return
        self._capture_works()
        images = result if isinstance(result, list) else [result]
        if not images or not all(isinstance(b, Binary) for b in images):
            self._count_failure("resource returned no binary data")
            return
        for img in images:
            age = img.age_s  # a frame taken earlier gets its own times (an absurd age is ignored)
            back = round(age * 1e9) if 0.0 < age <= MAX_AGE_S else 0
            w = await self._out.writer_for(img.mime_type)
            if w is None or not self._out.append(w, requested_ns - back, received_ns - back, img.data, img.metadata):
                return  # dropped: the disk refused it
        if self._size_limit <= 0:  # one capture per file
            self._files.retire()
        self._captured += 1
        self._measure_rate(now)

    def _capture_works(self) -> None:
        if self._failing:
            self._failing = False
            self._errors.ok(self.name, "capture works again", actor=self.name)

    def _take_tabular(self, w: CaptureWriter, requested_ns: int, received_ns: int, result: object,
                      now: float) -> None:
        """Write the tabular reading `result` of the tick requested at `requested_ns` to `w`."""
        self._capture_works()
        if type(result) is not dict and not isinstance(result, dict):
            self._count_failure(f"resource returned {type(result).__name__}, expected a dict of readings")
            return
        if not self._out.append(w, requested_ns, received_ns, result, None):
            return  # dropped: the disk refused it
        if self._on_tabular is not None:
            self._on_tabular(w.header, requested_ns, received_ns, result)
        self._captured += 1
        self._measure_rate(now)

    def _measure_rate(self, now: float) -> None:
        """Captures per second over the last completed window of at least RATE_WINDOW_S."""
        if self._rate_t0 is None:
            self._rate_t0, self._rate_c0 = now, self._captured
        elif now - self._rate_t0 >= RATE_WINDOW_S:
            self._measured_hz = (self._captured - self._rate_c0) / (now - self._rate_t0)
            self._rate_t0, self._rate_c0 = now, self._captured

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
            tags=tuple(self._settings.tags if self.plan.tags is None else self.plan.tags),
            kind=self.plan.kind,
            mime_type=mime_type,
            metadata=metadata,
            created_ns=self._wall.now_ns(),
        )

    def _note_error(self, reason: str) -> None:
        self._last_error = reason

    def _count_failure(self, reason: str) -> None:
        self._failed += 1
        self._last_error = reason
        self._failing = True
        self._errors.fail(self.name, "capture failed", actor=self.name, error=reason)
