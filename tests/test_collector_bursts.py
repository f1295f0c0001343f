"""High rates, bursts, slow disks and the shared timer, under Trio's virtual clock."""

from __future__ import annotations

import pytest
import trio

from capsync.actors.collector import CATCH_UP_S, Collector
from capsync.runtime.faults import FaultKind, FaultPlan
from capsync.runtime.metronome import Metronome
from tests.helpers import leftover_progs, records_by_method
from tests.test_collector import _blocking_inline, _collector, _run_for  # noqa: F401 (the fixture is autouse)


class Stalling:
    """A sensor whose every `every`-th call takes `stall_s` (virtual) seconds: a loop that falls behind."""

    type, name, model = "sensor", "r", "stalling"

    def __init__(self, every: int, stall_s: float, times: int | None = None) -> None:
        self.every, self.stall_s, self.times = every, stall_s, times
        self.calls = self.stalls = 0

    async def capture(self, method: str, params: dict) -> dict:
        self.calls += 1
        if self.calls % self.every == 0 and (self.times is None or self.stalls < self.times):
            self.stalls += 1
            await trio.sleep(self.stall_s)
        return {"n": self.calls}

    async def close(self) -> None:
        pass


#: _run_for stops 1 ms early; at 1 kHz that is a tick: stop half-way between two ticks instead.
HALF_A_TICK = 0.0005


def _stalling_collector(tmp_path, hz: float, resource: Stalling, **settings) -> Collector:
    c = _collector(tmp_path, "sensor", "Readings", hz, **settings)
    return Collector(c.plan, resource, c._settings, c._wall)


def _gaps(recs) -> set[int]:
    return {b.requested_ns - a.requested_ns for a, b in zip(recs, recs[1:])}


async def test_ticks_a_stall_delays_are_caught_up_in_a_burst_on_the_grid(tmp_path, autojump_clock):
    # 1 kHz; every 100th call stalls 30 ms: the 30 ticks that came due meanwhile are taken at once.
    resource = Stalling(every=100, stall_s=0.030, times=10)  # all in the first second
    c = _stalling_collector(tmp_path, 1000, resource)
    await _run_for(c, 2.0 + HALF_A_TICK)
    (recs,) = records_by_method(tmp_path).values()
    stats = c.statistics()
    assert stats.missed_ticks == 0 and resource.stalls >= 10
    assert len(recs) == stats.captured == 2000  # ticks at 0.000 .. 1.999 s: none missed
    assert _gaps(recs) == {1_000_000}  # requested exactly on the grid, burst or not
    lag = [r.received_ns - r.requested_ns for r in recs]
    assert max(lag) >= 29_000_000  # a burst reading says when it was really taken
    assert min(lag) >= 0


async def test_a_stall_beyond_the_catch_up_window_misses_the_oldest_ticks(tmp_path, autojump_clock):
    resource = Stalling(every=200, stall_s=0.5, times=1)  # one half-second stall, at 1 kHz
    c = _stalling_collector(tmp_path, 1000, resource)
    await _run_for(c, 2.0 + HALF_A_TICK)
    (recs,) = records_by_method(tmp_path).values()
    stats = c.statistics()
    expected_missed = round((0.5 - CATCH_UP_S) * 1000)  # the ticks more than CATCH_UP_S overdue
    assert abs(stats.missed_ticks - expected_missed) <= 1
    assert len(recs) + stats.missed_ticks == 2000
    assert _gaps(recs) == {1_000_000, (stats.missed_ticks + 1) * 1_000_000}  # one hole, on the grid


async def test_ten_kilohertz_takes_every_tick_exactly_on_the_grid(tmp_path, autojump_clock):
    c = _collector(tmp_path, "sensor", "Readings", 10_000, max_file_bytes=1 << 20)
    await _run_for(c, 1.001 + HALF_A_TICK / 10)  # stops at 1.00005 s: ticks 0.0000 .. 1.0000
    (recs,) = records_by_method(tmp_path).values()
    assert len(recs) == 10_001 and _gaps(recs) == {100_000}
    assert c.statistics().missed_ticks == 0


async def test_a_slow_disk_never_delays_a_tick(tmp_path, autojump_clock):
    # Files switch every few readings and finishing each batch of them takes 0.2 s: capture goes on.
    plan = FaultPlan()
    plan.add("collector *", "finish", FaultKind.HANG, seconds=0.2, times=None)
    c = _collector(tmp_path, "sensor", "Readings", 100, max_file_bytes=600)
    c.faults = plan
    await _run_for(c, 5.0)
    stats = c.statistics()
    (recs,) = records_by_method(tmp_path).values()
    assert plan.fired("finish") >= 10 and stats.files_finished >= 50
    assert stats.late_ticks == 0 and stats.missed_ticks == 0 and stats.max_lateness_s == 0
    assert len(recs) == 500 and _gaps(recs) == {10_000_000}
    assert not leftover_progs(tmp_path)  # shutdown waited for every pending finish


