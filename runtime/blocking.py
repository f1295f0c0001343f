"""Running blocking work (file I/O, hashing, fsync) off the event loop, or inline under simulation.

Agent code calls `run_blocking(fn, *args)` instead of `trio.to_thread.run_sync`. Normally that is
a worker thread. Inside `inline_blocking()` (the simulation harness turns it on) the call runs
inline on the event loop: under Trio's autojumping MockClock a task waiting on a thread lets
virtual time jump ahead, which would make collectors miss ticks that a real run would not miss.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import trio

T = TypeVar("T")

_inline = contextvars.ContextVar("capsync_inline_blocking", default=False)


async def run_blocking(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` in a worker thread, or inline (after a checkpoint) under `inline_blocking()`."""
    if _inline.get():
        await trio.lowlevel.checkpoint()
        return fn(*args)
    return await trio.to_thread.run_sync(fn, *args)


@contextmanager
def inline_blocking() -> Iterator[None]:
    """Make `run_blocking` run inline in this context and in every task started from it."""
    token = _inline.set(True)
    try:
        yield
    finally:
        _inline.reset(token)


_durable = contextvars.ContextVar("capsync_durable_writes", default=True)


def durable_writes() -> bool:
    """False inside `without_fsync()`: capture files, and the cloud's file bytes and database, then
    skip fsync (the simulation does; it never loses power, and thousands of fsyncs would cost
    more real time than everything else)."""
    return _durable.get()


@contextmanager
def without_fsync() -> Iterator[None]:
    """Skip fsync of capture files in this context and the tasks started from it."""
    token = _durable.set(False)
    try:
        yield
    finally:
        _durable.reset(token)
