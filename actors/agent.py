"""The agent: the root actor that turns a robot config into a running supervision tree.

    agent (supervisor, one_for_one)
    ├── mongo_sink                             only when mongo_capture_config.uri is set
    ├── capture (dynamic supervisor)
    │   └── collector <type>/<name>/<method>   one per enabled capture method
    ├── sync                                   only when sync is on and the part has a cloud identity
    │   (the scheduler, running its uploaders)
    └── governor                               the disk-full rule, whenever there is a data manager

The MongoDB sink starts before capture and stops after it, so it sees every reading.

At start it recovers any `.prog` file a crash left in the capture dir, builds the configured
resources, and starts one collector per enabled capture method. Shutdown is cancellation:
every collector finishes its open file before the agent returns.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from actors.collector import Collector, CollectorSettings, CollectorStats
from actors.governor import DEFAULT_INTERVAL_S, DiskGovernor, GovernorStats
from actors.mongo_sink import MongoSink, MongoSinkStats
from actors.sync_scheduler import SyncScheduler, SyncStats
from runtime.capture_file import recover_dir
from runtime.cloud_client import CloudClient
from runtime.config import CaptureMethodPlan, DataManagerAttributes, RobotConfig
from runtime.resources.registry import ResourceRegistry
from runtime.supervision import ChildSpec, Restart, Supervisor, SupervisorStats
from runtime.wallclock import WallClock

log = logging.getLogger("capsync.agent")


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

    @property
    def dropped(self) -> int:
        """Readings the disk refused (ENOSPC, EIO, ...) across all collectors."""
        return sum(c.dropped for c in self.collectors)

    @property
    def captured(self) -> int:
        """Readings captured by all collectors."""
        return sum(c.captured for c in self.collectors)

    @property
    def failed(self) -> int:
        """Captures that failed (resource errors and timeouts) across all collectors."""
        return sum(c.failed for c in self.collectors)

    @property
    def files_finished(self) -> int:
        """Capture files finished (renamed to .capture) since start."""
        return sum(c.files_finished for c in self.collectors)

    @property
    def bytes_written(self) -> int:
        """Bytes appended to capture files since start."""
        return sum(c.bytes_written for c in self.collectors)


def part_id_of(config: RobotConfig) -> str:
    """The part's id: `cloud.id` from the config, or the host name when the part has no cloud identity."""
    return config.cloud.id or socket.gethostname()


def collector_settings(dm: DataManagerAttributes, part_id: str) -> CollectorSettings:
    """The collector settings the data manager attributes ask for."""
    return CollectorSettings(
        capture_dir=dm.capture_dir_path(),
        part_id=part_id,
        tags=tuple(dm.tags),
        max_file_bytes=int(dm.max_file_size_kb * 1024),
        max_binary_file_bytes=int(dm.max_binary_file_size_kb * 1024),
        max_file_age_s=dm.max_file_age_secs,
        fsync_interval_s=dm.fsync_interval_secs,
        resource_timeout_s=dm.resource_timeout_secs,
    )


