"""Structured logging for the agent and the cloud: one line per event, as JSON or as readable text.

Callers log with the standard `logging` module and pass fields through `extra`, e.g.
``log.info("file finished", extra={"actor": name, "path": str(p), "records": n})``;
the formatters here print every such field, so logs stay greppable and machine-readable.

Under systemd, when stderr is the journal (`$JOURNAL_STREAM` names its device and inode), every line
starts with its syslog priority (`<3>` for errors, `<6>` for info; journald turns it into the entry's
priority and strips it, so `journalctl -p warning` works) and the text format leaves out its own
timestamp, which journald already records.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a caller attached to `record` through `extra`."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: ts, level, logger, msg, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(record_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Formats a record as `ts LEVEL logger: msg key=value ...` for people reading a terminal
    (without `ts` when `timestamps` is False: the journal stamps each line itself)."""

    def __init__(self, timestamps: bool = True) -> None:
        super().__init__()
        self._timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in record_fields(record).items())
        line = f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        if self._timestamps:
            line = f"{_timestamp(record)} {line}"
        if fields:
            line += " " + fields
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return json.dumps(s) if (" " in s or not s) else s


#: syslog priorities of the log levels, for the journal's `<N>` line prefix (sd-daemon(3)).
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """Wraps another formatter for the journal: each line of a record starts with `<priority>`."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        level = max((lv for lv in _PRIORITY if lv <= record.levelno), default=logging.DEBUG)
        prefix = f"<{_PRIORITY[level]}>"
        return prefix + self._inner.format(record).replace("\n", "\n" + prefix)


def is_journal(stream: TextIO, env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether `stream` is systemd's journal: $JOURNAL_STREAM is its `device:inode`."""
    value = env.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


#: The values `--log-level` takes (any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_level(value: str) -> str:
    """`--log-level`'s argparse type: a LOG_LEVELS name in any case (argparse says which are valid)."""
    return value.upper()


def configure_logging(fmt: str = "text", level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Send all `capsync.*` and root logs to `stream` (stderr by default) in format `fmt` (text or json)."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    stream = stream or sys.stderr
    journal = is_journal(stream)
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter(timestamps=not journal)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter(formatter) if journal else formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    # httpx logs every request at INFO: one line per uploaded chunk would flood a robot's log.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class StateChangeLog:
    """Logs a condition once when it starts and once when it clears, instead of on every occurrence.

    Used for errors that repeat at capture rate (a resource that keeps failing, a full disk):
    the log shows each change of state, and the counters in `statistics()` show the volume.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._active: dict[str, str] = {}

    def fail(self, key: str, message: str, **fields: Any) -> bool:
        """Report that `key` is failing with `message`; logs only if that is new. Returns True if logged."""
        if self._active.get(key) == message:
            return False
        self._active[key] = message
        self._logger.warning(message, extra=fields)
        return True

    def ok(self, key: str, message: str, **fields: Any) -> bool:
        """Report that `key` works again; logs `message` only if it was failing. Returns True if logged."""
        if self._active.pop(key, None) is None:
            return False
        self._logger.info(message, extra=fields)
        return True
