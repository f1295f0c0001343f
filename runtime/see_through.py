"""Finishing a step that must not be cut in half, without letting it hold up a stop for long.

A commit the cloud has received is finished there whatever we do, and deleting the local copy
right after it is what keeps the next start from declaring the file again. Shielding such a
step from cancellation outright lets a stalled network hold up the agent's stop for as long as
the request may take (30 s), far past the supervisor's shutdown timeout. `see_through` runs it
unshielded in effect while nothing is stopping, and once a cancellation arrives from outside it
gives the step `grace_s` more seconds to finish before it is cancelled too.
"""

from __future__ import annotations

from typing import Awaitable, Callable, TypeVar

import outcome
import trio

T = TypeVar("T")


async def see_through(fn: Callable[..., Awaitable[T]], *args: object, grace_s: float) -> T:
    """`await fn(*args)`; if the caller is cancelled meanwhile, `fn` still has `grace_s` seconds to
    finish (then it is cancelled), and the cancellation goes on once it has."""
    box: list[outcome.Outcome] = []
    shield = trio.CancelScope(shield=True)
    async with trio.open_nursery() as nursery:

        async def work() -> None:
            with shield:
                box.append(await outcome.acapture(fn, *args))
            nursery.cancel_scope.cancel()  # done: wake the waiter below

        nursery.start_soon(work)
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            if not box:  # cancelled from outside while `fn` runs: it gets its grace, no more
                shield.deadline = min(shield.deadline, trio.current_time() + grace_s)
            raise
    return box[0].unwrap()
