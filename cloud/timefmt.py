"""Times in the cloud's API: nanoseconds since the epoch, shown as RFC 3339 UTC text."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$"
)
_MIN_NS = -(2**63)
_MAX_NS = 2**63 - 1


def iso_from_ns(ns: int) -> str:
    """`ns` since the epoch as RFC 3339 UTC with nanoseconds, e.g. '2026-01-02T03:04:05.000000123Z'."""
    secs, rem = divmod(ns, 1_000_000_000)
    base = _iso_seconds(secs)
    return str(ns) if base is None else f"{base}.{rem:09d}Z"


@lru_cache(maxsize=4096)
def _iso_seconds(secs: int) -> str | None:
    # Cached: the rows of one file (and of one ingest round) fall within a few seconds.
    try:
        return datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return None


def parse_time(text: str) -> int:
    """ns since the epoch from an integer (ns) or an RFC 3339 timestamp; ValueError otherwise."""
    text = text.strip()
    if re.fullmatch(r"-?\d{1,19}", text):
        ns = int(text)
    else:
        m = _RFC3339.match(text)
        if not m:
            raise ValueError(f"not an RFC 3339 time or an integer of nanoseconds: {text[:64]!r}")
        year, month, day, hour, minute, second, frac, zone = m.groups()
        tz = timezone.utc
        if zone not in ("Z", "z"):
            sign = 1 if zone[0] == "+" else -1
            tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        dt = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz)
        whole = int(dt.timestamp())
        ns = whole * 1_000_000_000 + int((frac or "0").ljust(9, "0"))
    if not _MIN_NS <= ns <= _MAX_NS:
        raise ValueError("time out of range")
    return ns
