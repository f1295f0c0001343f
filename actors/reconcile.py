"""What changed between two configs, in terms of what the running agent must start, stop or adjust.

Reconfiguration is a diff: only what changed is touched. The rules:

- a capture method is identified by its plan key (resource, method and additional_params), so a
  changed `additional_params` is a removed method plus an added one (a new file);
- a changed frequency alone is applied to the running collector (its open file is kept);
- a changed retention policy, resource model or resource attributes, or tags set by a capture
  control override, restarts that collector (a new file carries the new tags);
- a change to what every file carries (capture_dir, tags, file limits, part id) restarts all
  collectors, each finishing its file first;
- sync restarts when it is switched on or off or when the cloud identity or the additional sync
  paths change; a new interval or thread limit is applied in place (a new capture_dir needs no
  restart: sync keeps looking in the old dir until it is empty);
- the MongoDB sink follows `mongo_capture_config`, the governor `delete_every_nth_when_disk_full`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from capsync.actors.collector import collector_name
from capsync.runtime.config import CaptureMethodPlan, DataManagerAttributes, RobotConfig

log = logging.getLogger("capsync.agent")

_COLLECTOR_WIDE = ("capture_dir", "tags", "max_file_size_kb", "max_binary_file_size_kb", "max_file_age_secs",
                   "fsync_interval_secs", "resource_timeout_secs")


@dataclass(frozen=True)
class ConfigDiff:
    """The actions that turn the running agent's config into the new one."""

    added: tuple[CaptureMethodPlan, ...] = ()
    removed: tuple[str, ...] = ()  # plan keys
    rate_changed: tuple[CaptureMethodPlan, ...] = ()
    restarted: tuple[CaptureMethodPlan, ...] = ()
    resources_changed: frozenset[str] = field(default_factory=frozenset)
    old_capture_dir: Path | None = None  # set when capture_dir changed
    sync_restart: bool = False
    sync_interval_s: float | None = None
    sync_threads: int | None = None
    mongo_changed: bool = False
    governor_changed: bool = False

    @property
    def empty(self) -> bool:
        """True when nothing at all needs doing."""
        return self == ConfigDiff()

    def summary(self) -> str:
        """One line for the log: what the reload will do."""
        parts = [f"{label} {len(v)}" for label, v in (("add", self.added), ("remove", self.removed),
                 ("rate", self.rate_changed), ("restart", self.restarted)) if v]
        if self.old_capture_dir is not None:
            parts.append("new capture_dir")
        for flag, label in ((self.sync_restart, "restart sync"), (self.mongo_changed, "mongo sink"),
                            (self.governor_changed, "governor"), (self.sync_interval_s is not None, "sync interval"),
                            (self.sync_threads is not None, "sync threads")):
            if flag:
                parts.append(label)
        return ", ".join(parts) or "nothing to change"


def _dm_field(dm: DataManagerAttributes | None, name: str) -> object:
    return None if dm is None else getattr(dm, name)


def diff_configs(old: RobotConfig, new: RobotConfig) -> ConfigDiff:
    """The changes from `old` to `new` (both valid)."""
    old_dm, new_dm = old.data_manager, new.data_manager
    old_res = {r.name: r for r in old.resources()}
    new_res = {r.name: r for r in new.resources()}
    resources_changed = frozenset(n for n in old_res.keys() | new_res.keys() if old_res.get(n) != new_res.get(n))

    collector_wide = old.cloud.id != new.cloud.id or any(
        _dm_field(old_dm, f) != _dm_field(new_dm, f) for f in _COLLECTOR_WIDE)
    old_plans = {p.key: p for p in old.capture_plan()}
    new_plans = {p.key: p for p in new.capture_plan()}
    added = tuple(p for k, p in new_plans.items() if k not in old_plans)
    removed = tuple(k for k in old_plans if k not in new_plans)
    rate, restart = [], []
    for key in old_plans.keys() & new_plans.keys():
        a, b = old_plans[key], new_plans[key]
        if collector_wide or a.retention_policy != b.retention_policy or a.resource != b.resource \
                or a.resource.name in resources_changed or a.tags != b.tags:
            restart.append(b)
        elif a.frequency_hz != b.frequency_hz:
            rate.append(b)

    old_dir = old_dm.capture_dir_path() if old_dm else None
    new_dir = new_dm.capture_dir_path() if new_dm else None
    sync_identity = lambda c: (c.sync_enabled, c.cloud, tuple(_dm_field(c.data_manager, "additional_sync_paths") or ()))  # noqa: E731
    sync_restart = sync_identity(old) != sync_identity(new)
    interval = _dm_field(new_dm, "sync_interval_mins")
    threads = _dm_field(new_dm, "maximum_num_sync_threads")
    return ConfigDiff(
        added=added,
        removed=removed,
        rate_changed=tuple(rate),
        restarted=tuple(restart),
        resources_changed=resources_changed,
        old_capture_dir=old_dir if (old_dir is not None and new_dir is not None and old_dir != new_dir) else None,
        sync_restart=sync_restart,
        sync_interval_s=new_dm.sync_interval_secs if new_dm and interval != _dm_field(old_dm, "sync_interval_mins") else None,
        sync_threads=threads if new_dm and threads != _dm_field(old_dm, "maximum_num_sync_threads") else None,
        mongo_changed=_dm_field(old_dm, "mongo_capture_config") != _dm_field(new_dm, "mongo_capture_config"),
        governor_changed=any(_dm_field(old_dm, f) != _dm_field(new_dm, f)
                             for f in ("delete_every_nth_when_disk_full", "capture_dir", "capture_disabled")),
    )


def log_collector_changes(diff: ConfigDiff, by_key: dict[str, str], revision: int | None) -> None:
    """One line per collector a reload touches, naming it and what changes."""
    for plan in diff.added:
        log.info("config change: collector added", extra={"collector": collector_name(plan), "revision": revision,
                                                           "hz": plan.frequency_hz})
    for key in diff.removed:
        log.info("config change: collector removed", extra={"collector": by_key.get(key, key), "revision": revision})
    for plan in diff.restarted:
        log.info("config change: collector restarted with new settings",
                 extra={"collector": collector_name(plan), "revision": revision})
    for plan in diff.rate_changed:
        log.info("config change: collector rate changed", extra={"collector": collector_name(plan),
                                                                  "revision": revision, "hz": plan.frequency_hz})
