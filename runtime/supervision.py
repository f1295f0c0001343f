"""Supervision trees for Trio actors, after Erlang/OTP.

A :class:`Supervisor` runs child actors, each in its own cancel scope inside the
supervisor's nursery, restarts them by their :class:`Restart` kind and the supervisor's
:class:`Strategy` after a :class:`~capsync.runtime.backoff.Backoff` delay, and gives up with
:class:`SupervisorGaveUp` when it has restarted more than ``max_restarts`` times in
``period`` seconds. A supervisor's ``run`` is itself a valid ``ChildSpec.run``, so trees nest
and a child supervisor that gives up is, to its parent, one more crashed child.

Shutdown is cancellation: cancelling the scope around ``Supervisor.run`` stops the children
one at a time in reverse start order, each given its ``shutdown_timeout``. To make that order
hold, a child that has reported ready is shielded from its supervisor's cancellation and is
cancelled only through its own scope.

All times come from ``trio.current_time()``, so supervision runs under ``MockClock``.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import trio

from capsync.runtime.backoff import Backoff, RestartWindow

log = logging.getLogger("capsync.supervision")


class Restart(str, Enum):
    """When a child that ended is started again."""

    PERMANENT = "permanent"  # always, even after a normal return
    TRANSIENT = "transient"  # only after an exception
    TEMPORARY = "temporary"  # never


class Strategy(str, Enum):
    """Which children a supervisor restarts when one of them has to be restarted."""

    ONE_FOR_ONE = "one_for_one"  # only that child
    ONE_FOR_ALL = "one_for_all"  # every child
    REST_FOR_ONE = "rest_for_one"  # that child and every child started after it


@dataclass(frozen=True)
class ChildSpec:
    """How a supervisor runs one child.

    ``run`` is called as ``await run(task_status=...)`` and calls ``task_status.started()``
    once it is ready, as with ``nursery.start``. A child that returns or raises without
    calling it is treated as having ended right after starting.
    """

    name: str
    run: Callable[..., Awaitable[None]]
    restart: Restart = Restart.PERMANENT
    backoff: Backoff = field(default_factory=Backoff)
    shutdown_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be >= 0, got {self.shutdown_timeout}")


class SupervisorGaveUp(Exception):
    """Raised by ``Supervisor.run`` after more restarts than its intensity allows.

    ``supervisor`` and ``child`` name who gave up and whose end was the last straw;
    ``__cause__`` is that child's exception (None if it returned normally).
    """

    def __init__(self, supervisor: str, child: str, error: BaseException | None) -> None:
        how = f"crashed with {_describe(error)}" if error is not None else "returned"
        super().__init__(
            f"supervisor {supervisor!r} gave up: too many restarts; last, {child!r} {how}"
        )
        self.supervisor = supervisor
        self.child = child


@dataclass(frozen=True)
class ChildStats:
    """A snapshot of one child: whether it runs, how often it was restarted, its last error.

    ``restarts`` counts restarts the supervisor decided on, including one still waiting out
    its backoff (then ``running`` is False); manual ``restart_child`` calls are not counted.
    """

    name: str
    running: bool
    restarts: int
    last_error: str | None
    last_error_at: float | None


@dataclass(frozen=True)
class SupervisorStats:
    """A snapshot of a supervisor; ``total_restarts`` counts restarts as its intensity does.

    A restart of several children at once (one_for_all, rest_for_one) is one restart here and
    one in each restarted child's ``restarts``.
    """

    name: str
    children: tuple[ChildStats, ...]
    total_restarts: int


def shielded_cleanup(timeout: float) -> trio.CancelScope:
    """Scope for cleanup that must block at shutdown, such as closing a file in ``finally``.

    It is shielded, so it runs while the actor is being cancelled, and bounded by ``timeout``
    so a stuck cleanup cannot hold up shutdown; check ``cancelled_caught`` to log a timeout.
    """
    return trio.move_on_after(timeout, shield=True)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class _Child:
    """A supervisor's mutable record of one child; the scope and event are per incarnation."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.scope: trio.CancelScope | None = None
        self.done = trio.Event()
        self.running = False
        self.started_at = 0.0
        self.due: float | None = None  # set while waiting to be restarted
        self.consecutive = 0  # restarts not yet forgiven by a stable run; picks the backoff
        self.restarts = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None


_End = tuple[_Child, trio.CancelScope, Exception | None]


class _Readiness:
    """The ``task_status`` a child gets: passes ``started()`` on, then shields the child."""

    def __init__(self, task_status: trio.TaskStatus[Any], scope: trio.CancelScope) -> None:
        self._task_status = task_status
        self._scope = scope
        self.called = False

    def started(self, value: Any = None) -> None:
        self._task_status.started(value)
        self.called = True
        self._scope.shield = True


