"""A one-line human summary of the agent's statistics, for the demo and periodic status logs."""

from __future__ import annotations

from actors.agent import AgentStats


def human_bytes(n: float) -> str:
    """`n` bytes as a short human string: 512 B, 3.2 KiB, 1.5 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def status_line(stats: AgentStats, rate: float | None = None) -> str:
    """`collectors 7 | readings 1234 (98.0/s) | failed 0 | late 3 | files 12 | 45.1 KiB`."""
    parts = [f"collectors {len(stats.collectors)}"]
    readings = f"readings {stats.captured}"
    if rate is not None:
        readings += f" ({rate:.1f}/s)"
    parts.append(readings)
    parts.append(f"failed {stats.failed}")
    parts.append(f"late {sum(c.late_ticks for c in stats.collectors)}")
    parts.append(f"files {stats.files_finished}")
    parts.append(human_bytes(stats.bytes_written))
    if stats.unavailable:
        parts.append(f"unavailable {len(stats.unavailable)}")
    return " | ".join(parts)
