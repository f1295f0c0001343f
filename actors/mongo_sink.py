"""The MongoDB sink: also writes every tabular reading to MongoDB, for offline dashboards.

Collectors hand each tabular reading to `offer()` right after the capture file writer took it.
`offer()` never blocks: it puts the reading on a bounded queue, and when the queue is full (MongoDB
slow or down) the reading is dropped for MongoDB only, counted, and logged once per change of
state; capture to disk goes on at full rate. The actor takes up to `batch_size` readings at a
time, encodes them (runtime/mongo_documents.py) and inserts them with pymongo's sync client in a
worker thread (pymongo's async client does not run under Trio). As documented, a failed write is
logged with its error and not retried; binary readings are never written. `reconfigure()` points
the sink at another URI, database or collection (or turns it off) and closes the old client.
docs/mongo-capture.md describes the documents and the behaviour.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qs, urlsplit

import trio
from bson.errors import InvalidDocument

if TYPE_CHECKING:  # pymongo is imported once a MongoDB URI is configured: it is 9 MB of an agent's RSS
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

from capsync.runtime.capture_file import CaptureHeader, CaptureRecord
from capsync.runtime.config import MongoCaptureConfig
from capsync.runtime.mongo_documents import encode_reading
from capsync.runtime.resources.methods import DataKind

log = logging.getLogger("capsync.mongo")

DEFAULT_QUEUE_SIZE = 1000
DEFAULT_BATCH_SIZE = 100
#: At shutdown, queued readings are written for at most this long.
DRAIN_S = 2.0
#: Client options capsync sets unless the URI sets them (the URI always wins).
CLIENT_DEFAULTS: dict[str, Any] = {
    "appname": "capsync",
    "serverSelectionTimeoutMS": 5000,
    "connectTimeoutMS": 5000,
    "socketTimeoutMS": 10000,
    "retryWrites": False,  # documented: a failed write is not retried
}

Batch = list[tuple[CaptureHeader, CaptureRecord]]


@dataclass(frozen=True)
class MongoSinkStats:
    """A snapshot of the sink for `capsync status` and tests. Counts are readings unless named."""

    target: str  # "<uri with the password hidden> <database>.<collection>", "" when off
    client_open: bool
    queued: int
    queue_size: int
    written: int
    dropped: int  # the queue was full (or the URI was removed while they waited)
    failed: int  # in writes that failed, or not representable as BSON
    failed_writes: int  # insert calls that failed
    abandoned: int  # still being written when shutdown's drain time ran out: outcome unknown
    clients_closed: int
    last_error: str | None


def redact_uri(uri: str) -> str:
    """`uri` with any password replaced by `***`, for logs and status."""
    return re.sub(r"^([a-z+]+://[^:@/]*):[^@/]*@", r"\1:***@", uri)


def client_options(uri: str) -> dict[str, Any]:
    """CLIENT_DEFAULTS minus any option the URI's query string sets itself (compared case-insensitively)."""
    present = {k.lower() for k in parse_qs(urlsplit(uri).query, keep_blank_values=True)}
    return {k: v for k, v in CLIENT_DEFAULTS.items() if k.lower() not in present}


def _target(config: MongoCaptureConfig | None) -> tuple[str, str, str]:
    if config is None or not config.uri:
        return ("", "", "")
    return (config.uri, config.database, config.collection)


def _write_batch(client: MongoClient, database: str, collection: str, batch: Batch
                 ) -> tuple[int, list[str], PyMongoError | None]:
    """Runs in a worker thread: encode and insert `batch`. Returns (written, encoding errors, write error)."""
    from pymongo.errors import BulkWriteError, PyMongoError

    docs, bad = [], []
    for header, record in batch:
        try:
            docs.append(encode_reading(header, record))
        except (InvalidDocument, OverflowError, ValueError, TypeError) as exc:
            bad.append(f"{type(exc).__name__}: {exc}")
    if not docs:
        return 0, bad, None
    try:
        client[database][collection].insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        return int(exc.details.get("nInserted", 0)), bad, exc
    except PyMongoError as exc:
        return 0, bad, exc
    return len(docs), bad, None


def _pymongo_client(uri: str, **options: Any) -> MongoClient:
    """A pymongo client (pymongo is imported here, the first time a MongoDB URI is used)."""
    from pymongo import MongoClient

    return MongoClient(uri, **options)


