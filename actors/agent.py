"""The agent: the root actor that turns a robot config into a running supervision tree.

    agent (supervisor, one_for_one)
    ├── mongo_sink                             once mongo_capture_config.uri is set
    ├── metronome                              one timer that wakes every collector at its ticks
    ├── fsync_rounds                           one fsync of every open capture file per fsync_interval_secs
    ├── capture (dynamic supervisor)
    │   └── collector <type>/<name>/<method>   one per enabled capture method (its files are opened
    │                                          and finished by a task of its own)
    ├── sync                                   while sync is on and the part has a cloud identity
    │   (the scheduler, running its uploaders)
    ├── governor                               the disk-full rule, whenever there is a data manager
    ├── config_watcher                         when the agent was started from a config file
    ├── capture_control                        while the data manager names a capture_control_sensor
    ├── remotes                                one connection per remote part (runtime/remote.py)
    ├── control                                status, sync now, Sync and DoCommand over WebSocket RPC,
    │                                          and this part's resources for other parts on /resources
    └── metrics                                /metrics and /v1/health over HTTP, when a metrics address is given

The MongoDB sink starts before capture and stops after it, so it sees every reading.

At start it recovers any `.prog` file a crash left in the capture dir, builds the configured
resources, and starts one collector per enabled capture method. A new config is applied as a
diff (`apply_config`, see actors/reconcile.py). The capture control sensor's overrides
(`apply_overrides`) go the same way: the running config is the file's config with the overrides
in force on top, so a file edit keeps them and an override outlives no config that lost its
method. Shutdown is cancellation: every collector finishes its open file before the agent returns.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from collections import Counter
from typing import TYPE_CHECKING, Callable

import httpx
import trio

from capsync.actors.agent_api import agent_handlers
from capsync.actors.agent_metrics import TreeHealth
from capsync.actors.agent_stats import AgentStats, RetiredTotals
from capsync.actors.capture_control import CaptureControl
from capsync.actors.collector import Collector, CollectorSettings
from capsync.actors.config_watcher import ConfigWatcher
from capsync.actors.control import ControlEndpoint
from capsync.actors.governor import DEFAULT_INTERVAL_S, DiskGovernor
from capsync.actors.mongo_sink import MongoSink
from capsync.actors.reconcile import diff_configs, log_collector_changes
from capsync.actors.resource_server import ResourceServer
from capsync.actors.sync_scheduler import SyncScheduler
from capsync.runtime.capture_file import CaptureHeader, CaptureRecord, recover_dir
from capsync.runtime.fsync_rounds import FsyncRounds
from capsync.runtime.metronome import Metronome
from capsync.runtime.cloud_client import CloudClient
from capsync.runtime.disk_usage import DiskUsage
from capsync.runtime.faults import FaultPlan
from capsync.runtime.config import CaptureMethodPlan, DataManagerAttributes, RobotConfig
from capsync.runtime.remote import RESOURCES_PATH, RemoteParts
from capsync.runtime.resources.registry import ResourceRegistry, model_search_dirs
from capsync.runtime.backoff import Backoff
from capsync.runtime.supervision import ChildSpec, Restart, Supervisor
from capsync.runtime.wallclock import WallClock
from capsync.runtime.blocking import run_blocking
from capsync.runtime.capture_control import CaptureOverride

if TYPE_CHECKING:
    from capsync.actors.metrics_endpoint import MetricsEndpoint

log = logging.getLogger("capsync.agent")


def part_id_of(config: RobotConfig) -> str:
    """The part's id: `cloud.id` from the config, or the host name when the part has no cloud identity."""
    return config.cloud.id or socket.gethostname()


