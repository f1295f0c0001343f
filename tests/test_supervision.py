"""Supervision runtime: restarts, strategies, intensity, nesting, dynamic children, shutdown.

Every async test runs under the autojump clock, so times asserted here are virtual seconds.
"""

from __future__ import annotations

import itertools
import logging
import math
import random

import pytest
import trio

from capsync.runtime.backoff import Backoff
from capsync.runtime.supervision import (
    ChildSpec,
    ChildStats,
    Restart,
    Strategy,
    Supervisor,
    SupervisorGaveUp,
    shielded_cleanup,
)

STEADY = Backoff(initial=1.0, factor=1.0, cap=30.0, jitter=0.0)  # always 1 s


class Journal:
    """Shared record of what the test actors did, with virtual timestamps."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, float]] = []

    def note(self, event: str, name: str) -> None:
        self.entries.append((event, name, trio.current_time()))

    def times(self, event: str, name: str) -> list[float]:
        return [t for e, n, t in self.entries if e == event and n == name]

    def names(self, event: str, since: float = -math.inf) -> list[str]:
        return [n for e, n, t in self.entries if e == event and t >= since]

    def actor(self, name: str, *script: tuple[str, float], ready_after: float = 0.0,
              cleanup: float = 0.0):
        """An actor whose n-th run follows ``script[n]``: ("crash" | "return", after seconds).

        Runs beyond the script last until cancelled. Notes "start" when called, "end" when a run
        ends for any reason, and "stopped" after a shielded cleanup of ``cleanup`` seconds.
        """
        runs = itertools.count()

        async def run(*, task_status=trio.TASK_STATUS_IGNORED):
            n = next(runs)
            self.note("start", name)
            await trio.sleep(ready_after)
            task_status.started()
            try:
                kind, after = script[n] if n < len(script) else ("forever", math.inf)
                await trio.sleep(after)
                if kind == "crash":
                    raise RuntimeError(f"{name} crash #{n}")
            finally:
                self.note("end", name)
                with trio.CancelScope(shield=True):
                    await trio.sleep(cleanup)
                self.note("stopped", name)

        return run

    def spec(self, name: str, *script: tuple[str, float], backoff: Backoff = STEADY,
             **kwargs) -> ChildSpec:
        actor_kwargs = {k: kwargs.pop(k) for k in ("ready_after", "cleanup") if k in kwargs}
        return ChildSpec(name, self.actor(name, *script, **actor_kwargs), backoff=backoff,
                         **kwargs)


async def run_for(supervisor: Supervisor, seconds: float) -> None:
    with trio.move_on_after(seconds):
        await supervisor.run()


def child_stats(supervisor: Supervisor, name: str) -> ChildStats:
    (stats,) = [c for c in supervisor.statistics().children if c.name == name]
    return stats


async def test_crashed_child_restarts_after_backoff_delays(autojump_clock):
    journal = Journal()
    backoff = Backoff(initial=1.0, factor=2.0, cap=100.0, jitter=0.0)
    sup = Supervisor("top", [journal.spec("a", *[("crash", 0.0)] * 4, backoff=backoff)],
                     max_restarts=10, period=100.0)
    await run_for(sup, 60)
    starts = journal.times("start", "a")
    assert starts == [0.0, 1.0, 3.0, 7.0, 15.0]
    assert [b - a for a, b in itertools.pairwise(starts)] == [backoff.delay(n) for n in range(4)]


async def test_jittered_delays_come_from_the_supervisors_rng(autojump_clock):
    journal = Journal()
    backoff = Backoff(initial=1.0, factor=2.0, cap=100.0, jitter=0.5)
    sup = Supervisor("top", [journal.spec("a", *[("crash", 0.0)] * 3, backoff=backoff)],
                     max_restarts=10, period=100.0, rng=random.Random(42))
    await run_for(sup, 60)
    expected_rng = random.Random(42)
    expected = [backoff.delay(n, expected_rng) for n in range(3)]
    starts = journal.times("start", "a")
    assert [b - a for a, b in itertools.pairwise(starts)] == pytest.approx(expected)
    assert expected != [1.0, 2.0, 4.0]  # jitter really moved them


async def test_backoff_starts_over_after_child_stayed_up_longer_than_cap(autojump_clock):
    journal = Journal()
    backoff = Backoff(initial=1.0, factor=2.0, cap=10.0, jitter=0.0)
    script = [("crash", 0.0), ("crash", 0.0), ("crash", 20.0), ("crash", 0.0)]
    sup = Supervisor("top", [journal.spec("a", *script, backoff=backoff)],
                     max_restarts=10, period=100.0)
    await run_for(sup, 60)
    # Third run is stable (20 s > cap), so the next delays are 1 s and 2 s again, not 4 s and 8 s.
    assert journal.times("start", "a") == [0.0, 1.0, 3.0, 24.0, 26.0]


@pytest.mark.parametrize(
    "restart, outcome, restarted",
    [
        (Restart.PERMANENT, "return", True),
        (Restart.PERMANENT, "crash", True),
        (Restart.TRANSIENT, "return", False),
        (Restart.TRANSIENT, "crash", True),
        (Restart.TEMPORARY, "return", False),
        (Restart.TEMPORARY, "crash", False),
    ],
)
async def test_restart_kinds(autojump_clock, restart, outcome, restarted):
    journal = Journal()
    sup = Supervisor("top", [journal.spec("a", (outcome, 1.0), restart=restart),
                             journal.spec("b")])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(10)
        assert journal.times("start", "a") == ([0.0, 2.0] if restarted else [0.0])
        # A child that is not restarted is removed; its sibling is untouched either way.
        assert sup.child_names() == (["a", "b"] if restarted else ["b"])
        assert journal.times("start", "b") == [0.0]
        assert journal.times("end", "b") == []
        nursery.cancel_scope.cancel()


async def test_more_than_max_restarts_in_period_gives_up(autojump_clock):
    journal = Journal()
    sup = Supervisor("top", [journal.spec("a", *[("crash", 1.0)] * 10), journal.spec("b")],
                     max_restarts=3, period=10.0)
    with pytest.raises(SupervisorGaveUp) as raised, trio.fail_after(60):
        await sup.run()
    assert trio.current_time() == 7.0  # fourth restart, at the crash at 7 s
    assert journal.times("start", "a") == [0.0, 2.0, 4.0, 6.0]
    assert raised.value.supervisor == "top" and raised.value.child == "a"
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert str(raised.value.__cause__) == "a crash #3"
    assert journal.times("stopped", "b") == [7.0]  # siblings are stopped before giving up
    assert sup.statistics().total_restarts == 3


@pytest.mark.parametrize("max_restarts, gives_up", [(2, False), (1, True)])
async def test_restarts_spread_over_time_do_not_give_up(autojump_clock, max_restarts, gives_up):
    journal = Journal()
    quick = Backoff(initial=0.1, factor=1.0, cap=1.0, jitter=0.0)
    sup = Supervisor("top", [journal.spec("a", *[("crash", 6.0)] * 20, backoff=quick)],
                     max_restarts=max_restarts, period=10.0)
    # A crash every ~6 s puts two restarts, never three, in any 10 s.
    if gives_up:
        with pytest.raises(SupervisorGaveUp):
            await run_for(sup, 60)
    else:
        await run_for(sup, 60)
        assert sup.statistics().total_restarts == 9


async def test_nested_supervisor_giving_up_is_a_child_crash_to_its_parent(autojump_clock):
    journal = Journal()
    inner = Supervisor("inner", [journal.spec("a", *[("crash", 1.0)] * 3)],
                       max_restarts=1, period=100.0)
    outer = Supervisor("outer", [ChildSpec("inner", inner.run, backoff=STEADY),
                                 journal.spec("b")])
    async with trio.open_nursery() as nursery:
        await nursery.start(outer.run)
        await trio.sleep(7)
        # a crashes at 1 and 3; inner gives up at 3, outer restarts it at 4 with a fresh
        # restart window, so a's crash at 5 is restarted at 6 rather than given up on.
        assert journal.times("start", "a") == [0.0, 2.0, 4.0, 6.0]
        stats = child_stats(outer, "inner")
        assert stats.restarts == 1 and stats.running
        assert stats.last_error.startswith("SupervisorGaveUp")
        assert stats.last_error_at == 3.0
        assert journal.times("start", "b") == [0.0]
        nursery.cancel_scope.cancel()


async def test_children_can_be_added_and_removed_while_running(autojump_clock):
    journal = Journal()
    sup = Supervisor("dyn", [journal.spec("a")])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)

        await sup.start_child(journal.spec("b", ready_after=5.0))
        assert trio.current_time() == 5.0  # waited until b was ready
        assert sup.child_names() == ["a", "b"] and child_stats(sup, "b").running
        with pytest.raises(ValueError):
            await sup.start_child(journal.spec("a"))

        await sup.stop_child("a")
        assert journal.times("stopped", "a") == [5.0]
        assert not sup.has_child("a") and sup.child_names() == ["b"]
        with pytest.raises(KeyError):
            await sup.stop_child("a")

        await sup.restart_child("b")
        assert journal.times("end", "b") == [5.0]
        assert journal.times("start", "b") == [0.0, 5.0]

        await trio.sleep(20)
        assert journal.times("start", "a") == [0.0]  # a stopped child is never restarted
        assert sup.statistics().total_restarts == 0
        nursery.cancel_scope.cancel()


async def test_stopped_child_waiting_out_its_backoff_is_not_restarted(autojump_clock):
    journal = Journal()
    slow = Backoff(initial=5.0, factor=1.0, cap=30.0, jitter=0.0)
    sup = Supervisor("top", [journal.spec("a", ("crash", 1.0), backoff=slow)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(2)
        await sup.stop_child("a")
        await trio.sleep(10)
        assert journal.times("start", "a") == [0.0]
        assert sup.child_names() == []
        nursery.cancel_scope.cancel()


async def test_interrupted_start_and_restart_leave_consistent_children(autojump_clock):
    journal = Journal()
    sup = Supervisor("top", [journal.spec("a", ready_after=5.0)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        # A start given up by its caller leaves no half-added child behind.
        with trio.move_on_after(2):
            await sup.start_child(journal.spec("b", ready_after=5.0))
        assert sup.child_names() == ["a"]
        # A restart given up by its caller is finished by the supervisor itself.
        with trio.move_on_after(2):
            await sup.restart_child("a")
        assert trio.current_time() == 9.0
        await trio.sleep(6)
        assert journal.times("start", "a") == [0.0, 7.0, 9.0]
        assert child_stats(sup, "a").running
        assert child_stats(sup, "a").last_error is None
        nursery.cancel_scope.cancel()


async def test_cancelling_while_a_child_starts_is_not_a_crash(autojump_clock, caplog):
    journal = Journal()
    sup = Supervisor("top", [journal.spec("a"), journal.spec("b", ready_after=5.0)])
    with caplog.at_level(logging.INFO, logger="capsync.supervision"):
        with trio.move_on_after(2) as cancelled:
            await sup.run()
    assert cancelled.cancelled_caught and trio.current_time() == 2.0
    assert journal.times("stopped", "a") == [2.0]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [c.last_error for c in sup.statistics().children] == [None, None]


async def test_children_added_before_run_start_with_it_in_order(autojump_clock):
    journal = Journal()
    sup = Supervisor("top", [journal.spec("a")])
    await sup.start_child(journal.spec("b"))
    assert journal.names("start") == []
    await run_for(sup, 1)
    assert journal.names("start") == ["a", "b"]


async def test_shutdown_stops_children_one_by_one_in_reverse_start_order(autojump_clock):
    journal = Journal()
    sup = Supervisor("top", [journal.spec(n, cleanup=1.0) for n in "abc"])
    with trio.move_on_after(10) as cancelled:
        await sup.run()
        pytest.fail("run() returned instead of being cancelled")
    assert cancelled.cancelled_caught
    assert journal.names("end") == ["c", "b", "a"]
    # Each child is cancelled only once the one started after it has finished stopping.
    assert [journal.times("end", n) for n in "cba"] == [[10.0], [11.0], [12.0]]
    assert trio.current_time() == 13.0


async def test_shutdown_moves_on_after_a_childs_shutdown_timeout(autojump_clock, caplog):
    journal = Journal()
    sup = Supervisor("top", [journal.spec("a", cleanup=1.0),
                             journal.spec("b", cleanup=3.0, shutdown_timeout=1.0)])
    with caplog.at_level(logging.WARNING, logger="capsync.supervision"):
        await run_for(sup, 10)
    assert journal.times("end", "a") == [11.0]  # not 13: the supervisor stopped waiting for b
    assert journal.times("stopped", "b") == [13.0]
    assert trio.current_time() == 13.0  # but run() still returns only once b is done
    assert any(getattr(r, "actor", None) == "b" and r.levelno == logging.WARNING
               for r in caplog.records)


@pytest.mark.parametrize("needed, finished, ended_at", [(1.0, True, 2.0), (10.0, False, 3.0)])
async def test_shielded_cleanup_runs_on_cancellation_and_is_bounded(
    autojump_clock, needed, finished, ended_at
):
    outcome = {}

    async def writer(*, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with shielded_cleanup(2.0) as cleanup:
                await trio.sleep(needed)
                outcome["finished"] = True
            outcome["timed_out"] = cleanup.cancelled_caught
            outcome["at"] = trio.current_time()

    sup = Supervisor("top", [ChildSpec("writer", writer)])
    await run_for(sup, 1.0)
    assert outcome["at"] == ended_at
    assert outcome.get("finished", False) is finished
    assert outcome["timed_out"] is not finished


async def test_one_for_all_restarts_every_child(autojump_clock):
    journal = Journal()
    sup = Supervisor("top", [journal.spec("a"), journal.spec("b", ("crash", 1.0)),
                             journal.spec("c")], strategy=Strategy.ONE_FOR_ALL)
    await run_for(sup, 5)
    assert journal.names("end")[:3] == ["b", "c", "a"]  # the crash, then the rest in reverse
    assert journal.names("start", since=1.0) == ["a", "b", "c"]
    assert [journal.times("start", n) for n in "abc"] == [[0.0, 2.0]] * 3
    assert [c.restarts for c in sup.statistics().children] == [1, 1, 1]
    assert sup.statistics().total_restarts == 1


async def test_rest_for_one_restarts_the_child_and_those_started_after_it(autojump_clock):
    journal = Journal()
    sup = Supervisor("top", [journal.spec("a"), journal.spec("b", ("crash", 1.0)),
                             journal.spec("c")], strategy=Strategy.REST_FOR_ONE)
    await run_for(sup, 5)
    assert journal.names("end")[:2] == ["b", "c"]
    assert journal.names("start", since=1.0) == ["b", "c"]
    assert journal.times("start", "a") == [0.0]
    assert journal.times("end", "a") == [5.0]  # only at shutdown


async def test_simultaneous_crashes_in_one_for_all_are_one_restart(autojump_clock):
    journal = Journal()
    sup = Supervisor("top", [journal.spec("a", ("crash", 1.0)), journal.spec("b", ("crash", 1.0)),
                             journal.spec("c")], strategy=Strategy.ONE_FOR_ALL, max_restarts=1)
    await run_for(sup, 5)  # would raise SupervisorGaveUp if both crashes counted
    assert [journal.times("start", n) for n in "abc"] == [[0.0, 2.0]] * 3
    assert sup.statistics().total_restarts == 1


async def test_group_restart_drops_temporary_siblings(autojump_clock):
    journal = Journal()
    sup = Supervisor("top", [journal.spec("a", ("crash", 1.0)),
                             journal.spec("t", restart=Restart.TEMPORARY)],
                     strategy=Strategy.ONE_FOR_ALL)
    await run_for(sup, 5)
    assert journal.times("start", "t") == [0.0]
    assert journal.times("end", "t") == [1.0]
    assert journal.times("start", "a") == [0.0, 2.0]


async def test_statistics_count_restarts_and_last_error(autojump_clock):
    journal = Journal()
    sup = Supervisor("top", [journal.spec("a", ("crash", 1.0), ("crash", 2.0)), journal.spec("b")])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(1.5)  # a crashed at 1, restarts at 2
        assert child_stats(sup, "a") == ChildStats("a", False, 1, "RuntimeError: a crash #0", 1.0)
        await trio.sleep(10)  # a crashed again at 4, restarted at 5
        assert sup.statistics().name == "top"
        assert sup.statistics().children == (
            ChildStats("a", True, 2, "RuntimeError: a crash #1", 4.0),
            ChildStats("b", True, 0, None, None),
        )
        assert sup.statistics().total_restarts == 2
        nursery.cancel_scope.cancel()


async def test_child_ending_before_started_is_restarted_not_an_error(autojump_clock):
    starts = []

    async def impatient(*, task_status=trio.TASK_STATUS_IGNORED):
        starts.append(trio.current_time())
        if len(starts) == 1:
            raise RuntimeError("failed during startup")

    sup = Supervisor("top", [ChildSpec("x", impatient, backoff=STEADY)], max_restarts=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)  # does not raise though x never called started()
        await trio.sleep(5.5)
        assert starts == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        nursery.cancel_scope.cancel()


async def test_crash_is_logged_with_the_actor_name(autojump_clock, caplog):
    journal = Journal()
    sup = Supervisor("top", [journal.spec("a", ("crash", 1.0))])
    with caplog.at_level(logging.INFO, logger="capsync.supervision"):
        await run_for(sup, 3)
    (crash,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert crash.name == "capsync.supervision"
    assert crash.actor == "a" and crash.supervisor == "top"
    assert str(crash.exc_info[1]) == "a crash #0"


async def test_wait_started_returns_once_every_child_is_ready(autojump_clock):
    journal = Journal()
    sup = Supervisor("top", [journal.spec("a", ready_after=3.0)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await sup.wait_started()
        assert trio.current_time() == 3.0
        with pytest.raises(RuntimeError):
            await sup.run()
        nursery.cancel_scope.cancel()


def test_duplicate_child_names_are_rejected():
    journal = Journal()
    with pytest.raises(ValueError):
        Supervisor("top", [journal.spec("a"), journal.spec("a")])


def test_shielded_cleanup_is_a_shielded_deadline():
    scope = shielded_cleanup(2.0)
    assert scope.shield and scope.relative_deadline == 2.0
