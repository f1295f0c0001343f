"""Reusable parts of the simulation harness: a switchable network to the cloud and a simulated disk.

Like `trio.testing`, these are plain objects a test controls directly: switch the cloud link off
and on, or fill the simulated disk. actors/sim.py assembles them with an agent and a cloud.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from capsync.runtime.disk_usage import DiskUsage


class SwitchableTransport(httpx.AsyncBaseTransport):
    """Wraps a transport; while `down`, every request fails like a refused connection."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.down = False
        self.refused = 0  # requests refused while down

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Forward `request`, or raise httpx.ConnectError while the link is down."""
        if self.down:
            self.refused += 1
            raise httpx.ConnectError("simulated outage: connection refused", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self.inner.aclose()


def _bytes_under(root: Path | str) -> int:
    """Bytes in the files under `root` (not following links). os.scandir, not os.walk: the
    governor asks every 5 virtual seconds, and os.walk's own work was most of the cost."""
    total = 0
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += _bytes_under(entry.path)
            else:
                total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            pass
    return total


class SimDisk:
    """A disk of `total` bytes on which `other_used` bytes belong to others and the capture dir's
    real files count as used too; pass `usage` as the governor's disk-usage function."""

    def __init__(self, capture_dir: Path, total: int, other_used: int = 0) -> None:
        self.capture_dir = Path(capture_dir)
        self.total = total
        self.other_used = other_used

    def usage(self, path: Path) -> DiskUsage:
        """What `df` would say of the simulated file system now."""
        used = min(self.total, self.other_used + _bytes_under(self.capture_dir))
        return DiskUsage(total=self.total, used=used, free=self.total - used)

    def fill_to(self, percent: float) -> None:
        """Make others use enough bytes that the disk is `percent` full now."""
        self.other_used = max(0, int(self.total * percent / 100) - _bytes_under(self.capture_dir))
