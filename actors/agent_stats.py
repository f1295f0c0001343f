"""A snapshot of the whole agent (`Agent.statistics()`), for `capsync status`, the metrics, the demo
and tests, and the totals of collectors that reloads stopped."""

from __future__ import annotations

from dataclasses import dataclass

from capsync.actors.capture_control import CaptureControlStats
from capsync.actors.collector import CollectorStats
from capsync.actors.config_watcher import ConfigWatcherStats
from capsync.actors.governor import GovernorStats
from capsync.actors.mongo_sink import MongoSinkStats
from capsync.actors.resource_server import ResourceServerStats
from capsync.actors.sync_scheduler import SyncStats
from capsync.runtime.remote import RemoteStats
from capsync.runtime.supervision import SupervisorStats


@dataclass(frozen=True)
class RetiredTotals:
    """Counters of collectors that were stopped by reloads, so totals survive reconfiguration."""

    collectors: int = 0
    captured: int = 0
    failed: int = 0
    dropped: int = 0
    files_finished: int = 0
    bytes_written: int = 0
    skipped: int = 0

    def plus(self, c: CollectorStats) -> RetiredTotals:
        """These totals with one more stopped collector's counters added."""
        return RetiredTotals(self.collectors + 1, self.captured + c.captured, self.failed + c.failed,
                             self.dropped + c.dropped, self.files_finished + c.files_finished,
                             self.bytes_written + c.bytes_written, self.skipped + c.skipped)


@dataclass(frozen=True)
class AgentStats:
    """A snapshot of the whole agent for `capsync status`, the demo and tests."""

    part_id: str
    capture_dir: str
    collectors: tuple[CollectorStats, ...]
    unavailable: tuple[str, ...]  # capture methods whose resource could not be built, with why
    recovered_files: int
    supervisors: tuple[SupervisorStats, ...]
    sync: SyncStats | None  # None when sync is off
    sync_off_reason: str | None
    governor: GovernorStats | None = None  # None without a data manager
    mongo: MongoSinkStats | None = None  # None unless mongo_capture_config.uri is set
    config: ConfigWatcherStats | None = None  # None when not started from a config file
    revision: int = 1
    control_address: str | None = None
    retired: RetiredTotals = RetiredTotals()
    remotes: tuple[RemoteStats, ...] = ()  # connections to remote parts this part captures from
    served: ResourceServerStats | None = None  # this part's resources served to other parts
    capture_control: CaptureControlStats | None = None  # None unless capture_control_sensor is set

    @property
    def dropped(self) -> int:
        """Readings the disk refused (ENOSPC, EIO, ...) across all collectors."""
        return self.retired.dropped + sum(c.dropped for c in self.collectors)

    @property
    def captured(self) -> int:
        """Readings captured by all collectors."""
        return self.retired.captured + sum(c.captured for c in self.collectors)

    @property
    def skipped(self) -> int:
        """Ticks whose resource had nothing to capture (NoCapture) across all collectors: not failures."""
        return self.retired.skipped + sum(c.skipped for c in self.collectors)

    @property
    def failed(self) -> int:
        """Captures that failed (resource errors and timeouts) across all collectors."""
        return self.retired.failed + sum(c.failed for c in self.collectors)

    @property
    def files_finished(self) -> int:
        """Capture files finished (renamed to .capture) since start."""
        return self.retired.files_finished + sum(c.files_finished for c in self.collectors)

    @property
    def bytes_written(self) -> int:
        """Bytes appended to capture files since start."""
        return self.retired.bytes_written + sum(c.bytes_written for c in self.collectors)
