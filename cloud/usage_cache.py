"""What one-request uploads check their part's quotas against, without a store query per file.

A part's stored bytes are a sum over all of its files: exact per declaration of a resumable
upload, but a one-request upload of a small file must not pay for it (at 500 files/s, a 100,000-file
part would spend the whole cloud on sums). So the one-request path checks a part's `PartUsage` as
read at most `ttl_s` ago, plus the bytes of this process's one-request uploads in flight and
committed since that read. A quota can therefore be overshot by at most what the other cloud
processes commit within `ttl_s`; docs/sync-protocol.md says so.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from capsync.cloud.store import PartUsage, Store
from capsync.runtime.blocking import run_blocking

#: How old a part's usage, or the disk's free space, may be when a one-request upload is checked.
USAGE_TTL_S = 2.0


@dataclass
class _Entry:
    usage: PartUsage
    read_at: float
    committed_since: int = 0


@dataclass
class UsageCache:
    """Recent `PartUsage` per part and free disk space, with this process's uploads added in."""

    store: Store
    blobs: Any  # capsync.cloud.blobs.Blobs (not imported: it imports the store module too)
    ttl_s: float = USAGE_TTL_S
    _parts: dict[str, _Entry] = field(default_factory=dict)
    _inflight: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))  # part -> [files, bytes]
    _free: tuple[float, int | None] | None = None

    async def usage(self, part_id: str) -> PartUsage:
        """The part's usage: stored and in-flight bytes as read recently, plus this process's
        one-request uploads in flight or committed since."""
        now = trio.current_time()
        e = self._parts.get(part_id)
        if e is None or now - e.read_at > self.ttl_s:
            e = self._parts[part_id] = _Entry(await self.store.part_usage(part_id), now)
        files, size = self._inflight.get(part_id, (0, 0))
        return PartUsage(e.usage.uploads + files, e.usage.upload_bytes + size, e.usage.stored_bytes + e.committed_since)

    async def free_bytes(self) -> int | None:
        """Free bytes where the file bytes live as read recently; None for an object store (no such limit)."""
        now = trio.current_time()
        if self._free is None or now - self._free[0] > self.ttl_s:
            self._free = (now, await run_blocking(self.blobs.free_bytes))
        return self._free[1]

    @contextmanager
    def in_flight(self, part_id: str, size: int) -> Iterator[None]:
        """Count a one-request upload of `size` bytes as in flight for the duration of the block."""
        slot = self._inflight[part_id]
        slot[0] += 1
        slot[1] += size
        try:
            yield
        finally:
            slot[0] -= 1
            slot[1] -= size
            if slot == [0, 0]:
                del self._inflight[part_id]

    def committed(self, part_id: str, size: int) -> None:
        """A one-request upload of `size` bytes was committed: count it until the next read."""
        if (e := self._parts.get(part_id)) is not None:
            e.committed_since += size
        if self._free is not None and self._free[1] is not None:
            self._free = (self._free[0], self._free[1] - size)
