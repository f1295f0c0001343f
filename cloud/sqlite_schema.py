"""The SQLite store's schema and row conversions, shared by `SqliteStore` and the SQL query route.

The `tabular` table is what `POST /v1/tabular/sql` exposes (through a per-part view, see
cloud/sql.py); `TABULAR_COLS` also shapes the in-memory copy of a part's rows that SQL queries run
on when the cloud runs on MongoDB.
"""

from __future__ import annotations

import json
import os
import sqlite3
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from capsync.cloud.store import BinaryItem, CommittedFile, TabularRow
from capsync.cloud.timefmt import iso_from_ns
from capsync.runtime.sync_protocol import FileKind

SCHEMA = """
CREATE TABLE IF NOT EXISTS parts (
    part_id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, created_ns INTEGER NOT NULL, rotated_ns INTEGER
);
CREATE TABLE IF NOT EXISTS uploads (
    part_id TEXT NOT NULL, file_id TEXT NOT NULL, kind TEXT NOT NULL, size INTEGER NOT NULL,
    sha256 TEXT NOT NULL, name TEXT NOT NULL, mime_type TEXT NOT NULL, received INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'partial', created_ns INTEGER NOT NULL,
    PRIMARY KEY (part_id, file_id)
);
CREATE TABLE IF NOT EXISTS files (
    part_id TEXT NOT NULL, file_id TEXT NOT NULL, kind TEXT NOT NULL, size INTEGER NOT NULL,
    sha256 TEXT NOT NULL, records INTEGER NOT NULL, name TEXT NOT NULL, mime_type TEXT NOT NULL,
    resource_type TEXT NOT NULL, resource_name TEXT NOT NULL, method TEXT NOT NULL,
    data_kind TEXT NOT NULL, params TEXT NOT NULL, tags TEXT NOT NULL, created_ns INTEGER NOT NULL,
    committed_ns INTEGER NOT NULL, committed_at TEXT NOT NULL, metadata TEXT NOT NULL,
    expired_ns INTEGER,
    PRIMARY KEY (part_id, file_id)
);
CREATE TABLE IF NOT EXISTS tabular (
    part_id TEXT NOT NULL, file_id TEXT NOT NULL, record_index INTEGER NOT NULL,
    resource_type TEXT NOT NULL, resource_name TEXT NOT NULL, method TEXT NOT NULL, params TEXT NOT NULL,
    requested_ns INTEGER NOT NULL, received_ns INTEGER NOT NULL, requested_at TEXT NOT NULL,
    received_at TEXT NOT NULL, tags TEXT NOT NULL, payload TEXT NOT NULL, metadata TEXT NOT NULL,
    PRIMARY KEY (part_id, file_id, record_index)
);
CREATE INDEX IF NOT EXISTS tabular_by_time ON tabular (part_id, requested_ns, file_id, record_index);
CREATE TABLE IF NOT EXISTS binary_items (
    part_id TEXT NOT NULL, file_id TEXT NOT NULL, record_index INTEGER NOT NULL, item_id TEXT NOT NULL,
    resource_type TEXT NOT NULL, resource_name TEXT NOT NULL, method TEXT NOT NULL, mime_type TEXT NOT NULL,
    size INTEGER NOT NULL, requested_ns INTEGER NOT NULL, received_ns INTEGER NOT NULL,
    requested_at TEXT NOT NULL, received_at TEXT NOT NULL, tags TEXT NOT NULL, metadata TEXT NOT NULL,
    name TEXT NOT NULL, from_capture INTEGER NOT NULL,
    PRIMARY KEY (part_id, file_id, record_index)
);
CREATE INDEX IF NOT EXISTS binary_by_time ON binary_items (part_id, requested_ns, file_id, record_index);
"""

TABULAR_COLS = (
    "part_id, file_id, record_index, resource_type, resource_name, method, params, requested_ns, "
    "received_ns, requested_at, received_at, tags, payload, metadata"
)
BINARY_COLS = (
    "part_id, file_id, record_index, item_id, resource_type, resource_name, method, mime_type, size, "
    "requested_ns, received_ns, requested_at, received_at, tags, metadata, name, from_capture"
)
FILE_COLS = (
    "part_id, file_id, kind, size, sha256, records, name, mime_type, resource_type, resource_name, "
    "method, data_kind, params, tags, created_ns, committed_ns, committed_at, metadata"
)


