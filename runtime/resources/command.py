"""The `command` sensor model: runs a configured command and captures the JSON it prints.

Each `Readings` runs the command once (no shell: `command` is the argument list, or a string split
like a shell would) and parses its standard output as JSON. A JSON object is the reading as is;
any other JSON value is captured as `{"value": ...}`. A command that exits non-zero, prints
something that is not JSON, cannot be started, or runs longer than `timeout_secs` (it is then
killed) fails the capture with a ResourceError carrying the tail of its standard error.

Keep `timeout_secs` below the data manager's `resource_timeout_secs`, and the capture rate below
what the command can sustain: one capture runs the command once.

Attributes: `command` (required: `["vcgencmd", "measure_temp"]` or `"my-probe --json"`),
`timeout_secs` (default 5), `cwd` (working directory), `env` (extra environment variables).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
from typing import Any

import trio

from .registry import ResourceLookup, register_model
from .resource import ResourceError

MODEL = "command"
#: How much of stderr (characters, from the end) an error message carries.
STDERR_TAIL = 400
#: Largest stdout that is parsed; a bigger one fails the capture.
MAX_STDOUT_BYTES = 1024 * 1024


def _tail(data: bytes) -> str:
    text = data.decode(errors="replace").strip()
    return ("…" + text[-STDERR_TAIL:]) if len(text) > STDERR_TAIL else text


class CommandSensor:
    """A sensor whose `Readings` are the JSON output of a command."""

    type = "sensor"
    model = MODEL

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        self.name = name
        cmd = attributes.get("command")
        if isinstance(cmd, str):
            try:
                cmd = shlex.split(cmd)
            except ValueError as exc:
                raise ResourceError(f"attribute 'command' cannot be split into arguments: {exc}") from None
        if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) for a in cmd):
            raise ResourceError("attribute 'command' is required: a list of arguments or a command line string")
        self.argv: list[str] = cmd
        timeout = attributes.get("timeout_secs", 5)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ResourceError(f"attribute 'timeout_secs' must be a number > 0, got {timeout!r}")
        self.timeout_s = float(timeout)
        cwd = attributes.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise ResourceError(f"attribute 'cwd' must be a path, got {cwd!r}")
        self.cwd = os.path.expanduser(cwd) if cwd else None
        env = attributes.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ResourceError(f"attribute 'env' must map names to strings, got {env!r}")
        self.env = {**os.environ, **env} if env else None
        self.runs = 0

    async def capture(self, method: str, params: dict) -> dict:
        """`Readings` -> the command's JSON output."""
        if method != "Readings":
            raise ResourceError(f"sensor {self.name!r} ({MODEL}) has no method {method!r}; it has Readings")
        self.runs += 1
        shown = shlex.join(self.argv)
        try:
            with trio.fail_after(self.timeout_s):
                done = await trio.run_process(self.argv, capture_stdout=True, capture_stderr=True, check=False,
                                              stdin=subprocess.DEVNULL, cwd=self.cwd, env=self.env,
                                              deliver_cancel=_kill)
        except trio.TooSlowError:
            raise ResourceError(f"command {shown!r} did not finish within {self.timeout_s:g} s and was killed") from None
        except OSError as exc:
            raise ResourceError(f"command {shown!r} could not be started: {exc.strerror or exc}") from None
        if done.returncode != 0:
            raise ResourceError(f"command {shown!r} exited with status {done.returncode}: "
                                f"{_tail(done.stderr) or '(no stderr)'}")
        if len(done.stdout) > MAX_STDOUT_BYTES:
            raise ResourceError(f"command {shown!r} printed {len(done.stdout)} bytes; at most {MAX_STDOUT_BYTES}")
        try:
            value: Any = json.loads(done.stdout.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            stderr = _tail(done.stderr)
            raise ResourceError(f"command {shown!r} printed no JSON ({exc}); stdout {_tail(done.stdout)[:120]!r}"
                                + (f"; stderr: {stderr}" if stderr else "")) from None
        return value if isinstance(value, dict) else {"value": value}

    async def close(self) -> None:
        """Nothing to release (each capture's process is gone when it returns)."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def _kill(process: trio.Process) -> None:
    """On timeout or shutdown: kill at once (the default waits 5 s after SIGTERM)."""
    process.kill()


register_model("sensor", MODEL, CommandSensor)
