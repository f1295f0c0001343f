"""The MongoDB sink on its own: documents, batching, the bounded queue, failed writes, reconfigure.

Runs against the MongoDB stand-in (tests/mongo_standin.py), and also against a real server when
CAPSYNC_TEST_MONGODB_URI is set. Real time: pymongo works in threads.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

import pytest
import trio
from pymongo import MongoClient

from capsync.actors.mongo_sink import MongoSink, client_options, redact_uri
from capsync.runtime.capture_file import CaptureHeader, CaptureRecord
from capsync.runtime.config import MongoCaptureConfig
from capsync.runtime.mongo_documents import FIELDS, encode_reading, ns_to_datetime, reading_document
from capsync.runtime.resources.methods import DataKind
from tests.mongo_standin import MongoStandIn, mongo_target  # noqa: F401 (fixture)

T0 = 1_764_000_000_123_456_789
HEADER = CaptureHeader(file_id="F1", part_id="part-1", resource_type="sensor", resource_name="env",
                       method="Readings", params={"unit": "si"}, tags=("lab", "a"), kind=DataKind.TABULAR)
BINARY = CaptureHeader(file_id="F2", part_id="part-1", resource_type="camera", resource_name="cam",
                       method="ReadImage", params={}, tags=(), kind=DataKind.BINARY, mime_type="image/jpeg")


def rec(i: int, payload: dict | None = None) -> CaptureRecord:
    return CaptureRecord(T0 + i * 100_000_000, T0 + i * 100_000_000 + 3_000_000, payload or {"i": i, "v": i / 3})


def config(target, collection: str = "readings", uri: str | None = None) -> MongoCaptureConfig:
    return MongoCaptureConfig(uri=uri or target.uri, database=target.database, collection=collection)


async def wait_for(pred, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.02)


def test_document_shape():
    doc = reading_document(HEADER, rec(1))
    assert tuple(doc) == FIELDS
    assert doc["part_id"] == "part-1" and doc["component_type"] == "sensor" and doc["component_name"] == "env"
    assert doc["method_name"] == "Readings" and doc["method_parameters"] == {"unit": "si"}
    assert doc["tags"] == ["lab", "a"] and doc["data"] == {"i": 1, "v": 1 / 3}
    assert doc["time_requested"] == datetime(2025, 11, 24, 16, 0, 0, 223000, tzinfo=timezone.utc)
    assert doc["time_received"] - doc["time_requested"] == ns_to_datetime(3_000_000) - ns_to_datetime(0)
    assert ns_to_datetime(-1) == datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc)
    with pytest.raises(ValueError):
        reading_document(BINARY, CaptureRecord(T0, T0, b"jpeg"))
    with pytest.raises(Exception):
        encode_reading(HEADER, rec(0, {1: "a non-string key"}))


def test_uri_options_win_and_passwords_are_hidden():
    assert client_options("mongodb://h/?serverSelectionTimeoutMS=1&RETRYWRITES=true").keys() == {
        "appname", "connectTimeoutMS", "socketTimeoutMS"}
    assert client_options("mongodb://h")["retryWrites"] is False
    assert redact_uri("mongodb://bob:s3cret@h:1/x?a=b") == "mongodb://bob:***@h:1/x?a=b"
    assert redact_uri("mongodb+srv://h/x") == "mongodb+srv://h/x"


async def test_readings_are_written_in_batches_with_the_documented_shape(mongo_target):
    sink = MongoSink(config(mongo_target), batch_size=7)
    async with trio.open_nursery() as n:
        await n.start(sink.run)
        for i in range(30):
            sink.offer(HEADER, rec(i))
        sink.offer(BINARY, CaptureRecord(T0, T0, b"never written"))
        await wait_for(lambda: sink.statistics().written == 30)
        n.cancel_scope.cancel()
    docs = sorted(mongo_target.documents("readings"), key=lambda d: d["data"]["i"])
    assert [d["data"]["i"] for d in docs] == list(range(30))
    assert all(set(d) == {"_id", *FIELDS} for d in docs)
    assert docs[3]["time_requested"] == ns_to_datetime(rec(3).requested_ns).replace(tzinfo=None)
    s = sink.statistics()
    assert (s.written, s.dropped, s.failed, s.client_open) == (30, 0, 0, False)
    if mongo_target.standin:
        assert mongo_target.standin.commands.count("insert") >= 30 // 7


async def test_a_full_queue_drops_for_mongodb_only_counts_and_logs_once(mongo_target, caplog):
    standin = mongo_target.require_standin()
    standin.insert_delay_s = 0.5
    sink = MongoSink(config(mongo_target), queue_size=10, batch_size=5)
    with caplog.at_level(logging.INFO, logger="capsync.mongo"):
        async with trio.open_nursery() as n:
            await n.start(sink.run)
            t = time.perf_counter()
            for i in range(200):
                sink.offer(HEADER, rec(i))
            offer_s = time.perf_counter() - t
            await trio.sleep(0.1)
            n.cancel_scope.cancel()
    s = sink.statistics()
    assert offer_s < 0.05  # never blocks the collector
    assert s.dropped >= 200 - 10 - 5 and s.written + s.dropped + s.queued <= 200
    assert len([r for r in caplog.records if "not keeping up" in r.getMessage()]) == 1


async def test_a_failed_write_is_logged_with_its_error_and_not_retried(mongo_target, caplog):
    standin = mongo_target.require_standin()
    standin.fail_inserts = "disk quota exceeded (stand-in)"
    sink = MongoSink(config(mongo_target), batch_size=5)
    with caplog.at_level(logging.INFO, logger="capsync.mongo"):
        async with trio.open_nursery() as n:
            await n.start(sink.run)
            for i in range(5):
                sink.offer(HEADER, rec(i))
            await wait_for(lambda: sink.statistics().failed_writes == 1)
            for i in range(5, 10):
                sink.offer(HEADER, rec(i))
            await wait_for(lambda: sink.statistics().failed_writes == 2)
            standin.fail_inserts = None
            sink.offer(HEADER, rec(10))
            await wait_for(lambda: sink.statistics().written == 1)
            n.cancel_scope.cancel()
    s = sink.statistics()
    assert (s.failed, s.failed_writes, s.written) == (10, 2, 1)
    assert standin.commands.count("insert") == 3  # one per batch: nothing was retried
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "disk quota exceeded" in errors[0].error  # once per change of state
    assert [r.getMessage() for r in caplog.records if "works again" in r.getMessage()]
    assert len(mongo_target.documents("readings")) == 1


async def test_a_reading_bson_cannot_hold_fails_alone(mongo_target):
    sink = MongoSink(config(mongo_target))
    async with trio.open_nursery() as n:
        await n.start(sink.run)
        sink.offer(HEADER, rec(0))
        sink.offer(HEADER, rec(1, {"too_big": 1 << 70}))
        sink.offer(HEADER, rec(2))
        await wait_for(lambda: sink.statistics().written == 2)
        n.cancel_scope.cancel()
    assert sink.statistics().failed == 1
    assert sorted(d["data"]["i"] for d in mongo_target.documents("readings")) == [0, 2]


async def test_reconfigure_closes_the_old_client_and_switches_target(mongo_target):
    closed: list[str] = []

    class Recording(MongoClient):
        def close(self) -> None:
            closed.append(self._uri)
            super().close()

    def factory(uri, **kw):
        c = Recording(uri, **kw)
        c._uri = uri
        return c

    other = MongoStandIn().start() if mongo_target.standin else None
    try:
        first = config(mongo_target, "first")
        second = config(mongo_target, "second", uri=other.uri if other else None)
        sink = MongoSink(first, client_factory=factory)
        async with trio.open_nursery() as n:
            await n.start(sink.run)
            sink.offer(HEADER, rec(0))
            await wait_for(lambda: sink.statistics().written == 1)
            sink.reconfigure(first)  # unchanged: keeps the client
            await trio.sleep(0.1)
            assert closed == [] and sink.statistics().client_open
            sink.reconfigure(second)
            await wait_for(lambda: closed == [first.uri])  # closed while idle, not at the next write
            if mongo_target.standin:
                await wait_for(lambda: mongo_target.standin.open_connections == 0)
            sink.offer(HEADER, rec(1))
            await wait_for(lambda: sink.statistics().written == 2)
            sink.reconfigure(MongoCaptureConfig(uri=""))
            await wait_for(lambda: len(closed) == 2)
            sink.offer(HEADER, rec(2))  # off: ignored
            s = sink.statistics()
            assert (s.target, s.client_open, s.queued, s.clients_closed) == ("", False, 0, 2)
            n.cancel_scope.cancel()
        assert [d["data"]["i"] for d in mongo_target.documents("first")] == [0]
        target2 = other.documents(mongo_target.database, "second") if other else mongo_target.documents("second")
        assert [d["data"]["i"] for d in target2] == [1]
    finally:
        if other:
            other.stop()


async def test_an_unusable_uri_is_logged_and_nothing_crashes(caplog, mongo_target):
    with caplog.at_level(logging.ERROR, logger="capsync.mongo"):
        sink = MongoSink(MongoCaptureConfig(uri="http://not-a-mongodb-uri"))
        async with trio.open_nursery() as n:
            await n.start(sink.run)
            for i in range(3):
                sink.offer(HEADER, rec(i))
            await wait_for(lambda: sink.statistics().failed == 3)
            sink.reconfigure(config(mongo_target))
            sink.offer(HEADER, rec(3))
            await wait_for(lambda: sink.statistics().written == 1)
            n.cancel_scope.cancel()
    assert len([r for r in caplog.records if "cannot use the MongoDB URI" in r.getMessage()]) == 1
