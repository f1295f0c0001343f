"""The MongoDB document written for each tabular reading (see docs/mongo-capture.md).

    {
      "_id":               ObjectId, chosen by capsync
      "part_id":           "robot-1-main",
      "component_type":    "sensor",
      "component_name":    "sensor-1",
      "method_name":       "Readings",
      "method_parameters": {...},            # additional_params of the capture method
      "tags":              ["a", "b"],       # the data manager's tags
      "time_requested":    BSON date (UTC, millisecond precision)
      "time_received":     BSON date (UTC, millisecond precision)
      "data":              {...}             # the reading's payload, as a sub-document
    }

The field names for type, name, method, times and data are those of the reference
implementation's documents, so dashboards written for it read these too. Binary readings are
never turned into documents. No Trio import: the sink encodes in a worker thread.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import bson
from bson.raw_bson import RawBSONDocument

from capsync.runtime.capture_file import CaptureHeader, CaptureRecord
from capsync.runtime.resources.methods import DataKind

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

#: Every field of a reading document, in the order they are written (after `_id`).
FIELDS = ("part_id", "component_type", "component_name", "method_name", "method_parameters", "tags",
          "time_requested", "time_received", "data")


def ns_to_datetime(ns: int) -> datetime:
    """Wall-clock nanoseconds since the epoch as an aware UTC datetime, truncated to the
    millisecond (what a BSON date holds), exact for any int64 ns value."""
    return _EPOCH + timedelta(milliseconds=ns // 1_000_000)


def reading_document(header: CaptureHeader, record: CaptureRecord) -> dict:
    """The document for one tabular reading (no `_id`). Raises ValueError for a binary reading."""
    if header.kind is not DataKind.TABULAR:
        raise ValueError("binary readings are never written to MongoDB")
    return {
        "part_id": header.part_id,
        "component_type": header.resource_type,
        "component_name": header.resource_name,
        "method_name": header.method,
        "method_parameters": dict(header.params),
        "tags": list(header.tags),
        "time_requested": ns_to_datetime(record.requested_ns),
        "time_received": ns_to_datetime(record.received_ns),
        "data": record.payload,
    }


def encode_reading(header: CaptureHeader, record: CaptureRecord) -> RawBSONDocument:
    """The reading's document with a fresh ObjectId, encoded as BSON once (so a document BSON cannot
    hold fails alone, here, not a whole batch). Raises bson.errors.InvalidDocument, OverflowError
    (an integer beyond int64) or ValueError for a reading that cannot be a document."""
    doc = {"_id": bson.ObjectId(), **reading_document(header, record)}
    return RawBSONDocument(bson.encode(doc))
