"""The `json-file` sensor model: its reading is the JSON object a file holds, read afresh each time.

For values another program sets at run time, e.g. the capture control sensor's overrides
(`capture_control_sensor`, docs/operations.md): a script, a cron job or a test writes the file
(best by writing a temporary file and renaming it over), and the next reading has it. A missing
or empty file reads as `{}`; a file that is not a JSON object, or is bigger than MAX_BYTES, fails
the reading with a ResourceError naming the file.

Attributes: `path` (required; `~` is expanded).
"""

from __future__ import annotations

import json
from pathlib import Path

from capsync.runtime.blocking import run_blocking

from .registry import ResourceLookup, register_model
from .resource import ResourceError

MODEL = "json-file"
#: The largest file that is read.
MAX_BYTES = 256 * 1024


def _read(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(MAX_BYTES + 1)


class JsonFileSensor:
    """A sensor whose `Readings` are the JSON object in a file."""

    type = "sensor"
    model = MODEL

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        self.name = name
        path = attributes.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ResourceError("attribute 'path' (the JSON file to read) is required")
        self.path = Path(path).expanduser()

    async def capture(self, method: str, params: dict) -> dict:
        """`Readings` -> the file's JSON object ({} when the file is missing or empty)."""
        if method != "Readings":
            raise ResourceError(f"sensor {self.name!r} ({MODEL}) has no method {method!r}; it has Readings")
        try:
            data = await run_blocking(_read, self.path)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ResourceError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if len(data) > MAX_BYTES:
            raise ResourceError(f"{self.path} is bigger than {MAX_BYTES} bytes")
        if not data.strip():
            return {}
        try:
            value = json.loads(data)
        except ValueError as exc:
            raise ResourceError(f"{self.path} is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ResourceError(f"{self.path} holds {type(value).__name__}, not a JSON object")
        return value

    async def close(self) -> None:
        """Nothing to release."""


register_model("sensor", MODEL, JsonFileSensor)