class Agent:
    """Runs capture for one robot part as described by `config` until cancelled."""

    def __init__(
        self,
        config: RobotConfig,
        *,
        part_id: str | None = None,
        cloud_transport: httpx.AsyncBaseTransport | None = None,
        governor_interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self.config = config
        self.part_id = part_id or part_id_of(config)
        self.collectors: dict[str, Collector] = {}
        self._unavailable: list[str] = []
        self._recovered = 0
        self._capture = Supervisor("capture", max_restarts=50, period=60.0)
        dm = config.data_manager
        children = []
        # --- disk governor and MongoDB sink (issue 4) ---
        self.mongo_sink: MongoSink | None = None
        if dm is not None and dm.mongo_capture_config.uri:
            self.mongo_sink = MongoSink(dm.mongo_capture_config)
            children.append(ChildSpec("mongo_sink", self.mongo_sink.run, restart=Restart.PERMANENT))
        self.governor: DiskGovernor | None = None
        if dm is not None:
            self.governor = DiskGovernor(dm.capture_dir_path(), every_nth=dm.delete_every_nth_when_disk_full,
                                         capture_enabled=config.capture_enabled, interval_s=governor_interval_s,
                                         is_busy=self._is_uploading)
        # --- end ---
        children.append(ChildSpec("capture", self._capture.run, restart=Restart.PERMANENT))
        self.sync: SyncScheduler | None = None
        self.sync_off_reason = self._sync_off_reason()
        if self.sync_off_reason is None:
            self.sync = self._make_scheduler(cloud_transport)
            children.append(ChildSpec("sync", self.sync.run, restart=Restart.PERMANENT))
        if self.governor is not None:
            children.append(ChildSpec("governor", self.governor.run, restart=Restart.PERMANENT))
        self._root = Supervisor("agent", children)
        self._ready = trio.Event()

    def _sync_off_reason(self) -> str | None:
        dm, cloud = self.config.data_manager, self.config.cloud
        if dm is None:
            return "no data_manager service is configured"
        if dm.sync_disabled:
            return "sync_disabled is true"
        if not (cloud.id and cloud.secret):
            return "the config has no cloud.id and cloud.secret for this part"
        return None

    def _make_scheduler(self, transport: httpx.AsyncBaseTransport | None) -> SyncScheduler:
        dm, cloud = self.config.data_manager, self.config.cloud
        assert dm is not None
        client = CloudClient(cloud.app_address, cloud.id, cloud.secret, transport=transport)
        return SyncScheduler(
            client,
            capture_dirs=lambda: [dm.capture_dir_path()],
            sync_paths=[Path(p).expanduser() for p in dm.additional_sync_paths],
            interval_s=dm.sync_interval_secs,
            max_uploads=dm.maximum_num_sync_threads,
            finish_open_files=self.finish_open_files,
        )

    def _is_uploading(self, path: Path) -> bool:
        """True while the sync scheduler uploads `path` (the governor never deletes such a file)."""
        # SyncScheduler has no public accessor for its in-flight set yet; reading it is safe (same thread).
        return self.sync is not None and path in self.sync._in_flight

    async def finish_open_files(self) -> None:
        """Finish every collector's open file (a sync pass calls this so fresh data can go up)."""
        async with trio.open_nursery() as nursery:
            for c in self.collectors.values():
                nursery.start_soon(c.finish_open_file)

    @property
    def capture_dir(self) -> Path | None:
        """Where this agent writes capture files, or None when there is no data manager."""
        dm = self.config.data_manager
        return dm.capture_dir_path() if dm else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover, build resources, start the tree; signals readiness; runs until cancelled."""
        wall = WallClock()
        registry = ResourceRegistry()
        try:
            if self.capture_dir is not None:
                await self._recover(self.capture_dir)
            plans = self.config.capture_plan()
            self._build_resources(registry, plans)
            async with trio.open_nursery() as nursery:
                await nursery.start(self._root.run)
                for plan in plans:
                    await self._start_collector(plan, registry, wall)
                log.info(
                    "agent running",
                    extra={"part_id": self.part_id, "collectors": len(self.collectors),
                           "capture_dir": str(self.capture_dir)},
                )
                self._ready.set()
                task_status.started()
        finally:
            with trio.move_on_after(5, shield=True):
                await registry.close_all()

    async def wait_ready(self) -> None:
        """Wait until every collector has started."""
        await self._ready.wait()

    async def _recover(self, capture_dir: Path) -> None:
        recoveries = await trio.to_thread.run_sync(recover_dir, capture_dir)
        for r in recoveries:
            extra = {"path": str(r.original), "records": r.records}
            if r.damage:
                extra.update(damage_offset=r.damage.offset, damage=r.damage.reason)
            if r.result is None:
                log.error("unreadable capture file set aside as .corrupt", extra=extra)
            else:
                log.warning("recovered capture file left by a crash", extra=extra)
        self._recovered = sum(1 for r in recoveries if r.result is not None)

    def _build_resources(self, registry: ResourceRegistry, plans: list[CaptureMethodPlan]) -> None:
        wanted = {p.resource.name for p in plans if p.resource.remote is None}
        refs = [r for r in self.config.resources() if r.remote is None]
        failures = registry.reconcile(refs)
        for ref in refs:
            exc = failures.get(ref.name)
            if exc is not None and ref.name in wanted:
                log.error("resource could not be built; its capture methods are not running",
                          extra={"resource": f"{ref.type}/{ref.name}", "model": ref.model, "error": str(exc)})
                self._unavailable.append(f"{ref.type}/{ref.name}: {exc}")

    async def _start_collector(self, plan: CaptureMethodPlan, registry: ResourceRegistry, wall: WallClock) -> None:
        if plan.resource.remote is not None:
            self._unavailable.append(f"{plan.resource.remote}:{plan.resource.type}/{plan.resource.name}: "
                                     "capture from remote parts is not supported yet")
            log.warning("capture from remote parts is not supported yet; method skipped",
                        extra={"remote": plan.resource.remote, "method": plan.method})
            return
        try:
            resource = registry.get(plan.resource.name)
        except Exception:
            return  # already reported by _build_resources
        dm = self.config.data_manager
        assert dm is not None  # capture_plan() is empty without a data manager
        collector = Collector(plan, resource, collector_settings(dm, self.part_id), wall,
                              on_tabular=self.mongo_sink.offer if self.mongo_sink else None)
        self.collectors[collector.name] = collector
        await self._capture.start_child(ChildSpec(collector.name, collector.run, restart=Restart.PERMANENT))

    def statistics(self) -> AgentStats:
        """A snapshot of every collector and supervisor."""
        return AgentStats(
            part_id=self.part_id,
            capture_dir=str(self.capture_dir),
            collectors=tuple(c.statistics() for c in self.collectors.values()),
            unavailable=tuple(self._unavailable),
            recovered_files=self._recovered,
            supervisors=(self._root.statistics(), self._capture.statistics()),
            sync=self.sync.statistics() if self.sync else None,
            sync_off_reason=self.sync_off_reason,
            governor=self.governor.statistics() if self.governor else None,
            mongo=self.mongo_sink.statistics() if self.mongo_sink else None,
        )
