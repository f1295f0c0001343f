"""Which committed files are past their `retention_policy`: a pure rule, shared by every Store.

A capture file carries the `retention_policy` of the capture method that wrote it in its header
metadata (`{"days": N, "binary_limit_gb": B, "tabular_limit_gb": T}`, each optional). The cloud
applies it like this (docs/cloud.md):

- **days**: days are UTC days. A file committed on UTC day D is deleted from UTC day D + N on,
  whatever the time of day: `days: 1` keeps today's data and deletes everything committed before
  the last UTC midnight. `days: 0` keeps nothing past the next sweep.
- **binary_limit_gb / tabular_limit_gb**: a limit on the bytes one capture method keeps in the
  cloud — the files of one (part, resource type, resource name, method) of that data kind. While
  the group's total is above the limit, its oldest file is deleted (oldest by capture time: the
  file's `created_ns`, then its commit time, then its file id). The limit in force is the one of
  the group's newest file (the current config); files without a policy count toward it too.
  1 GB is 10^9 bytes; fractions are accepted (the agent's config allows whole numbers only).

Deleting a file deletes its rows and bytes; the file row stays, marked expired, so a late retry
of the upload is still answered "committed" and stores nothing again.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

from capsync.cloud.store import CommittedFile

DAY_NS = 86_400 * 10**9
GB = 10**9
_LIMIT_KEYS = {"binary": "binary_limit_gb", "tabular": "tabular_limit_gb"}


@dataclass(frozen=True)
class Expiry:
    """One file to delete, and why (for the log)."""

    file: CommittedFile
    reason: str


def _number(value: Any) -> float | None:
    """A usable non-negative finite number from a policy field, or None (ignored)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


def policy_of(f: CommittedFile) -> dict[str, Any]:
    """The retention_policy dict of a file's metadata ({} when it has none or it is malformed)."""
    policy = f.metadata.get("retention_policy") if isinstance(f.metadata, dict) else None
    return policy if isinstance(policy, dict) else {}


def utc_day(ns: int) -> int:
    """The UTC day number (days since 1970-01-01) of a time in ns."""
    return ns // DAY_NS


def past_days(f: CommittedFile, now_ns: int) -> bool:
    """Whether a file's `days` policy says it is gone at `now_ns` (UTC day boundaries)."""
    days = _number(policy_of(f).get("days"))
    return days is not None and utc_day(now_ns) >= utc_day(f.committed_ns) + days


def _age_key(f: CommittedFile) -> tuple[int, int, str]:
    return (f.created_ns or f.committed_ns, f.committed_ns, f.file_id)


def due(files: Iterable[CommittedFile], now_ns: int) -> list[Expiry]:
    """The files among `files` (committed, not yet expired) that retention deletes at `now_ns`.

    Files already expired and plain files (no resource, no policy) are never returned.
    """
    out: list[Expiry] = []
    groups: dict[tuple[str, str, str, str, str], list[CommittedFile]] = defaultdict(list)
    for f in files:
        if f.expired_ns is not None or f.data_kind not in _LIMIT_KEYS:
            continue
        if past_days(f, now_ns):
            out.append(Expiry(f, f"older than {policy_of(f)['days']} UTC day(s)"))
            continue
        groups[(f.part_id, f.resource_type, f.resource_name, f.method, f.data_kind)].append(f)
    for (_, _, _, _, kind), group in groups.items():
        group.sort(key=_age_key)
        limit_gb = _number(policy_of(group[-1]).get(_LIMIT_KEYS[kind]))
        if limit_gb is None:
            continue
        limit = limit_gb * GB
        total = sum(f.size for f in group)
        for f in group:
            if total <= limit:
                break
            total -= f.size
            out.append(Expiry(f, f"{_LIMIT_KEYS[kind]} {limit_gb:g} exceeded"))
    return out
