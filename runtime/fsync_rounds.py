"""One fsync round per interval for every collector's open capture file.

The power-loss bound (`fsync_interval_secs`) needs every open capture file fsynced at least that
often. Done per collector, 100 collectors cost 100 worker-thread hops and 100 timer wakeups a
second, each more than a reading costs. `FsyncRounds` does it for all of them at once: at every
multiple of the interval one task asks each registered owner for its open file (`claim_sync()`;
an owner answers None when nothing was appended since the last fsync, or when the file is being
finished), fdatasyncs all of them in one worker-thread call, and hands each back with the outcome
(`release_sync(writer, error)`). An owner must not finish (close) a claimed file before it is
released; CaptureFiles waits for that.

A byte appended at time t is fsynced by the first round after t, and that round must be done
within the interval: so rounds start early, every interval minus a margin of ROUND_MARGIN of it
or twice the time the last round took (whichever is more, at most half the interval). A disk
whose fsyncs suddenly take longer than that margin can still stretch the bound by the difference.
Owners with different intervals are grouped, one round each.
Under `without_fsync()` (the simulation) no round is scheduled at all.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

import trio

from capsync.runtime.blocking import durable_writes, run_blocking
from capsync.runtime.capture_writer import CaptureWriter

log = logging.getLogger("capsync.collector")


class SyncOwner(Protocol):
    """What FsyncRounds needs of the owner of an open capture file (actors/capture_files.py)."""

    def claim_sync(self) -> CaptureWriter | None:
        """The open file if it has bytes not fsynced yet (it must stay open until released), else None."""

    def release_sync(self, writer: CaptureWriter, error: BaseException | None) -> None:
        """`writer` was fsynced (`error` None) or its fsync failed with `error`."""


#: Rounds start at least this share of the interval early, so that they are done within it.
ROUND_MARGIN = 0.1


class _Group:
    """The owners that share one interval, and when their next round is due."""

    __slots__ = ("interval", "owners", "due", "took")

    def __init__(self, interval: float, now: float) -> None:
        self.interval = interval
        self.owners: dict[SyncOwner, None] = {}  # insertion-ordered set
        self.took = 0.0  # how long the last round took
        self.due = now + self.period()

    def period(self) -> float:
        """Time from one round to the next: the interval, less the margin a round needs."""
        return self.interval - min(self.interval / 2, max(ROUND_MARGIN * self.interval, 2 * self.took))


class FsyncRounds:
    """Fsyncs every registered owner's open file once per interval, in one thread call per round.

    `run()` must be running (a child of the agent's supervisor, or of a collector that has no
    shared one). Registration outlives a restart of `run()`.
    """

    def __init__(self) -> None:
        self._groups: dict[float, _Group] = {}
        self._poke = trio.Event()
        self.rounds = 0  # rounds that fsynced at least one file, for tests and benchmarks

    def register(self, owner: SyncOwner, interval_s: float) -> None:
        """Fsync `owner`'s open file every `interval_s` from now on (math.inf: never)."""
        if not durable_writes() or not math.isfinite(interval_s):
            return
        group = self._groups.get(interval_s)
        if group is None:
            group = self._groups[interval_s] = _Group(interval_s, trio.current_time())
            self._poke.set()
        group.owners[owner] = None

    def unregister(self, owner: SyncOwner) -> None:
        """No more rounds for `owner` (a claim in progress is still released)."""
        for interval, group in list(self._groups.items()):
            group.owners.pop(owner, None)
            if not group.owners:
                del self._groups[interval]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the rounds as they come due, until cancelled."""
        task_status.started()
        while True:
            now = trio.current_time()
            for group in list(self._groups.values()):
                if group.due <= now:
                    start = trio.current_time()  # after any other group's round in this pass
                    await self._round(list(group.owners))
                    group.took = trio.current_time() - start
                    group.due = start + group.period()
            self._poke = trio.Event()
            wake = min((g.due for g in self._groups.values()), default=math.inf)
            with trio.move_on_at(wake):
                await self._poke.wait()

    async def _round(self, owners: list[SyncOwner]) -> None:
        """Claim every owner's open file, fsync them together, release each with its outcome."""
        claimed = [(o, w) for o in owners if (w := o.claim_sync()) is not None]
        if not claimed:
            return
        self.rounds += 1
        outcomes: list[BaseException | None] = [None] * len(claimed)
        try:
            outcomes = await run_blocking(_sync_all, [w for _, w in claimed])
        finally:  # cancelled before the thread ran: nothing is broken, the next round (or finish) syncs
            for (owner, w), outcome in zip(claimed, outcomes, strict=True):
                owner.release_sync(w, outcome)


def _sync_all(writers: list[CaptureWriter]) -> list[BaseException | None]:
    """fdatasync each writer; the error of each one that failed (OSError, or ValueError if closed)."""
    out: list[BaseException | None] = []
    for w in writers:
        try:
            w.sync()
            out.append(None)
        except (OSError, ValueError) as exc:
            out.append(exc)
    return out
