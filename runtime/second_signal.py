"""A second Ctrl-C while stopping: stop at once, as after kill -9, instead of after the graceful stop.

The agent and the cloud stop gracefully on the first SIGINT or SIGTERM: open capture files are
finished, uploads and commits are seen through or abandoned. That can take seconds (a MongoDB
that does not answer, a commit on a slow disk). An operator who presses Ctrl-C again wants out
now, and both are built to survive being killed (the next start recovers open capture files; a
cloud commit is atomic), so the second signal ends the process at once with exit code 130.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import AsyncIterator, Callable

import trio

#: Exit code of a process ended by a second signal while stopping (128 + SIGINT, as shells use).
EXIT_INTERRUPTED = 130


def exit_on_second_signal(signals: AsyncIterator[int], say: Callable[[], None]) -> None:
    """After the first stop signal came from `signals`: the next one calls `say` (a log line),
    flushes the logs and ends the process with EXIT_INTERRUPTED.

    Watches in a system task, so the cancellation of the graceful stop does not end the watch;
    `signals` (a trio.open_signal_receiver) must stay open while the stop runs."""

    async def watch() -> None:
        async for _signum in signals:
            say()
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)

    trio.lowlevel.spawn_system_task(watch)