async def test_shutdown_waits_for_pending_finishes(tmp_path, autojump_clock):
    plan = FaultPlan()
    plan.add("collector *", "finish", FaultKind.HANG, seconds=1.0, times=None)
    c = _collector(tmp_path, "sensor", "Readings", 50, max_file_bytes=400)
    c.faults = plan
    async with trio.open_nursery() as n:
        await n.start(c.run)
        await trio.sleep(2.0)
        assert c.statistics().files_finished < c.statistics().captured // 3  # most are still pending
        n.cancel_scope.cancel()
    (recs,) = records_by_method(tmp_path).values()
    assert len(recs) == c.statistics().captured and not leftover_progs(tmp_path)


async def test_collectors_due_together_share_one_timer_wakeup(autojump_clock):
    m = Metronome()
    woke: list[float] = []

    async def sleeper(offset: float) -> None:
        s = m.sleeper()
        for k in range(1, 11):
            await s.until(k * 0.1 + offset)
            woke.append(trio.current_time())

    async with trio.open_nursery() as n:
        await n.start(m.run)
        async with trio.open_nursery() as tasks:
            for _ in range(50):
                tasks.start_soon(sleeper, 0.0)
            tasks.start_soon(sleeper, 0.05)
        n.cancel_scope.cancel()
    assert len(woke) == 510
    assert m.wakeups <= 21  # 10 shared instants for the 50, 10 for the other one, and the last cancel


async def test_an_early_wake_returns_before_the_due_time(autojump_clock):
    m = Metronome()
    s = m.sleeper()
    returned: list[float] = []

    async def sleep_long() -> None:
        await s.until(100.0)
        returned.append(trio.current_time())

    async with trio.open_nursery() as n:
        await n.start(m.run)
        n.start_soon(sleep_long)
        await trio.sleep(1.0)
        s.wake()
        await trio.sleep(0.5)
        n.cancel_scope.cancel()
    assert returned == [pytest.approx(1.0)]


class TaskSteps(trio.abc.Instrument):
    """Counts the steps of the tasks running `Collector.run` (a step: the task woke and ran)."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task) -> None:
        if task.name.endswith("Collector.run"):
            self.steps += 1


async def _on_shared_timer(tmp_path, seconds: float, attributes: dict | None = None,
                           also=None) -> tuple[Collector, int]:
    """Run one fake sensor's collector at 100 Hz for `seconds` on a shared timer, with `also(m, c)`
    (if given) started beside it; the collector and its task's steps."""
    m, steps = Metronome(), TaskSteps()
    base = _collector(tmp_path, "sensor", "Readings", 100, attributes=attributes or {})
    c = Collector(base.plan, base._resource, base._settings, base._wall, metronome=m)
    trio.lowlevel.add_instrument(steps)
    try:
        async with trio.open_nursery() as n:
            await n.start(m.run)
            await n.start(c.run)
            if also is not None:
                n.start_soon(also, m, c)
            await trio.sleep(seconds)
            n.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(steps)
    return c, steps.steps


async def _collector_task_steps(tmp_path, **attributes) -> tuple[Collector, int]:
    """Run one fake sensor's collector at 100 Hz for 10 s on a shared timer; its task's steps."""
    return await _on_shared_timer(tmp_path, 10.0 - 1e-3, attributes)


async def test_a_capture_that_never_waits_is_taken_in_the_timer_without_waking_the_collector(tmp_path, autojump_clock):
    c, steps = await _collector_task_steps(tmp_path)
    (recs,) = records_by_method(tmp_path).values()
    assert len(recs) == c.statistics().captured == 1000 and _gaps(recs) == {10_000_000}
    assert steps < 50  # woken for file switches, not for each of the 1,000 readings
    # the same sensor with latency (an awaited capture) wakes the collector for every reading
    slow, slow_steps = await _collector_task_steps(tmp_path / "slow", latency_ms=1)
    assert slow.statistics().captured == 1000 and slow_steps >= 1000


async def test_direct_ticks_count_resource_failures_and_keep_the_schedule(tmp_path, autojump_clock):
    c, steps = await _collector_task_steps(tmp_path, fail_rate=0.5)
    stats = c.statistics()
    assert stats.captured + stats.failed == 1000 and 300 < stats.failed < 700
    assert stats.missed_ticks == 0 and "injected failure" in stats.last_error and steps < 50


async def _behind_timer(tmp_path, clock, hold_s: float) -> tuple[Collector, int]:
    """A 100 Hz fake sensor's collector on a timer that is held up `hold_s` just before ten of its
    ticks (another sleeper's ticker that takes that long); the collector and its task's steps."""
    held = []

    async def holder(m: Metronome, c: Collector) -> None:
        def hold() -> float | None:
            clock.jump(hold_s)
            held.append(trio.current_time())
            return c._due((len(held) + 1) * 100) - 1e-6 if len(held) < 10 else None

        await m.sleeper(hold).until(c._due(100) - 1e-6)

    c, steps = await _on_shared_timer(tmp_path, 12.0, also=holder)
    assert len(held) == 10
    return c, steps


