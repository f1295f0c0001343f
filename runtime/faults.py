"""Fault injection: named points in every actor where a test can make things go wrong on purpose.

Each actor holds a `faults` attribute that defaults to None (like trio.testing's memory-stream
hooks). At each named point it calls `faults.hit(actor_name, point)` (async points) or
`faults.hit_sync(...)` (points inside synchronous code such as a file write) only when that
attribute is set, so with no plan a point costs one attribute check.

A `FaultPlan` is a list of `FaultRule`s: an actor-name pattern (fnmatch), a point name, and the
`Fault` to apply there: raise an exception, hang for a while, hand back a corrupt value, fail a
write with ENOSPC or EIO, or drop the network. Rules count their hits, can skip the first hits,
fire a limited number of times, or fire with a probability drawn from the plan's seeded RNG, and
can be switched on and off while the agent runs.

The points (see docs/simulation.md):

    collector   before_call, after_call, before_write, after_write
    uploader    before_request, before_chunk
    scheduler   pass
    governor    check
    mongo_sink  write
    config_watcher  read
"""

from __future__ import annotations

import errno
import fnmatch
import os
import random
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import trio


class FaultKind(str, Enum):
    """What a fault does at its point."""

    RAISE = "raise"  # raise `Fault.error` (a RuntimeError by default): a bug, or a failing resource
    HANG = "hang"  # sleep for `Fault.seconds` (forever when None) before going on
    CORRUPT = "corrupt"  # the point hands back `Fault.value` instead of the real value
    ENOSPC = "enospc"  # raise OSError(ENOSPC): the disk is full
    EIO = "eio"  # raise OSError(EIO): the disk failed
    DROP_NETWORK = "drop_network"  # raise InjectedNetworkError: the network is gone


class InjectedFault(RuntimeError):
    """The default exception of a RAISE fault, so tests can tell injected failures from real ones."""


class InjectedNetworkError(OSError):
    """What a DROP_NETWORK fault raises; network code treats it like a refused connection."""


@dataclass
class Fault:
    """One fault: what happens, and when it fires.

    `after` hits are let through first; then it fires `times` times (forever when None), each
    time with `probability`. `enabled` can be flipped while the agent runs.
    """

    kind: FaultKind
    error: BaseException | None = None
    seconds: float | None = None
    value: Any = None
    after: int = 0
    times: int | None = None
    probability: float = 1.0
    enabled: bool = True


@dataclass
class FaultRule:
    """Apply `fault` at `point` in every actor whose name matches `actor` (fnmatch pattern)."""

    actor: str
    point: str
    fault: Fault
    hits: int = 0
    fired: int = 0

    def matches(self, actor: str, point: str) -> bool:
        """Whether this rule is about `point` in `actor`."""
        return point == self.point and fnmatch.fnmatchcase(actor, self.actor)


@dataclass(frozen=True)
class FaultEvent:
    """A fault that fired: where, what, and the hit count at that moment."""

    actor: str
    point: str
    kind: FaultKind
    hit: int


@dataclass
class FaultPlan:
    """The faults of one test run. Share one plan among all actors of an agent."""

    rules: list[FaultRule] = field(default_factory=list)
    seed: int = 0
    log: list[FaultEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def add(self, actor: str, point: str, kind: FaultKind | str, **kw: Any) -> Fault:
        """Add a rule; returns its Fault so the test can flip `enabled` or change it later."""
        fault = Fault(FaultKind(kind), **kw)
        self.rules.append(FaultRule(actor, point, fault))
        return fault

    def clear(self) -> None:
        """Remove every rule (the log stays)."""
        self.rules.clear()

    def fired(self, point: str | None = None) -> int:
        """How many faults fired (at `point`, or anywhere)."""
        return sum(1 for e in self.log if point is None or e.point == point)

    def _due(self, actor: str, point: str) -> Fault | None:
        for rule in self.rules:
            if not rule.matches(actor, point):
                continue
            rule.hits += 1
            f = rule.fault
            if not f.enabled or rule.hits <= f.after or (f.times is not None and rule.fired >= f.times):
                continue
            if f.probability < 1.0 and self._rng.random() >= f.probability:
                continue
            rule.fired += 1
            self.log.append(FaultEvent(actor, point, f.kind, rule.hits))
            return f
        return None

    def hit_sync(self, actor: str, point: str, value: Any = None) -> Any:
        """A point in synchronous code: raise if a fault says so, else return `value` (or the corrupt value).

        A HANG fault cannot sleep here; it is ignored at synchronous points.
        """
        f = self._due(actor, point)
        if f is None or f.kind is FaultKind.HANG:
            return value
        return _apply(f, actor, point, value)

    async def hit(self, actor: str, point: str, value: Any = None) -> Any:
        """A point in async code: raise, hang, or return `value` (or the corrupt value)."""
        f = self._due(actor, point)
        if f is None:
            return value
        if f.kind is FaultKind.HANG:
            if f.seconds is None:
                await trio.sleep_forever()
            await trio.sleep(f.seconds)
            return value
        return _apply(f, actor, point, value)


def _apply(f: Fault, actor: str, point: str, value: Any) -> Any:
    where = f"injected at {actor} {point}"
    if f.kind is FaultKind.CORRUPT:
        return f.value
    if f.kind is FaultKind.RAISE:
        raise f.error if f.error is not None else InjectedFault(where)
    if f.kind is FaultKind.ENOSPC:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + f" ({where})")
    if f.kind is FaultKind.EIO:
        raise OSError(errno.EIO, os.strerror(errno.EIO) + f" ({where})")
    if f.kind is FaultKind.DROP_NETWORK:
        raise InjectedNetworkError(errno.ECONNREFUSED, f"network dropped ({where})")
    raise AssertionError(f"unhandled fault kind {f.kind}")
