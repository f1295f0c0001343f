"""see_through (runtime/see_through.py): a step a stop must not cut in half gets a short grace, no more."""

from __future__ import annotations

import pytest
import trio

from capsync.runtime.see_through import see_through


async def test_without_a_stop_it_is_a_plain_call(autojump_clock):
    async def slow(x: int) -> int:
        await trio.sleep(50)  # longer than any grace: nothing cuts it while nothing stops
        return x * 2

    assert await see_through(slow, 21, grace_s=1.0) == 42

    async def broken() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError):
        await see_through(broken, grace_s=1.0)


async def test_a_stop_lets_the_step_finish_within_its_grace(autojump_clock):
    done: list[float] = []

    async def step() -> None:
        await trio.sleep(1.5)
        done.append(trio.current_time())

    with trio.move_on_after(1.0) as stop:  # the stop comes half-way: 1.5 s < 1.0 s + 2 s of grace
        await see_through(step, grace_s=2.0)
    assert stop.cancelled_caught and done == [pytest.approx(1.5)]


async def test_a_stop_cuts_a_step_slower_than_its_grace(autojump_clock):
    done: list[float] = []

    async def stalled() -> None:
        await trio.sleep(30)  # a stalled network
        done.append(trio.current_time())

    with trio.move_on_after(1.0) as stop:
        await see_through(stalled, grace_s=2.0)
    assert stop.cancelled_caught and not done
    assert trio.current_time() == pytest.approx(3.0)  # the stop waited 2 s of grace, not 29