async def test_a_late_tick_alone_is_taken_in_the_timer_and_counted_late(tmp_path, autojump_clock):
    # 4 ms behind: later than the 2 ms bound, but the next tick (10 ms on) is not due yet
    _, on_time_steps = await _behind_timer(tmp_path / "on_time", autojump_clock, 0.0)
    c, steps = await _behind_timer(tmp_path / "late", autojump_clock, 0.004)
    stats = c.statistics()
    assert stats.late_ticks == 10 and stats.missed_ticks == 0
    assert stats.max_lateness_s == pytest.approx(0.004, abs=1e-4)
    assert steps <= on_time_steps + 2  # no wakeup of the collector's task for them
    (recs,) = records_by_method(tmp_path / "late").values()
    assert _gaps(recs) == {10_000_000}


async def test_ticks_that_fell_due_together_go_to_the_collectors_task(tmp_path, autojump_clock):
    # 25 ms behind: three ticks are due at once, a burst that the collector's own task takes
    _, on_time_steps = await _behind_timer(tmp_path / "on_time", autojump_clock, 0.0)
    c, steps = await _behind_timer(tmp_path / "late", autojump_clock, 0.025)
    stats = c.statistics()
    assert stats.late_ticks >= 20 and stats.missed_ticks == 0
    assert steps >= on_time_steps + 10
    (recs,) = records_by_method(tmp_path / "late").values()
    assert _gaps(recs) == {10_000_000}


async def test_a_bug_in_a_ticker_is_raised_in_the_sleepers_task(autojump_clock):
    m = Metronome()

    def broken() -> float | None:
        raise ZeroDivisionError("a bug")

    s = m.sleeper(broken)
    async with trio.open_nursery() as n:
        await n.start(m.run)
        with pytest.raises(ZeroDivisionError):
            await s.until(1.0)
        assert trio.current_time() == pytest.approx(1.0)
        later = m.sleeper()
        await later.until(2.0)  # the timer itself kept running
        n.cancel_scope.cancel()


def test_a_models_broken_sync_capture_falls_back_to_capture(caplog):
    from capsync.runtime.resources.resource import DO_COMMAND, sync_capture_call

    class Model:
        type, name, model = "sensor", "m", "mine"

        def __init__(self, offer) -> None:
            self.offer = offer

        def sync_capture(self, method: str):
            return self.offer(method)

        async def capture(self, method: str, params: dict) -> dict:
            return {}

    def boom(method: str):
        raise KeyError(method)

    def reading(method: str, params: dict) -> dict:
        return {"v": 1}

    assert sync_capture_call(Model(lambda m: reading), "Readings") is reading
    assert sync_capture_call(Model(lambda m: reading), DO_COMMAND) is None  # DoCommand: always awaited
    assert sync_capture_call(Model(lambda m: "not a function"), "Readings") is None
    assert sync_capture_call(Model(boom), "Readings") is None

    class Overrides(Model):  # a new capture without a new sync_capture: the plain function would skip it
        async def capture(self, method: str, params: dict) -> dict:
            return {"mine": True}

    class Forwards:  # a wrapper that forwards everything else to the real resource
        def __init__(self, real) -> None:
            self._real = real

        def __getattr__(self, name):
            return getattr(self._real, name)

        async def capture(self, method: str, params: dict) -> dict:
            return {"wrapped": True}

    patched = Model(lambda m: reading)
    patched.capture = Forwards.capture
    assert sync_capture_call(Overrides(lambda m: reading), "Readings") is None
    assert sync_capture_call(Forwards(Model(lambda m: reading)), "Readings") is None
    assert sync_capture_call(patched, "Readings") is None
    assert "sync_capture failed" in caplog.text and "sensor/m" in str([r.__dict__ for r in caplog.records])


async def test_collectors_of_one_rate_tick_together_in_groups(tmp_path, autojump_clock):
    from capsync.runtime.metronome import PHASE_GROUP, PHASE_SLOT_NS

    m = Metronome()
    base = _collector(tmp_path, "sensor", "Readings", 10)
    n_collectors = 2 * PHASE_GROUP + 10
    cs = [Collector(base.plan, base._resource, base._settings, base._wall, metronome=m) for _ in range(n_collectors)]
    async with trio.open_nursery() as n:
        await n.start(m.run)
        await n.start(cs[0].run)  # the first one sets the shared grid: it starts at once
        await trio.sleep(0.0123)  # off that grid: the others wait for their group's next instant
        for c in cs[1:]:
            await n.start(c.run)
        await trio.sleep(10.0 - 0.0123 - 1e-3)
        n.cancel_scope.cancel()
    (recs,) = records_by_method(tmp_path).values()
    phases = {r.requested_ns % 100_000_000 for r in recs}
    assert phases == {0, PHASE_SLOT_NS, 2 * PHASE_SLOT_NS}  # three groups, a millisecond apart
    assert [c.statistics().captured for c in cs] == [100] + [99] * (n_collectors - 1)  # from 0.1 s (+ phase)
    assert m.wakeups <= 3 * 100 + 2  # one wakeup per group and tick, not one per collector
