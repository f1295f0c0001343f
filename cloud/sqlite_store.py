"""The default `Store`: one SQLite database (WAL mode, synchronous=FULL) in the cloud's data dir.

sqlite3 blocks, so every call runs in a Trio worker thread on one shared connection guarded by
a lock: SQLite serializes writers anyway, and one connection keeps transactions simple. A
commit is one transaction: the files row, every tabular row or binary item, and the removal of
the upload row. Rows are keyed by (part_id, file_id, record_index), so a commit that runs twice
inserts nothing the second time.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from cloud.auth import check_secret, hash_secret
from cloud.store import (
    BinaryItem,
    CommittedFile,
    PartExistsError,
    Query,
    StoreStatistics,
    TabularRow,
    UnknownPartError,
    Upload,
)
from cloud.timefmt import iso_from_ns
from runtime.blocking import run_blocking
from runtime.sync_protocol import FileKind

T = TypeVar("T")
_DAY_NS = 86_400 * 10**9

_SCHEMA = """
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

_TABULAR_COLS = (
    "part_id, file_id, record_index, resource_type, resource_name, method, params, requested_ns, "
    "received_ns, requested_at, received_at, tags, payload, metadata"
)
_BINARY_COLS = (
    "part_id, file_id, record_index, item_id, resource_type, resource_name, method, mime_type, size, "
    "requested_ns, received_ns, requested_at, received_at, tags, metadata, name, from_capture"
)
_FILE_COLS = (
    "part_id, file_id, kind, size, sha256, records, name, mime_type, resource_type, resource_name, "
    "method, data_kind, params, tags, created_ns, committed_ns, committed_at, metadata"
)


@lru_cache(maxsize=4)
def _dummy_hash(n: int) -> str:
    return hash_secret("no such part", n=n)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _placeholders(cols: str) -> str:
    return ", ".join("?" for _ in cols.split(","))


