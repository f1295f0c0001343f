"""The `selective-syncer` sensor model: tells the sync scheduler whether to sync now.

Name it in the data manager's `selective_syncer_name`; before each sync pass the scheduler reads
it and skips the pass when the reading says `{"should_sync": false}`. Its answer can be flipped:

- attribute `should_sync` (bool, default true): the answer when nothing else decides;
- attribute `flag_file` (path): when set and the file exists, its content decides
  (`false`, `0`, `no` or `off` mean false; anything else true), so a shell script, a cron job
  or a test in another process can flip it by writing one word;
- `set_should_sync(bool)`: flips it in-process (tests, user code).
"""

from __future__ import annotations

from pathlib import Path

from .registry import ResourceLookup, register_model
from .resource import ResourceError

MODEL = "selective-syncer"
_FALSE = {"false", "0", "no", "off"}


class SelectiveSyncer:
    """A sensor whose `Readings` answer `{"should_sync": bool}`."""

    type = "sensor"
    model = MODEL

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        self.name = name
        value = attributes.get("should_sync", True)
        if not isinstance(value, bool):
            raise ResourceError(f"attribute 'should_sync' must be true or false, got {value!r}")
        self._should_sync = value
        flag = attributes.get("flag_file")
        self._flag = Path(flag).expanduser() if flag else None

    def set_should_sync(self, value: bool) -> None:
        """Set the answer (used when no flag file decides)."""
        self._should_sync = bool(value)

    def should_sync(self) -> bool:
        """The current answer."""
        if self._flag is not None:
            try:
                return self._flag.read_text().strip().lower() not in _FALSE
            except FileNotFoundError:
                pass
        return self._should_sync

    async def capture(self, method: str, params: dict) -> dict:
        """`Readings` -> {"should_sync": bool}."""
        if method != "Readings":
            raise ResourceError(f"sensor {self.name!r} ({MODEL}) has no method {method!r}; it has Readings")
        return {"should_sync": self.should_sync()}

    async def close(self) -> None:
        """Nothing to release."""


register_model("sensor", MODEL, SelectiveSyncer)
