"""A one-line human summary of the agent's statistics, for the demo and periodic status logs."""

from __future__ import annotations

import time

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from capsync.actors.agent_stats import AgentStats
    from capsync.actors.sync_scheduler import SyncStats


def human_bytes(n: float) -> str:
    """`n` bytes as a short human string: 512 B, 3.2 KiB, 1.5 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def sync_trouble(s: SyncStats) -> str:
    """Why nothing goes up now, as " (...)" for a status line, or "" when sync is well."""
    if s.credentials_refused:
        return " (the cloud refuses this part's secret)"
    if s.cloud_error:
        return " (cloud unreachable)"
    if s.last_pass is not None and s.last_pass.skipped:
        return " (paused by the selective syncer)"
    return ""


def status_line(stats: AgentStats, rate: float | None = None) -> str:
    """`collectors 7 | readings 1234 (98.0/s) | failed 0 | late 3 | files 12 | 45.1 KiB`."""
    parts = [f"collectors {len(stats.collectors)}"]
    readings = f"readings {stats.captured}"
    if rate is not None:
        readings += f" ({rate:.1f}/s)"
    parts.append(readings)
    parts.append(f"failed {stats.failed}")
    if stats.dropped:
        parts.append(f"DROPPED {stats.dropped} (disk refused writes)")
    parts.append(f"late {sum(c.late_ticks for c in stats.collectors)}")
    parts.append(f"files {stats.files_finished}")
    parts.append(human_bytes(stats.bytes_written))
    if stats.sync is not None:
        s = stats.sync
        parts.append(f"backlog {s.backlog_files} files/{human_bytes(s.backlog_bytes)}")
        parts.append(f"synced {s.files_synced} files")
        when = time.strftime("%H:%M:%S", time.localtime(s.last_upload_ns / 1e9)) if s.last_upload_ns else "never"
        parts.append(f"last upload {when}" + sync_trouble(s))
        parts.append(s.cloud_url)
    elif stats.sync_off_reason:
        parts.append(f"sync off: {stats.sync_off_reason}")
    if stats.unavailable:
        parts.append(f"unavailable {len(stats.unavailable)}")
    return " | ".join(parts)
