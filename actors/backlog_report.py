"""`capsync backlog [CONFIG] [--retry-failed] [--json]`: what waits to sync and what was set aside
(runtime/backlog.py), as text for people or JSON for scripts."""

from __future__ import annotations

import time
from typing import Any

from capsync.actors.status_line import human_bytes
from capsync.actors.status_report import plain
from capsync.runtime.backlog import Backlog, RetryOutcome


def _age(mtime_ns: int | None, now_s: float) -> str:
    if mtime_ns is None:
        return "-"
    s = max(0.0, now_s - mtime_ns / 1e9)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.1f} {unit} ago"
    return f"{s:.0f} s ago"


def backlog_json(backlog: Backlog, retried: list[RetryOutcome] | None = None) -> dict[str, Any]:
    """The backlog (and what a retry did) as JSON-like data."""
    out = {"waiting_files": backlog.files, "waiting_bytes": backlog.bytes, **plain(backlog)}
    if retried is not None:
        out["retried"] = [{"path": str(r.file.path), "put_back": r.put_back, "detail": r.detail} for r in retried]
    return out


def render_backlog(backlog: Backlog, retried: list[RetryOutcome] | None = None, now_s: float | None = None) -> str:
    """A human report: waiting by source, set aside with why, and what a retry did."""
    now_s = time.time() if now_s is None else now_s
    oldest = min((g.oldest_mtime_ns for g in backlog.waiting if g.oldest_mtime_ns is not None), default=None)
    lines = [f"waiting to sync: {_files(backlog.files)}, {human_bytes(backlog.bytes)}"
             + (f", oldest modified {_age(oldest, now_s)}" if oldest is not None else "")]
    for g in backlog.waiting:
        lines.append(f"  {g.source:<48} {g.files:>7} {'file ' if g.files == 1 else 'files'} {human_bytes(g.bytes):>10}   oldest {_age(g.oldest_mtime_ns, now_s)}")
    if backlog.open_files:
        lines.append(f"  being written: {backlog.open_files} .prog file{'' if backlog.open_files == 1 else 's'} (they sync once finished)")
    lines.append(f"set aside in failed/: {_files(len(backlog.set_aside))}")
    for s in backlog.set_aside:
        when = f" (set aside {s.set_aside_at})" if s.set_aside_at else ""
        lines.append(f"  {s.path}  {s.kind}, {human_bytes(s.size)}{when}")
        lines.append(f"      why: {s.why}")
        if s.back_to is None:
            lines.append(f"      not retried: {s.why_kept}")
    if retried is not None:
        back = sum(1 for r in retried if r.put_back)
        lines.append(f"retry: {_files(back)} put back to sync" + (", the agent uploads them at its next pass" if back else ""))
        lines += [f"  {r.file.path}: {r.detail}" for r in retried]
    return "\n".join(lines)


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"
