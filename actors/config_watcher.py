"""The config watcher: notices edits to the config file and hands each valid new config to the agent.

It polls the file's identity (inode, size, mtime) every `poll_s` seconds, which catches in-place
writes, atomic replace by editors and delete-and-recreate alike, and then compares content, so
touching the file without changing it does nothing. Each distinct content is a new revision.
An invalid revision is logged with the same messages as `capsync validate` and recorded as
rejected; the last good config keeps running.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import trio

from capsync.runtime.config import ConfigError, RobotConfig, log_warnings, parse_config
from capsync.runtime.logs import StateChangeLog
from capsync.runtime.blocking import run_blocking
from capsync.runtime.faults import FaultPlan

log = logging.getLogger("capsync.config")


@dataclass(frozen=True)
class Rejected:
    """A revision that failed validation, and why."""

    revision: int
    issues: tuple[str, ...]


@dataclass(frozen=True)
class ConfigWatcherStats:
    """What the watcher has seen: the running revision and the last rejected one, if newer."""

    path: str
    revision: int
    rejected: Rejected | None


class ConfigWatcher:
    """Watches `path`; calls `apply(config, revision)` for each valid new revision."""

    def __init__(
        self,
        path: Path,
        apply: Callable[[RobotConfig, int], Awaitable[None]],
        *,
        initial_text: str | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.path = Path(os.path.abspath(path))  # absolute: `capsync status` tells agents apart by it
        self._apply = apply
        self.poll_s = poll_s
        self.revision = 1  # the running revision
        self._next_revision = 2
        self._seen_digest = hashlib.sha256(initial_text.encode()).hexdigest() if initial_text is not None else None
        self._seen_stat: tuple | None = None
        self._rejected: Rejected | None = None
        self._missing = StateChangeLog(log)
        #: Fault injection (tests): the point `read`.
        self.faults: FaultPlan | None = None

    def statistics(self) -> ConfigWatcherStats:
        """The running revision and the last rejection (cleared when a newer revision applies)."""
        return ConfigWatcherStats(str(self.path), self.revision, self._rejected)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll until cancelled."""
        self._seen_stat = await run_blocking(self._stat)
        task_status.started()
        while True:
            await trio.sleep(self.poll_s)
            await self.check()

    async def check(self) -> None:
        """Look at the file once; apply or reject what changed."""
        st = await run_blocking(self._stat)
        if st is None:
            self._missing.fail("missing", "config file is missing; keeping the running config", path=str(self.path))
            self._seen_stat = None
            return
        self._missing.ok("missing", "config file is back", path=str(self.path))
        if st == self._seen_stat:
            return
        self._seen_stat = st
        try:
            if self.faults is not None:
                await self.faults.hit("config_watcher", "read")
            text = await run_blocking(self.path.read_text, "utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read config file; keeping the running config",
                        extra={"path": str(self.path), "error": str(exc)})
            return
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self._seen_digest:
            return
        self._seen_digest = digest
        revision, self._next_revision = self._next_revision, self._next_revision + 1
        try:
            config = parse_config(text, source=str(self.path))
        except ConfigError as exc:
            self._reject(revision, [str(i) for i in exc.issues])
            return
        await self._apply(config, revision)
        self.revision = revision
        self._rejected = None
        log.info("config revision applied", extra={"revision": revision, "path": str(self.path)})
        log_warnings(config, log, revision=revision)

    def _reject(self, revision: int, issues: list[str]) -> None:
        self._rejected = Rejected(revision, tuple(issues))
        for issue in issues:
            log.error("config revision rejected; the last good config keeps running",
                      extra={"revision": revision, "path": str(self.path), "problem": issue})

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)
