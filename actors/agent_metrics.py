"""The agent's Prometheus metrics and health, built at scrape time from its statistics.

Nothing here runs on the capture path: `AgentCollector.collect` reads `Agent.statistics()` (the
frozen records every actor already keeps) when Prometheus scrapes, so an agent nobody scrapes pays
nothing. Metric names and what they mean are listed in docs/agent.md ("Metrics and health").
`TreeHealth` is the health rule shared by `GET /v1/health` and the systemd watchdog pings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from capsync import __version__

if TYPE_CHECKING:
    from capsync.actors.agent import Agent
    from capsync.actors.agent_stats import AgentStats
    from capsync.actors.sync_scheduler import SyncScheduler

#: A child of the supervision tree may be down (waiting out its restart backoff) this long before
#: the agent counts as unhealthy: longer than any backoff cap in the tree (collectors: 10 s).
DOWN_GRACE_S = 60.0



class TreeHealth:
    """The agent's health rule, shared by `GET /v1/health` and the systemd watchdog pings: healthy
    while no child of the supervision tree has been down (waiting to be restarted) for more than
    DOWN_GRACE_S. A child restarting with backoff is not a problem; one that stays down is."""

    def __init__(self) -> None:
        self._down_since: dict[str, float] = {}  # supervisor/child -> when first seen down

    def problems(self, stats: AgentStats, now: float) -> list[str]:
        """Every child down for longer than DOWN_GRACE_S, with its last error; `now` is on the
        clock of earlier calls (the agent's Trio clock)."""
        problems = []
        down = set()
        for sup in stats.supervisors:
            for child in sup.children:
                if child.running:
                    continue
                key = f"{sup.name}/{child.name}"
                down.add(key)
                since = self._down_since.setdefault(key, now)
                if now - since > DOWN_GRACE_S:
                    problems.append(f"{key} has been down for {now - since:.0f} s (restarts {child.restarts}; "
                                    f"last error: {child.last_error})")
        for key in [k for k in self._down_since if k not in down]:
            del self._down_since[key]
        return problems


def _collector_label(name: str) -> str:
    return name.removeprefix("collector ")


class AgentCollector:
    """A prometheus_client custom collector over one agent's statistics."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        """The agent's metric families, read from its statistics now."""
        s = self._agent.statistics()
        yield InfoMetricFamily("capsync_agent", "The agent: its part and capsync version",
                               value={"part_id": s.part_id, "version": __version__})
        yield GaugeMetricFamily("capsync_agent_config_revision", "The config revision running", value=s.revision)
        yield from _collectors(s)
        yield from _totals(s)
        yield from _sync(s, self._agent.sync)
        yield from _disk(s)
        yield from _actors(s)


def _collectors(s: AgentStats) -> Iterator[Metric]:
    labels = ["collector"]
    fams = {
        "captured": CounterMetricFamily("capsync_agent_collector_captured", "Readings captured", labels=labels),
        "failed": CounterMetricFamily("capsync_agent_collector_failures",
                                      "Captures that failed (resource errors and timeouts)", labels=labels),
        "dropped": CounterMetricFamily("capsync_agent_collector_dropped",
                                       "Readings the disk refused (ENOSPC, EIO, ...): lost, and counted", labels=labels),
        "skipped": CounterMetricFamily("capsync_agent_collector_skipped",
                                       "Ticks the resource had nothing to capture (a filter declined): not failures",
                                       labels=labels),
        "late_ticks": CounterMetricFamily("capsync_agent_collector_late_ticks", "Ticks captured late", labels=labels),
        "missed_ticks": CounterMetricFamily("capsync_agent_collector_missed_ticks",
                                            "Ticks missed (overdue past the catch-up window)", labels=labels),
        "files_finished": CounterMetricFamily("capsync_agent_collector_files_finished",
                                              "Capture files finished", labels=labels),
        "bytes_written": CounterMetricFamily("capsync_agent_collector_written_bytes",
                                             "Bytes appended to capture files", labels=labels),
    }
    target = GaugeMetricFamily("capsync_agent_collector_target_hz", "Configured capture rate", labels=labels)
    measured = GaugeMetricFamily("capsync_agent_collector_rate_hz", "Measured capture rate over the last second",
                                 labels=labels)
    for c in s.collectors:
        label = [_collector_label(c.name)]
        for field, fam in fams.items():
            fam.add_metric(label, getattr(c, field))
        target.add_metric(label, c.target_hz)
        if c.measured_hz is not None:
            measured.add_metric(label, c.measured_hz)
    yield from fams.values()
    yield target
    yield measured


def _totals(s: AgentStats) -> Iterator[Metric]:
    """Whole-agent totals: these include collectors stopped by config reloads."""
    for name, value, doc in (("captured", s.captured, "Readings captured by all collectors since start"),
                             ("failures", s.failed, "Captures that failed, all collectors"),
                             ("dropped", s.dropped, "Readings the disk refused, all collectors"),
                             ("skipped", s.skipped, "Ticks with nothing to capture (not failures), all collectors"),
                             ("written_bytes", s.bytes_written, "Bytes appended to capture files")):
        yield CounterMetricFamily(f"capsync_agent_{name}", doc, value=value)
    yield GaugeMetricFamily("capsync_agent_collectors", "Collectors running", value=len(s.collectors))
    yield GaugeMetricFamily("capsync_agent_unavailable_capture_methods",
                            "Capture methods whose resource could not be built", value=len(s.unavailable))


def _sync(s: AgentStats, scheduler: SyncScheduler | None) -> Iterator[Metric]:
    sync = s.sync
    yield GaugeMetricFamily("capsync_agent_sync_enabled", "1 while sync runs, 0 when it is off",
                            value=0 if sync is None else 1)
    if sync is None:
        return
    yield GaugeMetricFamily("capsync_agent_backlog_files", "Files ready to sync and not synced yet",
                            value=sync.backlog_files)
    yield GaugeMetricFamily("capsync_agent_backlog_bytes", "Bytes of the files ready to sync", value=sync.backlog_bytes)
    yield GaugeMetricFamily("capsync_agent_oldest_unsynced_age_seconds",
                            "Age (since last modified) of the oldest file waiting to sync; 0 when none waits",
                            value=(scheduler.oldest_unsynced_age_s() if scheduler else None) or 0.0)
    yield GaugeMetricFamily("capsync_agent_sync_in_flight", "Uploads in flight", value=sync.in_flight)
    for name, value, doc in (
        ("sync_files", sync.files_synced, "Files synced (committed by the cloud, then deleted here)"),
        ("sync_bytes", sync.bytes_sent, "Bytes sent to the cloud"),
        ("sync_upload_failures", sync.upload_failures, "Upload attempts that failed (each is retried with backoff)"),
        ("sync_set_aside", sync.set_aside, "Files the cloud refused for good, moved to failed/"),
        ("sync_salvaged", sync.salvaged, "Damaged capture files whose intact records were synced"),
        ("sync_unverified_commits", sync.unverified_commits, "Commit answers that did not match the local file"),
        ("sync_passes", sync.passes, "Sync passes run"),
        ("sync_skipped_passes", sync.skipped_by_selective_syncer, "Sync passes the selective syncer skipped"),
    ):
        yield CounterMetricFamily(f"capsync_agent_{name}", doc, value=value)
    yield GaugeMetricFamily("capsync_agent_cloud_reachable", "0 while the last upload found the cloud unavailable",
                            value=0 if sync.cloud_error else 1)
    if sync.last_pass is not None:
        yield GaugeMetricFamily("capsync_agent_sync_last_pass_timestamp_seconds", "When the last sync pass started",
                                value=sync.last_pass.started_ns / 1e9)


def _disk(s: AgentStats) -> Iterator[Metric]:
    gov = s.governor
    if gov is None:
        return
    if gov.usage_percent is not None:
        yield GaugeMetricFamily("capsync_agent_disk_used_ratio", "Share of the capture dir's file system in use (0-1)",
                                value=gov.usage_percent / 100)
    yield CounterMetricFamily("capsync_agent_governor_deleted_files", "Capture files the disk-full rule deleted",
                              value=gov.files_deleted)
    yield CounterMetricFamily("capsync_agent_governor_deleted_bytes", "Bytes the disk-full rule deleted",
                              value=gov.bytes_deleted)


def _actors(s: AgentStats) -> Iterator[Metric]:
    labels = ["supervisor", "actor"]
    restarts = CounterMetricFamily("capsync_agent_actor_restarts", "Restarts of each actor by its supervisor",
                                   labels=labels)
    up = GaugeMetricFamily("capsync_agent_actor_up", "1 while the actor runs, 0 while it waits to be restarted",
                           labels=labels)
    for sup in s.supervisors:
        for child in sup.children:
            label = [sup.name, _collector_label(child.name)]
            restarts.add_metric(label, child.restarts)
            up.add_metric(label, 1 if child.running else 0)
    yield restarts
    yield up


def agent_registry(agent: Agent) -> CollectorRegistry:
    """A registry holding the agent's metrics and its process's CPU and memory."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    ProcessCollector(registry=registry)
    return registry
