"""Wall-clock timestamps that follow Trio's clock, so capture times are right under a virtual clock.

Capture records carry wall-clock times (nanoseconds since the epoch). Reading `time.time_ns()`
directly would freeze under Trio's MockClock and jump when NTP steps the system clock; instead a
`WallClock` takes one wall-clock reading at start and advances it by Trio's monotonic clock.
"""

from __future__ import annotations

import time

import trio


class WallClock:
    """Maps `trio.current_time()` to wall-clock nanoseconds, anchored once at construction.

    Must be constructed inside a Trio run (it reads the run's clock).
    """

    def __init__(self, epoch_ns: int | None = None) -> None:
        self._wall0 = time.time_ns() if epoch_ns is None else epoch_ns
        self._trio0 = trio.current_time()

    def ns_at(self, trio_time: float) -> int:
        """Wall-clock ns corresponding to the Trio clock reading `trio_time`."""
        return self._wall0 + round((trio_time - self._trio0) * 1e9)

    def now_ns(self) -> int:
        """Wall-clock ns now."""
        return self.ns_at(trio.current_time())
