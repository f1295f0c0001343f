"""The capture control actor: reads the capture control sensor and applies its overrides.

Every POLL_INTERVAL_S (100 ms) it reads the data manager's `capture_control_sensor` and parses
its reading under `key` (runtime/capture_control.py). When the overrides differ from those in
force, it hands them to the agent, which applies them like a config edit: as a diff against the
running capture plan, so only the collectors whose rate or tags changed are touched and no
reading is lost. An empty reading, one that cannot be read, and one that is not a valid list of
overrides all mean "follow the config"; the last two are logged once per change of state (and
once more when the sensor is usable again), never per poll, and the agent never stops for them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

from capsync.runtime.capture_control import POLL_INTERVAL_S, BadOverrides, CaptureOverride, parse_overrides
from capsync.runtime.config import RobotConfig
from capsync.runtime.logs import StateChangeLog
from capsync.runtime.resources.registry import ResourceLookup

log = logging.getLogger("capsync.capture_control")


@dataclass(frozen=True)
class CaptureControlStats:
    """The control sensor's state for `capsync status`: what is overridden now, and how reads went."""

    sensor: str
    key: str
    polls: int
    changes: int  # times the overrides in force changed
    active: tuple[CaptureOverride, ...]
    last_error: str | None  # why the last reading could not be used, None when it could


class CaptureControl:
    """Polls the capture control sensor of `config()` and calls `apply(overrides)` on each change."""

    def __init__(self, config: Callable[[], RobotConfig], lookup: ResourceLookup,
                 apply: Callable[[tuple[CaptureOverride, ...]], Awaitable[None]],
                 poll_s: float = POLL_INTERVAL_S) -> None:
        self._config = config
        self._lookup = lookup
        self._apply = apply
        self.poll_s = poll_s
        self._log = StateChangeLog(log)
        self._active: tuple[CaptureOverride, ...] = ()
        self._polls = self._changes = 0
        self._error: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll until cancelled."""
        task_status.started()
        while True:
            await self.poll_once()
            await trio.sleep(self.poll_s)

    async def poll_once(self) -> None:
        """Read the sensor once and apply what it asks for, if that changed."""
        config = self._config()
        dm = config.data_manager
        spec = dm.capture_control_sensor if dm is not None else None
        if spec is None:
            return
        self._polls += 1
        overrides = await self._read(spec.name, spec.key, dm.resource_timeout_secs)
        unmatched = config.unmatched(overrides)
        if unmatched:
            self._log.fail("unmatched", "capture control overrides name no configured capture method; they are ignored",
                           sensor=spec.name, overrides=[f"{o.resource_name} {o.method}" for o in unmatched])
        else:
            self._log.ok("unmatched", "capture control overrides all name configured capture methods again")
        if overrides != self._active:
            await self._apply(overrides)
            self._active = overrides
            self._changes += 1

    async def _read(self, name: str, key: str, timeout_s: float) -> tuple[CaptureOverride, ...]:
        """The overrides the sensor's reading asks for; () (the config) when it cannot be used."""
        try:
            with trio.fail_after(timeout_s):
                reading = await self._lookup.get(name).capture("Readings", {})
            overrides = parse_overrides(reading, key)
        except BadOverrides as exc:
            return self._unusable(name, "capture control sensor reading is not a list of overrides; "
                                  "capture follows the config", str(exc))
        except trio.TooSlowError:
            return self._unusable(name, "cannot read the capture control sensor; capture follows the config",
                                  f"no reading within {timeout_s:g} s")
        except Exception as exc:  # a failing sensor is data about the robot, not a bug in us
            return self._unusable(name, "cannot read the capture control sensor; capture follows the config",
                                  f"{type(exc).__name__}: {exc}")
        self._error = None
        self._log.ok("reading", "capture control sensor usable again", sensor=name)
        return overrides

    def _unusable(self, name: str, message: str, error: str) -> tuple[CaptureOverride, ...]:
        self._error = error
        self._log.fail("reading", message, sensor=name, error=error)
        return ()

    def statistics(self) -> CaptureControlStats:
        """What is overridden now and how the sensor's readings went."""
        dm = self._config().data_manager
        spec = dm.capture_control_sensor if dm is not None else None
        return CaptureControlStats(spec.name if spec else "", spec.key if spec else "", self._polls, self._changes,
                                   self._active, self._error)
