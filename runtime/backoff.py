"""Restart policy with no I/O and no Trio: how long to wait before a restart, and when to give up.

Kept apart from the supervision runtime so the arithmetic can be tested on its own.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: the wait before restarting a child that keeps failing.

    ``initial`` seconds for the first attempt, multiplied by ``factor`` on each further
    attempt, never more than ``cap``; ``jitter`` is the fraction of that base added or taken
    away at random, so children that failed together do not all restart at the same instant.
    """

    initial: float = 0.1
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.initial < 0 or self.cap < 0:
            raise ValueError(f"initial and cap must be >= 0: {self}")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1: {self}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1: {self}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before restart number ``attempt`` (0 for the first), jittered by ``rng``.

        Without ``rng`` the module-level random generator is used. The result is never
        negative and never more than ``cap * (1 + jitter)``.
        """
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        try:
            growth = self.factor**attempt
        except OverflowError:
            growth = math.inf
        base = min(self.cap, self.initial * growth) if self.initial else 0.0
        if not self.jitter or not base:
            return base
        spread = self.jitter * base
        uniform = rng.uniform if rng is not None else random.uniform
        return max(0.0, base + uniform(-spread, spread))


class RestartWindow:
    """Restart intensity as in Erlang/OTP: at most ``max_restarts`` restarts in ``period`` seconds.

    A supervisor keeps one window for all its children and gives up when :meth:`record`
    returns False.
    """

    def __init__(self, max_restarts: int, period: float) -> None:
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        if period <= 0:
            raise ValueError(f"period must be > 0, got {period}")
        self.max_restarts = max_restarts
        self.period = period
        # Only the newest max_restarts + 1 times can ever decide the answer.
        self._times: deque[float] = deque(maxlen=max_restarts + 1)

    def record(self, now: float) -> bool:
        """Record a restart at ``now``; False if that makes more than ``max_restarts`` in the window.

        The window is the last ``period`` seconds: a restart ``period`` or more seconds
        before ``now`` no longer counts. Times must not go backwards.
        """
        self._times.append(now)
        while now - self._times[0] >= self.period:
            self._times.popleft()
        return len(self._times) <= self.max_restarts
