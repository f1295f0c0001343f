"""Capture control at run time: the overrides a capture control sensor's reading asks for.

The data manager's `capture_control_sensor` (`{"name": sensor, "key": key}`) names a sensor whose
reading under `key` is a list of overrides, each
`{"resource_name": str, "method": str, "capture_frequency_hz"?: number >= 0, "tags"?: [str]}`:
a frequency replaces the configured rate of that resource's method (0 pauses it), tags replace the
part's tags on what that method captures. The reading comes from a device or another program, so
it is hostile input: `parse_overrides` checks every item and returns either the overrides or one
reason why the reading cannot be used (the agent then follows the config). An absent key, `null`
or `[]` means "no overrides".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from capsync.runtime.config_models import TAG_PATTERN, show

#: How often the agent reads the capture control sensor.
POLL_INTERVAL_S = 0.1
#: The most overrides one reading may carry, and the most tags one override may set.
MAX_OVERRIDES = 1000
MAX_TAGS = 64
_FIELDS = ("resource_name", "method", "capture_frequency_hz", "tags")
_TAG = re.compile(TAG_PATTERN)


@dataclass(frozen=True)
class CaptureOverride:
    """What the control sensor asks of one resource's capture method; None leaves it as configured."""

    resource_name: str
    method: str
    frequency_hz: float | None = None
    tags: tuple[str, ...] | None = None


class BadOverrides(ValueError):
    """The reading cannot be used; the message says where and why (e.g. `overrides[2].tags[0]: ...`)."""


def parse_overrides(reading: Any, key: str) -> tuple[CaptureOverride, ...]:
    """The overrides in `reading[key]`; () for none; BadOverrides naming the first problem."""
    if not isinstance(reading, dict):
        raise BadOverrides(f"the reading is {show(reading)}, not an object of readings")
    value = reading.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadOverrides(f"{key}: expected a list of overrides, got {show(value)}")
    if len(value) > MAX_OVERRIDES:
        raise BadOverrides(f"{key}: {len(value)} overrides; at most {MAX_OVERRIDES}")
    out: dict[tuple[str, str], CaptureOverride] = {}
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        override = _override(item, where)
        ident = (override.resource_name, override.method)
        if ident in out:
            raise BadOverrides(f"{where}: a second override of {override.resource_name} {override.method}")
        out[ident] = override
    return tuple(out.values())


def _override(item: Any, where: str) -> CaptureOverride:
    if not isinstance(item, dict):
        raise BadOverrides(f"{where}: expected an object, got {show(item)}")
    unknown = [k for k in item if k not in _FIELDS]
    if unknown:
        raise BadOverrides(f"{where}: unknown field {show(unknown[0])} (known: {', '.join(_FIELDS)})")
    names = []
    for field in ("resource_name", "method"):
        v = item.get(field)
        if not isinstance(v, str) or not v or len(v) > 256:
            raise BadOverrides(f"{where}.{field}: expected a non-empty string, got {show(v)}")
        names.append(v)
    hz = item.get("capture_frequency_hz")
    if hz is not None and (isinstance(hz, bool) or not isinstance(hz, int | float) or not math.isfinite(hz) or hz < 0):
        raise BadOverrides(f"{where}.capture_frequency_hz: expected a number >= 0, got {show(hz)}")
    tags = item.get("tags")
    if tags is not None:
        if not isinstance(tags, list) or len(tags) > MAX_TAGS:
            raise BadOverrides(f"{where}.tags: expected a list of at most {MAX_TAGS} tags, got {show(tags)}")
        for j, tag in enumerate(tags):
            if not isinstance(tag, str) or not _TAG.match(tag) or len(tag) > 256:
                raise BadOverrides(f"{where}.tags[{j}]: {show(tag)} is not a tag (letters, digits, '_' and '-')")
        tags = tuple(tags)
    return CaptureOverride(names[0], names[1], None if hz is None else float(hz), tags)