class MongoSink:
    """Writes the tabular readings `offer()`ed to it to MongoDB, as configured by `config`.

    `client_factory(uri, **options)` makes the pymongo client (tests wrap it to watch close()).
    """

    def __init__(
        self,
        config: MongoCaptureConfig | None,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        client_factory: Callable[..., MongoClient] | None = None,
        drain_s: float = DRAIN_S,
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be >= 1")
        self.queue_size, self.batch_size, self.drain_s = queue_size, batch_size, drain_s
        self._factory = client_factory or _pymongo_client
        self._want = _target(config)
        self._send, self._receive = trio.open_memory_channel[tuple[CaptureHeader, CaptureRecord]](queue_size)
        self._client: MongoClient | None = None
        self._client_target = ("", "", "")
        self._bad_target: tuple[tuple[str, str, str], str] | None = None  # a URI pymongo refused, and why
        self._wait_scope: trio.CancelScope | None = None
        self._changed = trio.Event()
        self._stopped = False
        self._queue_full = False
        self._failing: str | None = None  # the kind of error writes fail with, while they do
        self._written = self._dropped = self._failed = self._failed_writes = self._closed = self._abandoned = 0
        self._last_error: str | None = None

    # -- called by collectors and the agent ---------------------------------------------------

    def offer(self, header: CaptureHeader, record: CaptureRecord) -> None:
        """Queue one reading for MongoDB; never blocks. Binary readings and readings while off are ignored."""
        if self._stopped or not self._want[0] or header.kind is not DataKind.TABULAR:
            return
        try:
            self._send.send_nowait((header, record))
        except trio.WouldBlock:
            self._dropped += 1
            if not self._queue_full:
                self._queue_full = True
                log.warning("MongoDB is not keeping up: readings for MongoDB are dropped while its queue is full "
                            "(capture to disk goes on)", extra={"target": self._describe(self._want),
                                                                "queue_size": self.queue_size})
            return
        if self._queue_full and self._receive.statistics().current_buffer_used <= self.queue_size // 2:
            self._queue_full = False
            log.info("MongoDB queue has room again", extra={"target": self._describe(self._want),
                                                              "dropped_total": self._dropped})

    def reconfigure(self, config: MongoCaptureConfig | None) -> None:
        """Use `config` from now on (None or an empty URI turns the sink off). A changed URI, database
        or collection closes the old client before the next write; readings still queued go to the
        new target, or are dropped when the sink is turned off."""
        want = _target(config)
        if want == self._want:
            return
        self._want = want
        self._bad_target = None
        self._changed.set()
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    def statistics(self) -> MongoSinkStats:
        """Counters since start."""
        return MongoSinkStats(
            target=self._describe(self._want) if self._want[0] else "",
            client_open=self._client is not None,
            queued=self._receive.statistics().current_buffer_used,
            queue_size=self.queue_size,
            written=self._written,
            dropped=self._dropped,
            failed=self._failed,
            failed_writes=self._failed_writes,
            abandoned=self._abandoned,
            clients_closed=self._closed,
            last_error=self._last_error,
        )

    # -- the actor ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until cancelled; then write what is queued (for at most `drain_s`) and close."""
        self._stopped = False
        task_status.started()
        try:
            while True:
                await self._apply_target()
                batch = await self._next_batch()
                if batch:
                    await self._write(batch)
        finally:
            self._stopped = True
            with trio.move_on_after(self.drain_s, shield=True):
                while self._want[0] and (batch := self._take(self.batch_size)):
                    await self._apply_target()
                    await self._write(batch)
            self._dropped += len(self._take(self.queue_size))  # what the drain had no time for
            with trio.move_on_after(1.0, shield=True):
                await self._close_client()

    async def _apply_target(self) -> None:
        want = self._want
        if self._client is not None and self._client_target != want:
            await self._close_client()
        if self._client is None and want[0] and (self._bad_target is None or self._bad_target[0] != want):
            from pymongo.errors import PyMongoError

            try:
                self._client = await trio.to_thread.run_sync(self._open, want, abandon_on_cancel=True)
                self._client_target = want
            except (PyMongoError, ValueError, TypeError) as exc:  # pymongo refuses the URI or an option
                self._bad_target = (want, f"{type(exc).__name__}: {exc}")
                self._last_error = self._bad_target[1]
                log.error("cannot use the MongoDB URI; tabular readings are not written to MongoDB",
                          extra={"target": self._describe(want), "error": self._last_error})

    def _open(self, want: tuple[str, str, str]) -> MongoClient:
        return self._factory(want[0], **client_options(want[0]))

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        self._closed += 1
        log.info("MongoDB client closed", extra={"target": self._describe(self._client_target)})
        await trio.to_thread.run_sync(client.close, abandon_on_cancel=True)

    async def _next_batch(self) -> Batch:
        """Wait for readings (or a reconfigure) and return up to batch_size of them ([] after a reconfigure)."""
        if not self._want[0]:
            self._dropped += len(self._take(self.queue_size))  # turned off: what waits is dropped
            self._changed = trio.Event()
            await self._changed.wait()
            return []
        with trio.CancelScope() as scope:
            self._wait_scope = scope
            first = await self._receive.receive()
        self._wait_scope = None
        if scope.cancelled_caught:
            return []
        return [first] + self._take(self.batch_size - 1)

    def _take(self, n: int) -> Batch:
        out: Batch = []
        while len(out) < n:
            try:
                out.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        return out

    async def _write(self, batch: Batch) -> None:
        if self._client is None:  # the URI is unusable: already logged when it was refused
            self._failed += len(batch)
            return
        target = self._client_target
        try:
            written, bad, error = await trio.to_thread.run_sync(
                _write_batch, self._client, target[1], target[2], batch, abandon_on_cancel=True)
        except trio.Cancelled:  # shutdown: the thread finishes on its own, unobserved
            self._abandoned += len(batch)
            raise
        self._written += written
        if bad:
            self._failed += len(bad)
            self._last_error = bad[-1]
            log.error("readings that BSON cannot hold were not written to MongoDB",
                      extra={"target": self._describe(target), "count": len(bad), "error": bad[0]})
        if error is None:
            if self._failing is not None:
                log.info("writing to MongoDB works again", extra={"target": self._describe(target),
                                                                   "failed_writes_total": self._failed_writes})
                self._failing = None
            return
        self._failed += len(batch) - len(bad) - written
        self._failed_writes += 1
        self._last_error = f"{type(error).__name__}: {error}"
        if self._failing != type(error).__name__:  # once per change of state, not per batch
            self._failing = type(error).__name__
            log.error("writing to MongoDB failed; these readings are not retried (capture to disk goes on)",
                      extra={"target": self._describe(target), "readings": len(batch) - len(bad) - written,
                             "error": self._last_error})

    @staticmethod
    def _describe(target: tuple[str, str, str]) -> str:
        return f"{redact_uri(target[0])} {target[1]}.{target[2]}"
