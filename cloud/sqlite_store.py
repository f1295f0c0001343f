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
from dataclasses import replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import trio

from capsync.cloud import retention
from capsync.cloud.auth import check_secret, hash_secret
from capsync.cloud.aggregate_sql import SQLITE_TAG_TEST, rows_of, sqlite_statement
from capsync.cloud.sql import run_readonly
from capsync.cloud.sqlite_schema import (
    BINARY_COLS,
    FILE_COLS,
    SCHEMA,
    TABULAR_COLS,
    binary_from_row,
    binary_values,
    dumps,
    file_from_row,
    placeholders,
    private_db_file,
    tabular_from_row,
    tabular_values,
)
from capsync.cloud.store import (
    AggregateRow,
    BinaryItem,
    Buckets,
    Commit,
    CommittedFile,
    PartExistsError,
    PartUsage,
    Query,
    QueryRefused,
    ResourceSummary,
    SqlResult,
    StoreStatistics,
    StoreUnavailable,
    TabularRow,
    UnknownPartError,
    Upload,
    summaries,
)
from capsync.cloud.timefmt import iso_from_ns
from capsync.runtime.blocking import durable_writes, run_blocking
from capsync.runtime.capture_file import make_private_dirs_durable
from capsync.runtime.sync_protocol import FileKind

T = TypeVar("T")
#: Rows of a file whose commit is in progress: staged in batches (each its own short transaction),
#: moved into the real tables by the commit's one transaction, and invisible to every query until then.
STAGING = """
CREATE TABLE IF NOT EXISTS staged_tabular AS SELECT * FROM tabular WHERE 0;
CREATE UNIQUE INDEX IF NOT EXISTS staged_tabular_key ON staged_tabular (part_id, file_id, record_index);
CREATE TABLE IF NOT EXISTS staged_binary AS SELECT * FROM binary_items WHERE 0;
CREATE UNIQUE INDEX IF NOT EXISTS staged_binary_key ON staged_binary (part_id, file_id, record_index);
"""
#: At most this many SQL queries run at once (each in its own thread and connection).
SQL_CONCURRENCY = 4


@lru_cache(maxsize=4)
def _dummy_hash(n: int) -> str:
    return hash_secret("no such part", n=n)


