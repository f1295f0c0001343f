"""systemd's service notification protocol (sd_notify(3)): a datagram of `KEY=value` lines to $NOTIFY_SOCKET.

Written here rather than taken from a library: the protocol is one datagram on an AF_UNIX socket,
the pure-Python `sdnotify` has not been released since 2017 (and ignores WATCHDOG_USEC), and
`systemd-python` needs libsystemd's headers and a compiler on the robot.

`$NOTIFY_SOCKET` is a path, or an abstract socket name starting with `@`. `$WATCHDOG_USEC` (with
`$WATCHDOG_PID`, when set, naming this process) says that systemd expects `WATCHDOG=1` at least that
often; `watchdog_interval_s` reads it. Sending never blocks and never raises: a service manager
that went away must not stop the agent.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("capsync.sd_notify")


def notify_address(env: Mapping[str, str]) -> str | bytes | None:
    """The socket address $NOTIFY_SOCKET names (an abstract name as bytes starting with NUL), or None."""
    value = env.get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value if value.startswith("/") else None


def watchdog_interval_s(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """How often systemd wants WATCHDOG=1 (seconds), or None when it does not watch this process."""
    usec, wanted_pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if wanted_pid and wanted_pid != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1e6


class SdNotifier:
    """Sends notifications to the service manager named by `env` (os.environ by default).
    Without $NOTIFY_SOCKET, `enabled` is False and `send` does nothing."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = notify_address(env)
        self.watchdog_s = watchdog_interval_s(env)
        self._sock: socket.socket | None = None
        self._failed = False
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        """Whether there is a service manager to tell."""
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        """Send `KEY=value` lines (`send(READY=1, STATUS="...")`); False if it could not be sent."""
        if self._sock is None:
            return False
        lines = [f"{k}={str(v).replace(chr(10), ' ')}" for k, v in fields.items()]
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:  # logged once: a manager that went away does not stop the agent
            if not self._failed:
                log.warning("cannot notify the service manager", extra={"socket": str(self.address), "error": str(exc)})
            self._failed = True
            return False
        self._failed = False
        return True

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