class Supervisor:
    """Runs child actors, restarts them by policy, and gives up upward when they fail too often.

    Children are started in order and stopped in reverse order. Every restart counts in one
    restart window for the whole supervisor (``max_restarts`` in ``period`` seconds); one
    more and the supervisor stops all children and ``run`` raises :class:`SupervisorGaveUp`.

    A child waits ``spec.backoff.delay(n)`` before a restart, where ``n`` counts its restarts
    since it last stayed up longer than ``spec.backoff.cap`` seconds; a child that runs that
    long has proved stable and starts again from the shortest delay. In one_for_all and
    rest_for_one the failed child's delay applies to the whole group, which waits stopped.

    A child that ends and is not restarted is removed, so its name can be used again.

    A child still running after its ``shutdown_timeout`` is logged and left to finish on its
    own while the supervisor moves on; Trio cannot abandon a task, so ``run`` returns only
    once it has ended.

    Structural changes (start, stop, restart) happen one at a time. Calling this supervisor's
    ``start_child``, ``stop_child`` or ``restart_child`` from a child of the same supervisor
    before that child called ``started()`` would wait for itself, as in OTP.
    """

    def __init__(
        self,
        name: str,
        children: Iterable[ChildSpec] = (),
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 5,
        period: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.strategy = Strategy(strategy)
        self.max_restarts = max_restarts
        self.period = period
        self._window = RestartWindow(max_restarts, period)  # validates; replaced on each run
        self._rng = rng
        self._children: dict[str, _Child] = {}
        for spec in children:
            self._add(spec)
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._started = trio.Event()
        self._running = False
        # Unplanned child ends, or None just to wake _supervise; a fresh channel per run.
        self._report_exit: trio.MemorySendChannel[_End | None]
        self._exits: trio.MemoryReceiveChannel[_End | None]
        self._total_restarts = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every child in order, report ready, then supervise until cancelled.

        Raises :class:`SupervisorGaveUp` when the restart intensity is exceeded. May be run
        again after it ended (that is how a parent restarts it); each run starts every child
        the supervisor holds at that moment, with a fresh restart window.
        """
        if self._running:
            raise RuntimeError(f"supervisor {self.name!r} is already running")
        self._running = True
        self._window = RestartWindow(self.max_restarts, self.period)
        self._report_exit, self._exits = trio.open_memory_channel(math.inf)
        gave_up: tuple[str, Exception | None] | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._closing = False
                try:
                    async with self._lock:
                        for child in list(self._children.values()):
                            child.consecutive = 0
                            await self._launch(child)
                    self._started.set()
                    task_status.started()
                    gave_up = await self._supervise()
                finally:
                    await self._stop_all()
        finally:
            self._running = False
            self._nursery = None
            self._started = trio.Event()
        if gave_up is not None:
            child_name, error = gave_up
            raise SupervisorGaveUp(self.name, child_name, error) from error

    async def wait_started(self) -> None:
        """Wait until the current (or next) ``run`` has started all its children."""
        await self._started.wait()

    async def start_child(self, spec: ChildSpec) -> None:
        """Add a child and, if the supervisor is running, start it and wait until it is ready.

        If the supervisor is not running the child is only added; ``run`` will start it.
        Raises ValueError if a child of that name exists.
        """
        async with self._lock:
            child = self._add(spec)
            try:
                await self._launch(child)
            except BaseException:
                # The caller gave up on this start (e.g. was cancelled): leave no half-added child.
                if self._children.get(spec.name) is child:
                    del self._children[spec.name]
                raise

    async def stop_child(self, name: str) -> None:
        """Cancel a child, wait for it up to its ``shutdown_timeout``, and remove it for good.

        Raises KeyError if there is no such child.
        """
        async with self._lock:
            child = self._children[name]
            await self._stop(child)
            if self._children.get(name) is child:
                del self._children[name]

    async def restart_child(self, name: str) -> None:
        """Stop a child and start it again from the same spec, waiting until it is ready.

        A manual restart does not count against the restart intensity. Raises KeyError if
        there is no such child.
        """
        async with self._lock:
            child = self._children[name]
            await self._stop(child)
            try:
                await self._launch(child)
            except BaseException:
                # Interrupted while the child was starting: let the supervisor start it instead.
                if self._nursery is not None:
                    child.due = trio.current_time()
                    self._report_exit.send_nowait(None)
                raise

    def has_child(self, name: str) -> bool:
        """Whether a child of that name is held (running or waiting to be restarted)."""
        return name in self._children

    def child_names(self) -> list[str]:
        """Names of the children held, in start order."""
        return list(self._children)

    def statistics(self) -> SupervisorStats:
        """A snapshot of this supervisor and its children."""
        return SupervisorStats(
            name=self.name,
            children=tuple(
                ChildStats(c.spec.name, c.running, c.restarts, c.last_error, c.last_error_at)
                for c in self._children.values()
            ),
            total_restarts=self._total_restarts,
        )

    def _add(self, spec: ChildSpec) -> _Child:
        if spec.name in self._children:
            raise ValueError(f"supervisor {self.name!r} already has a child named {spec.name!r}")
        child = self._children[spec.name] = _Child(spec)
        return child

    async def _launch(self, child: _Child) -> None:
        """Start a new incarnation of ``child`` in the nursery and wait until it is ready."""
        if self._nursery is None or self._closing:
            return
        child.due = None
        child.scope = scope = trio.CancelScope()
        child.done = done = trio.Event()
        child.running = True
        child.started_at = trio.current_time()
        await self._nursery.start(self._incarnation, child, scope, done)

    async def _incarnation(
        self,
        child: _Child,
        scope: trio.CancelScope,
        done: trio.Event,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``child`` once in ``scope``, catch what it raises, and report an unplanned end."""
        name = child.spec.name
        readiness = _Readiness(task_status, scope)
        error: Exception | None = None
        try:
            try:
                with scope:
                    await child.spec.run(task_status=readiness)
            except Exception as exc:
                error = exc
        finally:
            done.set()
            if child.scope is scope:
                child.running = False
        if not readiness.called:
            task_status.started()
        if error is not None:
            child.last_error = _describe(error)
            child.last_error_at = trio.current_time()
            log.error(
                "actor %s crashed: %s",
                name,
                child.last_error,
                exc_info=error,
                extra={"actor": name, "supervisor": self.name, "error": child.last_error},
            )
        elif not scope.cancelled_caught:
            log.info("actor %s returned", name, extra={"actor": name, "supervisor": self.name})
        # Only our stop/restart ever cancels this scope; such an end is planned, not reported.
        if not scope.cancel_called:
            self._report_exit.send_nowait((child, scope, error))

    async def _supervise(self) -> tuple[str, Exception | None]:
        """Handle child ends and due restarts, one at a time; return why we give up."""
        while True:
            next_due = min(
                (c.due for c in self._children.values() if c.due is not None), default=math.inf
            )
            ended: _End | None = None
            with trio.move_on_at(next_due):
                ended = await self._exits.receive()
            async with self._lock:
                if ended is not None:
                    child, scope, error = ended
                    if not await self._handle_end(child, scope, error):
                        return child.spec.name, error
                await self._restart_due()

    async def _handle_end(
        self, child: _Child, scope: trio.CancelScope, error: Exception | None
    ) -> bool:
        """Apply the restart policy to a child's unplanned end; False means give up."""
        name = child.spec.name
        current = self._children.get(name) is child and child.scope is scope
        if not current or child.due is not None:
            # Stopped, restarted, or already part of a pending group restart since it ended.
            return True
        if not _restarts(child.spec.restart, error):
            del self._children[name]
            return True
        now = trio.current_time()
        if not self._window.record(now):
            log.error(
                "supervisor %s giving up: more than %d restarts in %ss",
                self.name,
                self.max_restarts,
                self.period,
                extra={"actor": name, "supervisor": self.name},
            )
            return False
        self._total_restarts += 1
        if now - child.started_at > child.spec.backoff.cap:
            child.consecutive = 0
        delay = child.spec.backoff.delay(child.consecutive, self._rng)
        child.consecutive += 1
        group = self._group(child)
        for sibling in reversed(group):
            if sibling is not child:
                await self._stop(sibling)
        due = trio.current_time() + delay
        restarting = []
        for member in group:
            if member.spec.restart is Restart.TEMPORARY and member is not child:
                del self._children[member.spec.name]
            else:
                member.due = due
                member.restarts += 1
                restarting.append(member.spec.name)
        log.info(
            "restarting %s in %.3fs",
            ", ".join(restarting),
            delay,
            extra={"actor": name, "supervisor": self.name, "delay": delay},
        )
        return True

    def _group(self, child: _Child) -> list[_Child]:
        """The children restarted along with ``child``, in start order."""
        children = list(self._children.values())
        if self.strategy is Strategy.ONE_FOR_ALL:
            return children
        if self.strategy is Strategy.REST_FOR_ONE:
            return children[children.index(child) :]
        return [child]

    async def _restart_due(self) -> None:
        now = trio.current_time()
        for child in list(self._children.values()):
            if child.due is not None and child.due <= now:
                await self._launch(child)

    async def _stop(self, child: _Child) -> None:
        """Cancel ``child`` and wait for it up to its shutdown_timeout, even while cancelled."""
        scope, done = child.scope, child.done
        if scope is None:
            return
        scope.cancel()
        with trio.move_on_after(child.spec.shutdown_timeout, shield=True) as waited:
            await done.wait()
        if waited.cancelled_caught:
            log.warning(
                "actor %s did not stop within %ss; moving on",
                child.spec.name,
                child.spec.shutdown_timeout,
                extra={"actor": child.spec.name, "supervisor": self.name},
            )

    async def _stop_all(self) -> None:
        self._closing = True
        for child in reversed(list(self._children.values())):
            await self._stop(child)


def _restarts(kind: Restart, error: Exception | None) -> bool:
    if kind is Restart.PERMANENT:
        return True
    return kind is Restart.TRANSIENT and error is not None