class SqliteStore:
    """`Store` backed by the SQLite file at `path` (created with its schema when missing)."""

    def __init__(self, path: Path, *, scrypt_n: int = 2**14) -> None:
        self.path = Path(path)
        make_private_dirs_durable(self.path.parent)
        private_db_file(self.path)  # rows and secret hashes are nobody else's business on this machine
        self._scrypt_n = scrypt_n
        self._lock = threading.Lock()
        self._sql_slots: trio.Semaphore | None = None
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is acknowledged only once durable. OFF inside without_fsync() (the simulation).
        self._db.execute("PRAGMA synchronous=FULL" if durable_writes() else "PRAGMA synchronous=OFF")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(SCHEMA)
        self._db.executescript(STAGING)
        self._reader: sqlite3.Connection | None = None  # see _point_read
        self._reader_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            return fn(*args)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_blocking(partial(self._locked, fn, *args))

    async def _point_read(self, sql: str, params: tuple) -> sqlite3.Row | None:
        """One row by primary key, read on the event loop through a second connection.

        Why not in a worker thread like everything else: in WAL mode a reader never waits for the
        writer, a key lookup takes some 20 us, and a hop to a thread and back costs ~0.4 ms of
        contended GIL under load, twice per uploaded file. Should the reader find the database
        busy anyway (WAL recovery after a crash), the read goes to a worker thread.
        """
        await trio.lowlevel.checkpoint()
        try:
            with self._reader_lock:
                if self._reader is None:
                    self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                    self._reader.row_factory = sqlite3.Row
                    self._reader.execute("PRAGMA busy_timeout=0")
                return self._reader.execute(sql, params).fetchone()
        except sqlite3.OperationalError:
            return await self._run(lambda: self._db.execute(sql, params).fetchone())

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
        row = await self._point_read("SELECT * FROM uploads WHERE part_id = ? AND file_id = ?", (part_id, file_id))
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

    async def delete_upload(self, part_id: str, file_id: str) -> None:
        """Forget an upload."""
        await self._run(
            lambda: self._db.execute("DELETE FROM uploads WHERE part_id = ? AND file_id = ?", (part_id, file_id))
        )

    async def list_uploads(self) -> list[Upload]:
        """Every declared upload of every part."""
        rows = await self._run(lambda: self._db.execute("SELECT * FROM uploads").fetchall())
        return [Upload(r["part_id"], r["file_id"], FileKind(r["kind"]), r["size"], r["sha256"], r["name"],
                       r["mime_type"], r["received"], r["created_ns"]) for r in rows]

    async def part_usage(self, part_id: str) -> PartUsage:
        """The part's uploads in flight (count, declared bytes) and its stored, unexpired bytes."""
        def usage() -> PartUsage:
            n, declared = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM uploads WHERE part_id = ?", (part_id,)).fetchone()
            (stored,) = self._db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM files WHERE part_id = ? AND expired_ns IS NULL", (part_id,)).fetchone()
            return PartUsage(n, declared, stored)

        return await self._run(usage)

    # -- committed files ----------------------------------------------------------------------

    async def get_file(self, part_id: str, file_id: str) -> CommittedFile | None:
        """The committed file (part, file), or None."""
        row = await self._point_read("SELECT * FROM files WHERE part_id = ? AND file_id = ?", (part_id, file_id))
        return None if row is None else file_from_row(row)

    def _stage_sync(self, tabular: Sequence[TabularRow], binary: Sequence[BinaryItem]) -> None:
        trows, brows = [tabular_values(r) for r in tabular], [binary_values(b) for b in binary]  # outside the lock

        def tx(db: sqlite3.Connection) -> None:
            db.executemany(f"INSERT OR IGNORE INTO staged_tabular ({TABULAR_COLS}) VALUES ({placeholders(TABULAR_COLS)})", trows)
            db.executemany(f"INSERT OR IGNORE INTO staged_binary ({BINARY_COLS}) VALUES ({placeholders(BINARY_COLS)})", brows)

        self._locked(self._tx, tx)

    async def stage_rows(self, tabular: Sequence[TabularRow], binary: Sequence[BinaryItem]) -> None:
        """Stage one batch of a file's rows (one short transaction); `commit(..., staged=True)` publishes them."""
        await run_blocking(self._stage_sync, tabular, binary)

    async def drop_staged(self, part_id: str, file_id: str) -> None:
        """Forget the staged rows of (part, file): before staging anew, and after a rejected file."""
        def tx(db: sqlite3.Connection) -> None:
            for table in ("staged_tabular", "staged_binary"):
                db.execute(f"DELETE FROM {table} WHERE part_id = ? AND file_id = ?", (part_id, file_id))

        await self._run(self._tx, tx)

    @staticmethod
    def _insert_commit(db: sqlite3.Connection, c: Commit, trows: list[tuple], brows: list[tuple]) -> bool:
        """Inside a transaction: store one file's commit; False (nothing inserted) if already committed."""
        f = c.file
        key = (f.part_id, f.file_id)
        if db.execute("SELECT 1 FROM files WHERE part_id = ? AND file_id = ?", key).fetchone():
            db.execute("DELETE FROM uploads WHERE part_id = ? AND file_id = ?", key)
            for table in ("staged_tabular", "staged_binary"):
                db.execute(f"DELETE FROM {table} WHERE part_id = ? AND file_id = ?", key)
            return False
        db.execute(
            f"INSERT INTO files ({FILE_COLS}) VALUES ({placeholders(FILE_COLS)})",
            (
                f.part_id, f.file_id, f.kind.value, f.size, f.sha256, f.records, f.name, f.mime_type,
                f.resource_type, f.resource_name, f.method, f.data_kind, dumps(f.params), dumps(list(f.tags)),
                f.created_ns, f.committed_ns, iso_from_ns(f.committed_ns), dumps(f.metadata),
            ),
        )
        db.executemany(f"INSERT OR IGNORE INTO tabular ({TABULAR_COLS}) VALUES ({placeholders(TABULAR_COLS)})", trows)
        db.executemany(f"INSERT OR IGNORE INTO binary_items ({BINARY_COLS}) VALUES ({placeholders(BINARY_COLS)})", brows)
        moved = 0
        for table, staging in (("tabular", "staged_tabular"), ("binary_items", "staged_binary")):
            if c.staged:  # one statement inside SQLite: no Python work per row under the lock
                moved += db.execute(f"INSERT OR IGNORE INTO {table} SELECT * FROM {staging} "
                                    "WHERE part_id = ? AND file_id = ?", key).rowcount
            db.execute(f"DELETE FROM {staging} WHERE part_id = ? AND file_id = ?", key)
        if c.staged and moved + len(trows) + len(brows) != f.records:
            # Another worker staging the same file dropped rows of this attempt (serve --workers).
            raise StoreUnavailable(f"file {f.file_id!r} of part {f.part_id!r} is being committed by another "
                                   "cloud process at the same time; retry the commit")
        db.execute("DELETE FROM uploads WHERE part_id = ? AND file_id = ?", key)
        return True

    def _commit_many_sync(self, commits: Sequence[Commit]) -> list[bool]:
        # Rows are encoded outside the lock; the one transaction (and its one WAL fsync) covers every file.
        values = [([tabular_values(r) for r in c.tabular], [binary_values(b) for b in c.binary]) for c in commits]

        def tx(db: sqlite3.Connection) -> list[bool]:
            return [self._insert_commit(db, c, *v) for c, v in zip(commits, values)]

        return self._locked(self._tx, tx)

    async def commit(self, file: CommittedFile, tabular: Sequence[TabularRow], binary: Sequence[BinaryItem],
                     *, staged: bool = False) -> bool:
        """Atomically store a committed file with its rows (and, with `staged`, the rows staged for it);
        False (nothing inserted) if already committed."""
        return (await self.commit_many([Commit(file, tabular, binary, staged)]))[0]

    async def commit_many(self, commits: Sequence[Commit]) -> list[bool]:
        """Commit every file of `commits` in one transaction (group commit); see `Store.commit_many`."""
        return await run_blocking(self._commit_many_sync, commits) if commits else []

    async def list_files(self, part_id: str, *, after: str | None = None, limit: int = 100) -> list[CommittedFile]:
        """Committed files of a part in file id order, after file id `after`."""
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT * FROM files WHERE part_id = ? AND file_id > ? ORDER BY file_id LIMIT ?",
                (part_id, after or "", limit),
            ).fetchall()
        )
        return [file_from_row(r) for r in rows]

    # -- queries ------------------------------------------------------------------------------

    def _select(self, table: str, part_id: str, q: Query) -> list[sqlite3.Row]:
        where, args = q.sql_filter(part_id, "?", SQLITE_TAG_TEST)
        sql = f"SELECT * FROM {table} WHERE {where} ORDER BY {q.sql_order()} LIMIT ?"
        return self._db.execute(sql, (*args, q.limit)).fetchall()

    async def count(self, part_id: str, kind: str, query: Query) -> int:
        """How many tabular rows or binary items of the part match `query` (see `Store.count`)."""
        table = {"tabular": "tabular", "binary": "binary_items"}[kind]
        where, args = query.sql_filter(part_id, "?", SQLITE_TAG_TEST)
        return await self._run(lambda: self._db.execute(f"SELECT count(*) FROM {table} WHERE {where}", args).fetchone()[0])

    def _aggregate_sync(self, part_id: str, q: Query, b: Buckets, max_rows: int, timeout_s: float) -> list[AggregateRow]:
        # Its own read-only connection: a long aggregate never holds the writer's lock, and WAL
        # readers never wait for the writer. The progress handler stops it after timeout_s.
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        try:
            deadline = time.monotonic() + timeout_s
            db.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
            sql, args = sqlite_statement(part_id, q, b)
            try:
                return rows_of(db.execute(sql, args), max_rows)
            except sqlite3.OperationalError as exc:
                if str(exc) == "interrupted":
                    raise QueryRefused(f"the aggregate ran longer than {timeout_s:g} s and was stopped; "
                                       "narrow the time range or the filters") from None
                raise
        finally:
            db.close()

    async def aggregate_tabular(self, part_id: str, query: Query, buckets: Buckets, *, max_rows: int,
                                timeout_s: float) -> list[AggregateRow]:
        """Per series, numeric field and time bucket: count, min, max, sum, by GROUP BY (cloud/aggregate_sql.py)."""
        if self._sql_slots is None:
            self._sql_slots = trio.Semaphore(SQL_CONCURRENCY)
        async with self._sql_slots:
            return await run_blocking(self._aggregate_sync, part_id, query, buckets, max_rows, timeout_s)

    async def query_tabular(self, part_id: str, query: Query) -> list[TabularRow]:
        """Tabular rows of a part matching `query`, in (requested_ns, file_id, record_index) order."""
        rows = await self._run(self._select, "tabular", part_id, query)
        return [tabular_from_row(r) for r in rows]

    async def query_binary(self, part_id: str, query: Query) -> list[BinaryItem]:
        """Binary items of a part matching `query`, in (requested_ns, file_id, record_index) order."""
        rows = await self._run(self._select, "binary_items", part_id, query)
        return [binary_from_row(r) for r in rows]

    async def get_binary(self, part_id: str, file_id: str, record_index: int) -> BinaryItem | None:
        """One binary item of a part, or None."""
        row = await self._run(
            lambda: self._db.execute(
                "SELECT * FROM binary_items WHERE part_id = ? AND file_id = ? AND record_index = ?",
                (part_id, file_id, record_index),
            ).fetchone()
        )
        return None if row is None else binary_from_row(row)

    # -- retention and accounting ---------------------------------------------------------------

    def _expire_sync(self, now_ns: int) -> list[CommittedFile]:
        def tx(db: sqlite3.Connection) -> list[CommittedFile]:
            rows = db.execute("SELECT * FROM files WHERE expired_ns IS NULL AND kind = 'capture'").fetchall()
            gone = []
            for e in retention.due((file_from_row(r) for r in rows), now_ns):
                key = (e.file.part_id, e.file.file_id)
                db.execute("DELETE FROM tabular WHERE part_id = ? AND file_id = ?", key)
                db.execute("DELETE FROM binary_items WHERE part_id = ? AND file_id = ?", key)
                db.execute("UPDATE files SET expired_ns = ? WHERE part_id = ? AND file_id = ?", (now_ns, *key))
                gone.append(replace(e.file, expired_ns=now_ns))
            return gone

        return self._tx(tx)

    async def expire(self, now_ns: int) -> list[CommittedFile]:
        """Delete the rows of files past their retention_policy (days, size limits; capsync.cloud.retention).

        The files rows stay, marked expired, so a late retry of the same upload is still answered
        "committed" and never stored a second time.
        """
        return await self._run(self._expire_sync, now_ns)

    # -- the data browser and SQL ---------------------------------------------------------------

    def _summary_sync(self, part_id: str) -> list[ResourceSummary]:
        key = "resource_type, resource_name, method"
        counts: dict[tuple[str, str, str, str], tuple[int, int | None, int | None]] = {}
        for table, kind in (("tabular", "tabular"), ("binary_items", "binary")):
            for r in self._db.execute(
                f"SELECT {key}, COUNT(*), MIN(requested_ns), MAX(requested_ns) FROM {table} "
                f"WHERE part_id = ? GROUP BY {key}", (part_id,),
            ):
                counts[(r[0], r[1], r[2], kind)] = (r[3], r[4], r[5])
        files = self._db.execute(
            "SELECT resource_type, resource_name, method, data_kind, size, tags FROM files "
            "WHERE part_id = ? AND expired_ns IS NULL", (part_id,),
        )
        return summaries(counts, ((*r[:5], json.loads(r[5])) for r in files))

    async def summary(self, part_id: str) -> list[ResourceSummary]:
        """Per capture method of the part: items, time range, files, bytes and tags."""
        return await self._run(self._summary_sync, part_id)

    async def run_sql(self, part_id: str, sql: str, *, max_rows: int, timeout_s: float) -> SqlResult:
        """Run one read-only statement over the part's `readings` view (cloud/sql.py), on its own connection."""
        if self._sql_slots is None:  # made inside Trio: the store itself may be built outside it
            self._sql_slots = trio.Semaphore(SQL_CONCURRENCY)
        async with self._sql_slots:
            return await run_blocking(
                partial(run_readonly, part_id, sql, source=self.path, max_rows=max_rows, timeout_s=timeout_s)
            )

    def _count(self) -> StoreStatistics:
        def n(table: str) -> int:
            return self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

        return StoreStatistics(n("parts"), n("uploads"), n("files"), n("tabular"), n("binary_items"))

    async def statistics(self) -> StoreStatistics:
        """Row counts of every table."""
        return await self._run(self._count)

    def close_sync(self) -> None:
        """Close the database connections (blocking; for the CLI)."""
        self._locked(self._db.close)
        self._close_reader()

    async def aclose(self) -> None:
        """Close the database connections."""
        await self._run(self._db.close)
        self._close_reader()

    def _close_reader(self) -> None:
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
