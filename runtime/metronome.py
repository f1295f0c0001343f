"""One timer for many tasks that wake at their own times: the collectors' tick scheduler.

A Trio task that sleeps with `trio.sleep_until` pays for a cancel scope and a deadline of its own
at every wakeup (about 12 us on a small board, more than encoding and writing a reading). A
`Metronome` keeps every sleeper's due time in one heap and one task, `run()`, sleeps until the
earliest and reschedules every sleeper that is due; a sleeper parks with
`trio.lowlevel.wait_task_rescheduled`, which costs no cancel scope. Sleepers due within the same
millisecond share one wakeup of the timer (epoll cannot wake more precisely than that anyway).

A sleeper may bring a *ticker*: a plain function the timer calls when the sleeper is due, in the
timer's own task, instead of waking the sleeper's task. It returns when it is due next (the task
stays parked: no task switch at all), or None to wake the task after all. An exception it raises
is raised in the sleeper's task. Collectors use this for readings that need no waiting.

The heap lives in the object, not in the task: if `run()` is restarted, sleepers stay parked and
the new run wakes them. A sleeper that is cancelled (shutdown, a reload) leaves the heap at once.
"""

from __future__ import annotations

import heapq
import math
from itertools import count
from typing import Callable

import outcome
import trio

#: Collectors of one period share a phase in groups of this many (see Metronome.first_tick): one
#: wakeup for a group costs less than a wakeup each, and a group small enough is taken in one
#: pass well within the lateness bound.
PHASE_GROUP = 25
#: Phases of successive groups are this far apart (the resolution of a timer wakeup).
PHASE_SLOT_NS = 1_000_000
#: A sleeper's ticker: takes its due tick in the timer's task; returns the next due time, or None.
Ticker = Callable[[], "float | None"]


class Alarm:
    """One parked sleeper's task (None once it was woken or left) and its ticker, if any."""

    __slots__ = ("task", "ticker")

    def __init__(self, task: trio.lowlevel.Task, ticker: Ticker | None) -> None:
        self.task: trio.lowlevel.Task | None = task
        self.ticker = ticker


class Metronome:
    """Wakes many tasks at their own due times from one timer task (see the module docstring).

    `run()` must be running (e.g. as a child of the agent's supervisor) for sleepers to wake.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Alarm]] = []  # (due, sequence number, alarm): compared in C
        self._seq = count()
        self._timer: trio.CancelScope | None = None
        self._phases: dict[int, int] = {}  # grid step (ns) -> first ticks handed out for it
        self._origin: float | None = None  # Trio time of the first first_tick(): the shared grid's 0
        self.wakeups = 0  # timer wakeups, for benchmarks and tests

    def first_tick(self, period_s: float, now: float) -> tuple[float, int]:
        """Where a new grid of `period_s` starts: (start, k) such that its ticks are due at
        start + j * period_s and its first one, tick k, is the first at or after `now`.

        Grids of one period share instants: the first PHASE_GROUP of them tick together, the next
        group PHASE_SLOT_NS later, and so on round the period; all share `start`, so their due
        times are equal to the last bit. A grid started with the first one (an agent's start)
        starts at once, one started later waits at most a period. Grids slower than 1 Hz start on
        the next whole second from the first grid (their own phase); they are too slow to matter."""
        if self._origin is None:
            self._origin = now
        key = round(period_s * 1e9)
        n = self._phases.get(key, 0)
        self._phases[key] = n + 1
        step = min(period_s, 1.0)
        slots = max(1, round(step * 1e9) // PHASE_SLOT_NS)
        start = self._origin + (n // PHASE_GROUP) % slots * PHASE_SLOT_NS / 1e9
        k = max(0, math.ceil((now - start) / step - 1e-9))
        return (start, k) if period_s <= 1.0 else (start + k * step, 0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wake sleepers as they come due, until cancelled."""
        task_status.started()
        heap = self._heap
        seq = self._seq
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                alarm = heap[0][2]
                if alarm.task is not None and alarm.ticker is not None:
                    try:
                        due = alarm.ticker()
                    except Exception as exc:  # a bug in the ticker: its own task raises it
                        due, result = None, outcome.Error(exc)
                    else:
                        result = outcome.Value(None)
                    if due is not None and alarm.task is not None:
                        heapq.heapreplace(heap, (due, next(seq), alarm))
                        continue
                else:
                    result = outcome.Value(None)
                heapq.heappop(heap)
                if alarm.task is not None:
                    task, alarm.task = alarm.task, None
                    trio.lowlevel.reschedule(task, result)
            while heap and heap[0][2].task is None:  # woken early or left: drop before sleeping on it
                heapq.heappop(heap)
            self._timer = trio.CancelScope(deadline=heap[0][0] if heap else math.inf)
            try:
                with self._timer:
                    await trio.sleep_forever()
            finally:
                self._timer = None
            self.wakeups += 1

    def sleeper(self, ticker: Ticker | None = None) -> Sleeper:
        """A place for one task in this metronome's heap, with its ticker (see the module docstring)."""
        return Sleeper(self, ticker)

    def _park(self, due: float, alarm: Alarm) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), alarm))
        timer = self._timer
        if timer is not None and due < timer.deadline:
            timer.deadline = due


class Sleeper:
    """One task's way to sleep on a Metronome: `await until(due)`, cut short by `wake()`."""

    __slots__ = ("_metronome", "_alarm", "_ticker")

    def __init__(self, metronome: Metronome, ticker: Ticker | None = None) -> None:
        self._metronome = metronome
        self._alarm: Alarm | None = None
        self._ticker = ticker

    async def until(self, due: float) -> None:
        """Park the calling task until `due` (Trio time) or until wake(). Cancellation (and only
        that) raises, and so does the ticker's exception; the caller checks the time to tell the due
        time from a wake()."""
        alarm = self._alarm = Alarm(trio.lowlevel.current_task(), self._ticker)
        self._metronome._park(due, alarm)

        def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
            alarm.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        try:
            await trio.lowlevel.wait_task_rescheduled(abort)
        finally:
            self._alarm = None

    def wake(self) -> None:
        """Wake the task now if it is parked in until() (a request arrived); else nothing."""
        alarm = self._alarm
        if alarm is not None and alarm.task is not None:
            task, alarm.task = alarm.task, None
            trio.lowlevel.reschedule(task)