#: A collector that crashes (a bug: resource errors are counted, not crashes) restarts after 0.5 s,
#: 1 s, 2 s, ... at most 10 s; more than 5 restarts in 30 s (a crash loop) escalates: the capture
#: supervisor gives up and the agent restarts the whole capture subtree.
COLLECTOR_BACKOFF = Backoff(initial=0.5, factor=2.0, cap=10.0, jitter=0.1)
CAPTURE_MAX_RESTARTS, CAPTURE_RESTART_PERIOD_S = 5, 30.0
#: How long a reload waits for a collector to finish its capture in flight before cancelling it.
STOP_GRACE_S = 2.0


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
    """Runs capture (and sync, and the rest of the tree) for one robot part as `config` describes.

    With `config_path` the agent watches that file and applies each valid edit. `cloud_transport`
    replaces the network for the cloud client (tests); `control` False leaves the control
    endpoint out (tests that run several agents in one process). `metrics_address` (host, port)
    serves /metrics and /v1/health there (actors/metrics_endpoint.py); None leaves them out.
    """

    def __init__(
        self,
        config: RobotConfig,
        *,
        part_id: str | None = None,
        cloud_transport: httpx.AsyncBaseTransport | None = None,
        governor_interval_s: float = DEFAULT_INTERVAL_S,
        config_path: Path | None = None,
        config_text: str | None = None,
        control: bool = True,
        config_poll_s: float = 0.5,
        faults: FaultPlan | None = None,
        disk_usage: Callable[[Path], DiskUsage] | None = None,
        ledger: Counter[str] | None = None,
        metrics_address: tuple[str, int] | None = None,
    ) -> None:
        self.config = config
        self.faults = faults
        self.ledger = ledger  # file id -> records appended, kept by every collector (simulation)
        self.part_id = part_id or part_id_of(config)
        self.revision = 1
        self.collectors: dict[str, Collector] = {}
        self._unavailable: dict[str, str] = {}  # plan key or resource name -> why it is not running
        self._recovered = 0
        self._retired = RetiredTotals()
        self._transport = cloud_transport
        self._registry = ResourceRegistry(model_search_dirs(config_path or config.source))
        self._wall: WallClock | None = None
        self._metronome = Metronome()  # one timer for every collector's ticks
        self._fsync_rounds = FsyncRounds()  # one fsync round for every collector's open file
        self._capture = Supervisor("capture", max_restarts=CAPTURE_MAX_RESTARTS, period=CAPTURE_RESTART_PERIOD_S)
        self._root = Supervisor("agent", [])
        self._capture_dirs: list[Path] = []
        self._ready = trio.Event()
        self._reload_lock = trio.Lock()
        dm = config.data_manager
        if dm is not None:
            self._capture_dirs.append(dm.capture_dir_path())
        self.mongo_sink: MongoSink | None = None
        if dm is not None and dm.mongo_capture_config.uri:
            self.mongo_sink = MongoSink(dm.mongo_capture_config)
        self.governor: DiskGovernor | None = None
        if dm is not None:
            self.governor = DiskGovernor(dm.capture_dir_path(), every_nth=dm.delete_every_nth_when_disk_full,
                                         capture_enabled=config.capture_enabled, interval_s=governor_interval_s,
                                         is_busy=self._is_uploading,
                                         **({"usage_of": disk_usage} if disk_usage is not None else {}))
            self.governor.faults = faults
        self.sync: SyncScheduler | None = None
        self.sync_off_reason = self._sync_off_reason(config)
        if self.sync_off_reason is None:
            self.sync = self._make_scheduler(config)
        self.remotes = RemoteParts(config.remotes)
        self.resource_server: ResourceServer | None = None
        self.watcher: ConfigWatcher | None = None
        if config_path is not None:
            self.watcher = ConfigWatcher(config_path, self.apply_config, initial_text=config_text, poll_s=config_poll_s)
            self.watcher.faults = faults
        self.control: ControlEndpoint | None = None
        if control:
            self.control = self._make_control(config)
        self.capture_control = CaptureControl(lambda: self.config, self._registry, self.apply_overrides)
        #: The health rule of /v1/health and the systemd watchdog (actors/agent_metrics.py).
        self.health = TreeHealth()
        self.metrics: MetricsEndpoint | None = None
        if metrics_address is not None:
            # Imported here: its HTTP server (hypercorn, starlette) costs ~0.1 s of a small board's start.
            from capsync.actors.metrics_endpoint import MetricsEndpoint

            self.metrics = MetricsEndpoint(self, *metrics_address)

    # -- building the parts --------------------------------------------------------------

    @staticmethod
    def _sync_off_reason(config: RobotConfig) -> str | None:
        dm, cloud = config.data_manager, config.cloud
        if dm is None:
            return "no data_manager service is configured"
        if dm.sync_disabled:
            return "sync_disabled is true"
        if not (cloud.id and cloud.secret):
            return "the config has no cloud.id and cloud.secret for this part"
        return None

    def _make_scheduler(self, config: RobotConfig) -> SyncScheduler:
        dm, cloud = config.data_manager, config.cloud
        assert dm is not None
        client = CloudClient(cloud.app_address, cloud.id, cloud.secret, transport=self._transport)
        scheduler = SyncScheduler(
            client,
            capture_dirs=self._dirs_to_sync,
            sync_paths=[Path(p).expanduser() for p in dm.additional_sync_paths],
            interval_s=dm.sync_interval_secs,
            max_uploads=dm.maximum_num_sync_threads,
            finish_open_files=self.finish_open_files,
            should_sync=self._selective_syncer(config),
        )
        scheduler.faults = self.faults
        return scheduler

    def _selective_syncer(self, config: RobotConfig):
        name = config.data_manager.selective_syncer_name if config.data_manager else ""
        if not name:
            return None

        async def should_sync() -> bool:
            reading = await self._registry.get(name).capture("Readings", {})
            return bool(reading.get("should_sync", True)) if isinstance(reading, dict) else True

        return should_sync

    def _make_control(self, config: RobotConfig) -> ControlEndpoint:
        net = config.network
        self.resource_server = ResourceServer(self._registry, config.cloud.secret)
        return ControlEndpoint(net.host, net.port, agent_handlers(self), secret=config.cloud.secret,
                               routes={RESOURCES_PATH: self.resource_server.handle},
                               allowed_origins=net.allowed_origins, tls_certificate_file=net.tls_certificate_file,
                               tls_key_file=net.tls_key_file)

    def _dirs_to_sync(self) -> list[Path]:
        """The current capture dir and earlier ones (after a capture_dir change) that still exist."""
        return [d for i, d in enumerate(self._capture_dirs) if i == 0 or d.exists()]

    def _is_uploading(self, path: Path) -> bool:
        """True while the sync scheduler uploads `path` (the governor never deletes such a file)."""
        return self.sync is not None and self.sync.is_uploading(path)

    def _to_mongo(self, header: CaptureHeader, requested_ns: int, received_ns: int, payload: dict) -> None:
        """Hand a tabular reading to the MongoDB sink, if there is one now (a reload may add it later)."""
        if self.mongo_sink is not None:  # no record is built for nobody: this runs for every reading
            self.mongo_sink.offer(header, CaptureRecord(requested_ns, received_ns, payload))

    async def finish_open_files(self) -> None:
        """Finish every collector's open file (a sync pass calls this so fresh data can go up)."""
        async with trio.open_nursery() as nursery:
            for c in list(self.collectors.values()):
                nursery.start_soon(c.finish_open_file)

    @property
    def capture_dir(self) -> Path | None:
        """Where this agent writes capture files, or None when there is no data manager."""
        dm = self.config.data_manager
        return dm.capture_dir_path() if dm else None

    # -- running -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover, build resources, start the tree; signals readiness; runs until cancelled."""
        self._wall = WallClock()
        try:
            if self.capture_dir is not None:
                await self._recover(self.capture_dir)
            plans = self.config.capture_plan()
            self._build_resources(self.config)
            async with trio.open_nursery() as nursery:
                await nursery.start(self._root.run)
                if self.mongo_sink is not None:
                    await self._root.start_child(ChildSpec("mongo_sink", self.mongo_sink.run))
                await self._root.start_child(ChildSpec("remotes", self.remotes.run))
                await self._root.start_child(ChildSpec("metronome", self._metronome.run))
                await self._root.start_child(ChildSpec("fsync_rounds", self._fsync_rounds.run))
                await self._root.start_child(ChildSpec("capture", self._capture.run))
                for plan in plans:
                    await self._start_collector(plan)
                for name, actor in (("sync", self.sync), ("governor", self.governor),
                                    ("config_watcher", self.watcher), ("control", self.control),
                                    ("metrics", self.metrics)):
                    if actor is not None:
                        await self._root.start_child(ChildSpec(name, actor.run))
                await self._follow_capture_control()
                log.info(
                    "agent running",
                    extra={"part_id": self.part_id, "collectors": len(self.collectors),
                           "capture_dir": str(self.capture_dir)},
                )
                self._ready.set()
                task_status.started()
        finally:
            with trio.move_on_after(5, shield=True):
                await self._registry.close_all()

    async def wait_ready(self) -> None:
        """Wait until every collector has started."""
        await self._ready.wait()

    async def _recover(self, capture_dir: Path) -> None:
        recoveries = await run_blocking(recover_dir, capture_dir)
        for r in recoveries:
            if r.empty:
                continue  # a file opened ahead that got no record: removed, nothing was lost
            extra = {"path": str(r.original), "records": r.records}
            if r.damage:
                extra.update(damage_offset=r.damage.offset, damage=r.damage.reason)
            if r.result is None:
                log.error("unreadable capture file set aside as .corrupt", extra=extra)
            else:
                log.warning("recovered capture file left by a crash", extra=extra)
        self._recovered += sum(1 for r in recoveries if r.result is not None)

    def _build_resources(self, config: RobotConfig) -> None:
        wanted = {p.resource.name for p in config.capture_plan() if p.resource.remote is None}
        refs = [r for r in config.resources() if r.remote is None]
        failures = self._registry.reconcile(refs)
        for name in [k for k in self._unavailable if "|" not in k]:
            del self._unavailable[name]
        for ref in refs:
            exc = failures.get(ref.name)
            if exc is not None and ref.name in wanted:
                log.error("resource could not be built; its capture methods are not running",
                          extra={"resource": f"{ref.type}/{ref.name}", "model": ref.model, "error": str(exc)})
                self._unavailable[ref.name] = f"{ref.type}/{ref.name}: {exc}"

    async def _start_collector(self, plan: CaptureMethodPlan) -> None:
        try:
            resource = (self.remotes.proxy(plan.resource) if plan.resource.remote is not None
                        else self._registry.get(plan.resource.name))
        except Exception:
            return  # already reported by _build_resources
        dm = self.config.data_manager
        assert dm is not None and self._wall is not None  # capture_plan() is empty without a data manager
        collector = Collector(plan, resource, collector_settings(dm, self.part_id), self._wall,
                              on_tabular=self._to_mongo, metronome=self._metronome,
                              fsync_rounds=self._fsync_rounds)
        collector.faults = self.faults
        collector.ledger = self.ledger
        self.collectors[collector.name] = collector
        await self._capture.start_child(ChildSpec(collector.name, collector.run, restart=Restart.TRANSIENT,
                                                  backoff=COLLECTOR_BACKOFF))

    async def _stop_collector(self, name: str) -> None:
        """Stop a collector after its capture in flight (cancel it if that takes too long)."""
        collector = self.collectors.pop(name, None)
        if collector is None:
            return
        collector.request_stop()
        with trio.move_on_after(STOP_GRACE_S):
            await collector.stopped.wait()
        try:
            await self._capture.stop_child(name)  # cancels it if the grace ran out; waits for it to be gone
        except KeyError:
            pass  # it had ended and the supervisor already let it go
        self._retired = self._retired.plus(collector.statistics())

    # -- reconfiguration -----------------------------------------------------------------

    async def apply_config(self, new: RobotConfig, revision: int | None = None) -> None:
        """Change the running agent to `new`, touching only what changed; no reading is lost. The
        capture control sensor's overrides in force stay applied on top of `new` (none once `new`
        names no capture_control_sensor)."""
        async with self._reload_lock:
            keep = self.config.overrides if new.data_manager and new.data_manager.capture_control_sensor else ()
            await self._apply(new.with_overrides(keep), revision, "applying config")
            await self._follow_capture_control()

    async def apply_overrides(self, overrides: tuple[CaptureOverride, ...]) -> None:
        """Apply the capture control sensor's `overrides` (() for none: the config as it is) to the
        running config, exactly as a config edit: only changed collectors are touched."""
        async with self._reload_lock:
            if overrides != self.config.overrides:
                await self._apply(self.config.with_overrides(overrides), None, "applying capture control overrides")

    async def _follow_capture_control(self) -> None:
        """Run the capture control actor while the config names a capture_control_sensor."""
        dm = self.config.data_manager
        wanted = dm is not None and dm.capture_control_sensor is not None
        running = self._root.has_child("capture_control")
        if wanted and not running:
            await self._root.start_child(ChildSpec("capture_control", self.capture_control.run))
        elif running and not wanted:
            await self._root.stop_child("capture_control")

    async def _apply(self, new: RobotConfig, revision: int | None, what: str) -> None:
        """Change the running agent to `new` (the reload lock held)."""
        old = self.config
        diff = diff_configs(old, new)
        log.info(what, extra={"revision": revision, "changes": diff.summary()})
        by_key = {c.plan.key: name for name, c in self.collectors.items()}
        log_collector_changes(diff, by_key, revision)
        for key in [*diff.removed, *(p.key for p in diff.restarted)]:
            if key in by_key:
                await self._stop_collector(by_key[key])
            self._unavailable.pop(key, None)
        self.config = new
        self.remotes.reconfigure(new.remotes)
        self.part_id = part_id_of(new) if old.cloud.id != new.cloud.id else self.part_id
        if diff.resources_changed:
            self._build_resources(new)
            await self._registry.close_retired()
        dm = new.data_manager
        if dm is not None and dm.mongo_capture_config.uri and self.mongo_sink is None:
            self.mongo_sink = MongoSink(dm.mongo_capture_config)
            await self._root.start_child(ChildSpec("mongo_sink", self.mongo_sink.run))
        elif diff.mongo_changed and self.mongo_sink is not None:
            self.mongo_sink.reconfigure(dm.mongo_capture_config if dm else None)
        if dm is not None:  # the new dir first; earlier ones are still synced until they are empty
            current = dm.capture_dir_path()
            self._capture_dirs = [current, *(d for d in self._capture_dirs if d != current)]
        for plan in [*diff.restarted, *diff.added]:
            await self._start_collector(plan)
        for plan in diff.rate_changed:
            name = by_key.get(plan.key)
            if name in self.collectors:
                self.collectors[name].set_frequency(plan.frequency_hz)
                self.collectors[name].plan = plan
        await self._apply_sync(new, diff)
        if self.governor is not None and dm is not None and diff.governor_changed:
            self.governor.reconfigure(dm.capture_dir_path(), every_nth=dm.delete_every_nth_when_disk_full,
                                      capture_enabled=new.capture_enabled)
        if self.control is not None and (old.network != new.network or old.cloud.secret != new.cloud.secret):
            await self._root.stop_child("control")
            self.control = self._make_control(new)
            await self._root.start_child(ChildSpec("control", self.control.run))
        if revision is not None:
            self.revision = revision

    async def _apply_sync(self, new: RobotConfig, diff) -> None:
        if diff.sync_restart:
            if self.sync is not None and self._root.has_child("sync"):
                await self._root.stop_child("sync")
            self.sync = None
            self.sync_off_reason = self._sync_off_reason(new)
            if self.sync_off_reason is None:
                self.sync = self._make_scheduler(new)
                await self._root.start_child(ChildSpec("sync", self.sync.run))
            return
        if self.sync is None:
            return
        if diff.sync_interval_s is not None:
            self.sync.interval_s = diff.sync_interval_s
        if diff.sync_threads is not None:
            self.sync.set_max_uploads(diff.sync_threads)
        self.sync.should_sync = self._selective_syncer(new)

    # -- status --------------------------------------------------------------------------

    def statistics(self) -> AgentStats:
        """A snapshot of every actor."""
        return AgentStats(
            part_id=self.part_id,
            capture_dir=str(self.capture_dir),
            collectors=tuple(c.statistics() for c in self.collectors.values()),
            unavailable=tuple(self._unavailable.values()),
            recovered_files=self._recovered,
            supervisors=(self._root.statistics(), self._capture.statistics()),
            sync=self.sync.statistics() if self.sync else None,
            sync_off_reason=self.sync_off_reason,
            governor=self.governor.statistics() if self.governor else None,
            mongo=self.mongo_sink.statistics() if self.mongo_sink else None,
            config=self.watcher.statistics() if self.watcher else None,
            revision=self.revision,
            control_address=(f"{self.control.host}:{self.control.bound_port}"
                             if self.control and self.control.bound_port else None),
            retired=self._retired,
            remotes=self.remotes.statistics(),
            served=self.resource_server.statistics() if self.resource_server else None,
            capture_control=(self.capture_control.statistics()
                             if self._root.has_child("capture_control") else None),
        )