class SqliteStore:
    """`Store` backed by the SQLite file at `path` (created with its schema when missing)."""

    def __init__(self, path: Path, *, scrypt_n: int = 2**14) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._scrypt_n = scrypt_n
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)

    # -- plumbing ---------------------------------------------------------------------------

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            return fn(*args)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_blocking(partial(self._locked, fn, *args))

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return out

    # -- parts --------------------------------------------------------------------------------

    def add_part_sync(self, part_id: str, secret: str, *, rotate: bool = False) -> None:
        """Blocking `add_part`, for the CLI that runs outside Trio."""
        digest = hash_secret(secret, n=self._scrypt_n)

        def tx(db: sqlite3.Connection) -> None:
            exists = db.execute("SELECT 1 FROM parts WHERE part_id = ?", (part_id,)).fetchone()
            now = time.time_ns()
            if exists and not rotate:
                raise PartExistsError(part_id)
            if not exists and rotate:
                raise UnknownPartError(part_id)
            if exists:
                db.execute("UPDATE parts SET secret_hash = ?, rotated_ns = ? WHERE part_id = ?", (digest, now, part_id))
            else:
                db.execute("INSERT INTO parts VALUES (?, ?, ?, NULL)", (part_id, digest, now))

        self._locked(self._tx, tx)

    async def add_part(self, part_id: str, secret: str, *, rotate: bool = False) -> None:
        """Create a part, or with `rotate=True` replace an existing part's secret."""
        await run_blocking(partial(self.add_part_sync, part_id, secret, rotate=rotate))

    async def verify_part(self, part_id: str, secret: str) -> bool:
        """Whether `secret` is the secret of `part_id` (scrypt runs outside the lock)."""
        row = await self._run(lambda: self._db.execute("SELECT secret_hash FROM parts WHERE part_id = ?", (part_id,)).fetchone())
        # An unknown part costs the same scrypt as a known one, so timing does not tell which ids exist.
        stored = _dummy_hash(self._scrypt_n) if row is None else row["secret_hash"]
        ok = await run_blocking(check_secret, secret, stored)
        return ok and row is not None

    # -- uploads ------------------------------------------------------------------------------

    async def get_upload(self, part_id: str, file_id: str) -> Upload | None:
        """The declared upload of (part, file), or None."""
        row = await self._run(
            lambda: self._db.execute(
                "SELECT * FROM uploads WHERE part_id = ? AND file_id = ?", (part_id, file_id)
            ).fetchone()
        )
        if row is None:
            return None
        return Upload(
            row["part_id"], row["file_id"], FileKind(row["kind"]), row["size"], row["sha256"],
            row["name"], row["mime_type"], row["received"], row["created_ns"],
        )

    async def save_upload(self, upload: Upload) -> None:
        """Insert or replace a declared upload."""
        u = upload
        await self._run(
            lambda: self._db.execute(
                "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'partial', ?)",
                (u.part_id, u.file_id, u.kind.value, u.size, u.sha256, u.name, u.mime_type, u.received, u.created_ns),
            )
        )

    async def set_received(self, part_id: str, file_id: str, received: int) -> None:
        """Record the bytes of an upload durably on disk."""
        await self._run(
            lambda: self._db.execute(
                "UPDATE uploads SET received = ? WHERE part_id = ? AND file_id = ?", (received, part_id, file_id)
            )
        )

    async def delete_upload(self, part_id: str, file_id: str) -> None:
        """Forget an upload."""
        await self._run(
            lambda: self._db.execute("DELETE FROM uploads WHERE part_id = ? AND file_id = ?", (part_id, file_id))
        )

    # -- committed files ----------------------------------------------------------------------

    async def get_file(self, part_id: str, file_id: str) -> CommittedFile | None:
        """The committed file (part, file), or None."""
        row = await self._run(
            lambda: self._db.execute(
                "SELECT * FROM files WHERE part_id = ? AND file_id = ?", (part_id, file_id)
            ).fetchone()
        )
        return None if row is None else _file_from_row(row)

    def _commit_sync(self, f: CommittedFile, tabular: Sequence[TabularRow], binary: Sequence[BinaryItem]) -> bool:
        def tx(db: sqlite3.Connection) -> bool:
            key = (f.part_id, f.file_id)
            if db.execute("SELECT 1 FROM files WHERE part_id = ? AND file_id = ?", key).fetchone():
                db.execute("DELETE FROM uploads WHERE part_id = ? AND file_id = ?", key)
                return False
            db.execute(
                f"INSERT INTO files ({_FILE_COLS}) VALUES ({_placeholders(_FILE_COLS)})",
                (
                    f.part_id, f.file_id, f.kind.value, f.size, f.sha256, f.records, f.name, f.mime_type,
                    f.resource_type, f.resource_name, f.method, f.data_kind, _dumps(f.params), _dumps(list(f.tags)),
                    f.created_ns, f.committed_ns, iso_from_ns(f.committed_ns), _dumps(f.metadata),
                ),
            )
            db.executemany(
                f"INSERT OR IGNORE INTO tabular ({_TABULAR_COLS}) VALUES ({_placeholders(_TABULAR_COLS)})",
                [
                    (
                        r.part_id, r.file_id, r.record_index, r.resource_type, r.resource_name, r.method,
                        _dumps(r.params), r.requested_ns, r.received_ns, iso_from_ns(r.requested_ns),
                        iso_from_ns(r.received_ns), _dumps(list(r.tags)), _dumps(r.payload), _dumps(r.metadata),
                    )
                    for r in tabular
                ],
            )
            db.executemany(
                f"INSERT OR IGNORE INTO binary_items ({_BINARY_COLS}) VALUES ({_placeholders(_BINARY_COLS)})",
                [
                    (
                        b.part_id, b.file_id, b.record_index, b.item_id, b.resource_type, b.resource_name,
                        b.method, b.mime_type, b.size, b.requested_ns, b.received_ns, iso_from_ns(b.requested_ns),
                        iso_from_ns(b.received_ns), _dumps(list(b.tags)), _dumps(b.metadata), b.name,
                        int(b.from_capture),
                    )
                    for b in binary
                ],
            )
            db.execute("DELETE FROM uploads WHERE part_id = ? AND file_id = ?", key)
            return True

        return self._tx(tx)

    async def commit(self, file: CommittedFile, tabular: Sequence[TabularRow], binary: Sequence[BinaryItem]) -> bool:
        """Atomically store a committed file with its rows; False (nothing inserted) if already committed."""
        return await self._run(self._commit_sync, file, tabular, binary)

    async def list_files(self, part_id: str, *, after: str | None = None, limit: int = 100) -> list[CommittedFile]:
        """Committed files of a part in file id order, after file id `after`."""
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT * FROM files WHERE part_id = ? AND file_id > ? ORDER BY file_id LIMIT ?",
                (part_id, after or "", limit),
            ).fetchall()
        )
        return [_file_from_row(r) for r in rows]

    # -- queries ------------------------------------------------------------------------------

    def _select(self, table: str, part_id: str, q: Query) -> list[sqlite3.Row]:
        where = ["part_id = ?"]
        args: list[Any] = [part_id]
        for col, value in (("resource_type", q.resource_type), ("resource_name", q.resource_name), ("method", q.method)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if q.start_ns is not None:
            where.append("requested_ns >= ?")
            args.append(q.start_ns)
        if q.end_ns is not None:
            where.append("requested_ns < ?")
            args.append(q.end_ns)
        for tag in q.tags:
            where.append("EXISTS (SELECT 1 FROM json_each(tags) AS t WHERE t.value = ?)")
            args.append(tag)
        if q.after is not None:
            where.append("(requested_ns, file_id, record_index) > (?, ?, ?)")
            args.extend(q.after)
        sql = (
            f"SELECT * FROM {table} WHERE {' AND '.join(where)} "
            "ORDER BY requested_ns, file_id, record_index LIMIT ?"
        )
        return self._db.execute(sql, (*args, q.limit)).fetchall()

    async def query_tabular(self, part_id: str, query: Query) -> list[TabularRow]:
        """Tabular rows of a part matching `query`, in (requested_ns, file_id, record_index) order."""
        rows = await self._run(self._select, "tabular", part_id, query)
        return [
            TabularRow(
                r["part_id"], r["file_id"], r["record_index"], r["resource_type"], r["resource_name"], r["method"],
                r["requested_ns"], r["received_ns"], tuple(json.loads(r["tags"])), json.loads(r["payload"]),
                json.loads(r["params"]), json.loads(r["metadata"]),
            )
            for r in rows
        ]

    async def query_binary(self, part_id: str, query: Query) -> list[BinaryItem]:
        """Binary items of a part matching `query`, in (requested_ns, file_id, record_index) order."""
        rows = await self._run(self._select, "binary_items", part_id, query)
        return [_binary_from_row(r) for r in rows]

    async def get_binary(self, part_id: str, file_id: str, record_index: int) -> BinaryItem | None:
        """One binary item of a part, or None."""
        row = await self._run(
            lambda: self._db.execute(
                "SELECT * FROM binary_items WHERE part_id = ? AND file_id = ? AND record_index = ?",
                (part_id, file_id, record_index),
            ).fetchone()
        )
        return None if row is None else _binary_from_row(row)

    # -- retention and accounting ---------------------------------------------------------------

    def _expire_sync(self, now_ns: int) -> list[CommittedFile]:
        def tx(db: sqlite3.Connection) -> list[CommittedFile]:
            rows = db.execute(
                "SELECT * FROM files WHERE expired_ns IS NULL "
                "AND json_extract(metadata, '$.retention_policy.days') IS NOT NULL"
            ).fetchall()
            gone = []
            for r in rows:
                days = json.loads(r["metadata"]).get("retention_policy", {}).get("days")
                if not isinstance(days, (int, float)) or isinstance(days, bool) or days < 0:
                    continue
                # "1 day" means: deleted the following UTC day, whatever the time of day it came in.
                if now_ns // _DAY_NS < r["committed_ns"] // _DAY_NS + days:
                    continue
                key = (r["part_id"], r["file_id"])
                db.execute("DELETE FROM tabular WHERE part_id = ? AND file_id = ?", key)
                db.execute("DELETE FROM binary_items WHERE part_id = ? AND file_id = ?", key)
                db.execute("UPDATE files SET expired_ns = ? WHERE part_id = ? AND file_id = ?", (now_ns, *key))
                gone.append(_file_from_row(r))
            return gone

        return self._tx(tx)

    async def expire(self, now_ns: int) -> list[CommittedFile]:
        """Delete the rows of files past their retention_policy days; the file rows stay, marked expired.

        Keeping the files row means a late retry of the same upload is still answered
        "committed" and never stored a second time.
        """
        return await self._run(self._expire_sync, now_ns)

    def _count(self) -> StoreStatistics:
        def n(table: str) -> int:
            return self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

        return StoreStatistics(n("parts"), n("uploads"), n("files"), n("tabular"), n("binary_items"))

    async def statistics(self) -> StoreStatistics:
        """Row counts of every table."""
        return await self._run(self._count)

    def close_sync(self) -> None:
        """Close the database connection (blocking; for the CLI)."""
        self._locked(self._db.close)

    async def aclose(self) -> None:
        """Close the database connection."""
        await self._run(self._db.close)


def _file_from_row(r: sqlite3.Row) -> CommittedFile:
    return CommittedFile(
        part_id=r["part_id"], file_id=r["file_id"], kind=FileKind(r["kind"]), size=r["size"], sha256=r["sha256"],
        records=r["records"], committed_ns=r["committed_ns"], name=r["name"], mime_type=r["mime_type"],
        resource_type=r["resource_type"], resource_name=r["resource_name"], method=r["method"],
        data_kind=r["data_kind"], params=json.loads(r["params"]), tags=tuple(json.loads(r["tags"])),
        created_ns=r["created_ns"], metadata=json.loads(r["metadata"]), expired_ns=r["expired_ns"],
    )


def _binary_from_row(r: sqlite3.Row) -> BinaryItem:
    return BinaryItem(
        r["part_id"], r["file_id"], r["record_index"], r["resource_type"], r["resource_name"], r["method"],
        r["mime_type"], r["size"], r["requested_ns"], r["received_ns"], tuple(json.loads(r["tags"])),
        json.loads(r["metadata"]), r["name"], bool(r["from_capture"]),
    )
