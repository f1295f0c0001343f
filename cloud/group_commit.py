"""Group commit: commits that arrive together share one store transaction (and its fsyncs).

A request that wants to commit a file hands its `Commit` to `GroupCommitter.commit` and waits. The
first waiter to get the committer's lock takes every commit queued so far and stores them with one
`Store.commit_many`; commits that arrive meanwhile queue up for the next round, so under load each
round carries everything that came during the previous one, and a lone commit is not delayed at
all (no timer: a round starts as soon as the last one ends). Nobody is answered before the round
holding their commit is durable.

If a round fails, its commits are retried one by one, so one bad file (or a store error about one
row) fails only its own request, never the others that happened to share its round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from capsync.cloud.metrics import CloudMetrics
from capsync.cloud.store import Commit, Store

log = logging.getLogger("capsync.cloud.group_commit")

#: Most commits in one round: a round's transaction stays short, so reads between rounds stay quick.
MAX_ROUND = 256


@dataclass
class _Waiter:
    commit: Commit
    done: bool = False
    new: bool = False
    error: BaseException | None = None


class GroupCommitter:
    """Batches concurrent `commit` calls into `Store.commit_many` rounds (see the module doc)."""

    def __init__(self, store: Store, *, max_round: int = MAX_ROUND, metrics: CloudMetrics | None = None) -> None:
        self._store = store
        self._metrics = metrics
        self._max_round = max_round
        self._queue: list[_Waiter] = []
        self._lock = trio.Lock()
        #: Rounds run and commits they carried, for the cloud's statistics and the benchmark.
        self.rounds = 0
        self.commits = 0

    async def commit(self, c: Commit) -> bool:
        """Store `c` durably (in a round with whatever else is waiting); whether the file was new.

        Shielded from cancellation: once queued, a commit finishes even if its request goes away.
        """
        me = _Waiter(c)
        arrived = time.perf_counter()
        self._queue.append(me)
        with trio.CancelScope(shield=True):
            while not me.done:
                async with self._lock:
                    if not me.done:
                        await self._round()
        if me.error is not None:
            if self._metrics is not None:
                self._metrics.store_errors.labels("commit").inc()
            raise me.error
        if me.new and self._metrics is not None:
            self._metrics.committed(c.file, time.perf_counter() - arrived)
        return me.new

    async def _round(self) -> None:
        batch, self._queue = self._queue[: self._max_round], self._queue[self._max_round:]
        self.rounds += 1
        self.commits += len(batch)
        try:
            results = await self._store.commit_many([w.commit for w in batch])
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                log.warning("a group commit failed; committing its files one by one",
                            extra={"files": len(batch), "error": f"{type(exc).__name__}: {exc}"})
                await self._one_by_one(batch)
        else:
            for w, new in zip(batch, results, strict=True):
                w.new = new
        for w in batch:
            w.done = True

    async def _one_by_one(self, batch: Sequence[_Waiter]) -> None:
        for w in batch:
            try:
                (w.new,) = await self._store.commit_many([w.commit])
            except Exception as exc:
                w.error = exc