def private_db_file(path: Path) -> None:
    """Make the database file (created if missing) and its -wal/-shm readable by its owner only.

    SQLite gives -wal and -shm the database file's mode, so creating the file 0600 first covers them.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        try:
            if p.stat().st_mode & 0o077:
                os.chmod(p, 0o600)
        except FileNotFoundError:
            pass


def dumps(value: Any) -> str:
    """Compact JSON text of a value, as the store keeps params, tags, payloads and metadata."""
    try:  # orjson: ~20x faster than json on the float-heavy payloads of sensor readings
        return orjson.dumps(value, default=str).decode()
    except TypeError:  # integers beyond 64 bits, keys that are not strings: what only json handles
        return json.dumps(value, separators=(",", ":"), default=str)


def tabular_values(r: TabularRow) -> tuple[Any, ...]:
    """A tabular row's values in TABULAR_COLS order, as the SQL stores keep them."""
    return (
        r.part_id, r.file_id, r.record_index, r.resource_type, r.resource_name, r.method,
        _same_as_last(r.params), r.requested_ns, r.received_ns, iso_from_ns(r.requested_ns),
        iso_from_ns(r.received_ns), _tags_json(tuple(r.tags)), dumps(r.payload), _metadata_json(r.metadata),
    )


def binary_values(b: BinaryItem) -> tuple[Any, ...]:
    """A binary item's values in BINARY_COLS order, as the SQL stores keep them."""
    return (
        b.part_id, b.file_id, b.record_index, b.item_id, b.resource_type, b.resource_name,
        b.method, b.mime_type, b.size, b.requested_ns, b.received_ns, iso_from_ns(b.requested_ns),
        iso_from_ns(b.received_ns), _tags_json(tuple(b.tags)), _metadata_json(b.metadata), b.name,
        int(b.from_capture),
    )


# The rows of one file share their params and tags objects, and most records carry no metadata:
# encoding those once per file instead of once per row is a good part of the cost of an ingest.
_last_params: tuple[Any, str] = (None, "null")


def _same_as_last(value: Any) -> str:
    global _last_params
    last = _last_params  # one read: another thread may replace it meanwhile, which is harmless
    if last[0] is value:
        return last[1]
    text = dumps(value)
    _last_params = (value, text)
    return text


@lru_cache(maxsize=1024)
def _tags_json(tags: tuple[str, ...]) -> str:
    return dumps(list(tags))


def _metadata_json(value: Any) -> str:
    return "{}" if not value and isinstance(value, dict) else dumps(value)


def placeholders(cols: str) -> str:
    """`?, ?, ...`: one placeholder per column of a comma-separated column list."""
    return ", ".join("?" for _ in cols.split(","))


def file_from_row(r: sqlite3.Row) -> CommittedFile:
    """A `files` row as a CommittedFile."""
    return CommittedFile(
        part_id=r["part_id"], file_id=r["file_id"], kind=FileKind(r["kind"]), size=r["size"], sha256=r["sha256"],
        records=r["records"], committed_ns=r["committed_ns"], name=r["name"], mime_type=r["mime_type"],
        resource_type=r["resource_type"], resource_name=r["resource_name"], method=r["method"],
        data_kind=r["data_kind"], params=json.loads(r["params"]), tags=tuple(json.loads(r["tags"])),
        created_ns=r["created_ns"], metadata=json.loads(r["metadata"]), expired_ns=r["expired_ns"],
    )


def binary_from_row(r: sqlite3.Row) -> BinaryItem:
    """A `binary_items` row as a BinaryItem."""
    return BinaryItem(
        r["part_id"], r["file_id"], r["record_index"], r["resource_type"], r["resource_name"], r["method"],
        r["mime_type"], r["size"], r["requested_ns"], r["received_ns"], tuple(json.loads(r["tags"])),
        json.loads(r["metadata"]), r["name"], bool(r["from_capture"]),
    )


def tabular_from_row(r: sqlite3.Row) -> TabularRow:
    """A `tabular` row as a TabularRow."""
    return TabularRow(
        r["part_id"], r["file_id"], r["record_index"], r["resource_type"], r["resource_name"], r["method"],
        r["requested_ns"], r["received_ns"], tuple(json.loads(r["tags"])), json.loads(r["payload"]),
        json.loads(r["params"]), json.loads(r["metadata"]),
    )
