"""The agent's status as plain data (for `capsync status --json`) and as text (for `capsync status`)."""

from __future__ import annotations

import dataclasses
import enum
import time
from typing import Any

from capsync.actors.status_line import human_bytes


def plain(value: Any) -> Any:
    """Dataclasses, enums, paths and tuples turned into JSON-like dicts, lists and scalars."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _when(ns: int | None) -> str:
    if not ns:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def render_status(s: dict[str, Any]) -> str:
    """A multi-line human report of a status dict as `plain(AgentStats)` plus `config` gives it."""
    lines = [f"part {s['part_id']}  capture dir {s['capture_dir']}"]
    cfg = s.get("config") or {}
    if cfg:
        line = f"config {cfg.get('path', '')} revision {s.get('revision')}"
        rej = cfg.get("rejected")
        if rej:
            line += f"  (revision {rej['revision']} rejected: {'; '.join(rej['issues'])})"
        lines.append(line)
    dropped = sum(c.get("dropped", 0) for c in s["collectors"])
    if dropped:
        lines.append(f"DROPPED {dropped} readings: the disk refused to store them (see each collector's last error)")
    lines.append(f"collectors ({len(s['collectors'])}):")
    for c in s["collectors"]:
        measured = c.get("measured_hz")
        rate = f"{c['target_hz']:g} Hz" + (f" (measured {measured:.1f})" if measured is not None else "")
        lines.append(f"  {c['name']:<56} {rate:<24} captured {c['captured']:<7} failed {c['failed']:<5} "
                     f"late {c['late_ticks']:<5} missed {c['missed_ticks']}"
                     + (f"  DROPPED {c['dropped']}" if c.get("dropped") else "")
                     + (f"  skipped {c['skipped']}" if c.get("skipped") else ""))
        if c.get("last_error"):
            lines.append(f"      last error: {c['last_error']}")
    for u in s.get("unavailable") or []:
        lines.append(f"  not running: {u}")
    control = s.get("capture_control")
    if control:
        active = ", ".join(_override_text(o) for o in control["active"]) or "none (capture follows the config)"
        lines.append(f"capture control sensor {control['sensor']} ({control['key']}): overrides {active}"
                     + (f"; last reading unusable: {control['last_error']}" if control.get("last_error") else ""))
    sync = s.get("sync")
    if sync:
        lines.append(f"sync to {sync['cloud_url']}: backlog {sync['backlog_files']} files "
                     f"({human_bytes(sync['backlog_bytes'])}), in flight {sync['in_flight']}, "
                     f"synced {sync['files_synced']} files ({human_bytes(sync['bytes_sent'])}), "
                     f"set aside {sync['set_aside']}")
        age = sync.get("oldest_unsynced_age_s")
        if age is not None:
            stale = "  (stale: waiting longer than " + _duration(sync.get("stale_after_s") or 0) + ")" \
                if age > (sync.get("stale_after_s") or float("inf")) else ""
            lines.append(f"  oldest unsynced file waiting {_duration(age)}{stale}")
        last = sync.get("last_pass")
        if last:
            lines.append(f"  last pass {_when(last['started_ns'])}: {_pass_summary(last)}")
        lines.append(f"  last upload: {_when(sync.get('last_upload_ns'))}")
        if sync.get("salvaged"):
            lines.append(f"  damaged capture files salvaged: {sync['salvaged']} (intact records synced, "
                         "damaged tails and reports in failed/)")
        if sync.get("skipped_by_selective_syncer"):
            lines.append(f"  passes skipped by the selective syncer: {sync['skipped_by_selective_syncer']}")
        if sync.get("credentials_refused"):
            lines.append(f"  CLOUD REFUSES THIS PART'S SECRET: {sync['cloud_error']}")
        elif sync.get("cloud_error"):
            lines.append(f"  cloud unavailable: {sync['cloud_error']}")
    else:
        lines.append(f"sync off: {s.get('sync_off_reason')}")
    for r in s.get("remotes") or []:
        lines.append(f"remote {r['name']} at {r['address']}: {r['state']}, {r['calls']} calls "
                     f"({r['failed_calls']} failed), {r['connects']} connects"
                     + (f"; last error: {r['last_error']}" if r.get("last_error") else ""))
    served = s.get("served")
    if served and (served["accepted"] or served["refused"]):
        lines.append(f"serving resources: {served['clients']} clients now, {served['calls']} calls, "
                     f"{served['refused']} clients refused")
    gov = s.get("governor")
    if gov:
        usage = "unknown" if gov["usage_percent"] is None else f"{gov['usage_percent']:.1f} % used"
        lines.append(f"disk: {usage} ({gov['state']}); governor deleted {gov['files_deleted']} files "
                     f"({human_bytes(gov['bytes_deleted'])}) in {gov['passes']} passes, warned {gov['warnings']} times"
                     + (f"; last error: {gov['last_error']}" if gov.get("last_error") else ""))
    mongo = s.get("mongo")
    if mongo:
        lines.append(f"mongodb sink: {mongo['target'] or 'off'}, written {mongo['written']}, queued "
                     f"{mongo['queued']}/{mongo['queue_size']}, dropped {mongo['dropped']}, failed {mongo['failed']}"
                     + (f"; last error: {mongo['last_error']}" if mongo.get("last_error") else ""))
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120 and s % 60:
        return f"{seconds:.0f} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _override_text(o: dict[str, Any]) -> str:
    parts = []
    if o.get("frequency_hz") is not None:
        parts.append(f"{o['frequency_hz']:g} Hz")
    if o.get("tags") is not None:
        parts.append("tags " + (",".join(o["tags"]) or "none"))
    return f"{o['resource_name']} {o['method']} " + " ".join(parts)


def _pass_summary(p: dict[str, Any]) -> str:
    if p.get("skipped"):
        return f"skipped: {p['skipped']}"
    s = f"uploaded {p['uploaded']} files ({human_bytes(p['bytes_sent'])}), {p['failed']} failed, {p['waiting']} waiting"
    if p.get("cloud_error"):
        s += f"; cloud unavailable: {p['cloud_error']}"
    return s
