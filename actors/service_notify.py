"""`capsync run --notify`: tells systemd (a `Type=notify` unit) how the agent is doing.

READY=1 once the supervision tree has started (with STATUS= the one-line status), then every
STATUS_EVERY_S (or half the watchdog interval, if shorter) a new STATUS= and, while the tree is
healthy (actors/agent_metrics.py: TreeHealth), WATCHDOG=1. A tree with an actor down for too long,
or an event loop that stops running tasks, stops the pings, and systemd restarts the agent after
`WatchdogSec=`. STOPPING=1 is sent by `capsync run` when a signal starts the shutdown.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from capsync.actors.status_line import status_line
from capsync.runtime.sd_notify import SdNotifier

if TYPE_CHECKING:
    from capsync.actors.agent import Agent

log = logging.getLogger("capsync.notify")

#: STATUS= is refreshed at least this often (seconds).
STATUS_EVERY_S = 10.0


async def notify_service_manager(agent: Agent, notifier: SdNotifier) -> None:
    """Send READY=1, then STATUS= and WATCHDOG=1 pings until cancelled (the agent must be running)."""
    notifier.send(READY=1, STATUS=status_line(agent.statistics()))
    period = STATUS_EVERY_S if notifier.watchdog_s is None else min(STATUS_EVERY_S, notifier.watchdog_s / 2)
    unhealthy = False
    while True:
        await trio.sleep(period)
        stats = agent.statistics()
        problems = agent.health.problems(stats, trio.current_time())
        if problems:
            if not unhealthy:
                log.error("supervision tree unhealthy; watchdog pings stop", extra={"problems": problems})
            notifier.send(STATUS=f"unhealthy: {'; '.join(problems)}")
        else:
            if unhealthy:
                log.info("supervision tree healthy again; watchdog pings resume")
            fields: dict[str, str | int] = {"STATUS": status_line(stats)}
            if notifier.watchdog_s is not None:
                fields["WATCHDOG"] = 1
            notifier.send(**fields)
        unhealthy = bool(problems)
