"""A `Store` on PostgreSQL (`capsync cloud serve --store postgresql://...`), shared by many cloud processes.

Several `capsync cloud serve` processes may use one database at once (issue 14, scale-out); binary
bytes stay in the cloud's blob store as with the other stores. psycopg 3's sync API runs in worker
threads (`run_blocking`), each call on a connection from a small pool (psycopg_pool), so concurrent
requests do not wait for one connection. Tables and values are the SQLite store's
(cloud/postgres_schema.py), in one schema (default `capsync`).

- **Schema**: created on first use, idempotently, under an advisory lock, so two processes starting
  at once do not race on the DDL.
- **Exactly once**: a commit is one transaction; the `files` row goes first with
  `INSERT ... ON CONFLICT DO NOTHING`, so of two processes committing one file at once the second
  waits on the primary key and inserts nothing (False). Rows follow by COPY: rows of a file exist
  only with its `files` row, inserted in the same transaction. `commit_many` sorts its files, so two
  group commits lock them in the same order. Staged rows become visible only if every record of the
  file is staged (another process staging the same file can drop them: then the commit raises
  StoreUnavailable, a 503 the agent retries, rather than publish a partial file).
- **Retention runs once**: `expire` holds a row lock (`locks` table, which SQL roles cannot touch)
  for its transaction, so two concurrent sweeps never delete twice; `exclusive_sweep` lets
  `apply_retention` skip the whole sweep while another process runs one.
- **Unreachable**: connection failures (connect timeout, broken connection, pool wait) are
  StoreUnavailable, a 503, never a 500 or a hang.
- **SQL**: natively in PostgreSQL, part-scoped by per-part logins (cloud/postgres_sql.py).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import lru_cache, partial
from typing import Any, TypeVar

import psycopg
import trio
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from capsync.cloud import retention
from capsync.cloud.aggregate_sql import POSTGRES_TAG_TEST, postgres_statement, rows_of
from capsync.cloud.auth import check_secret, hash_secret
from capsync.cloud.postgres_schema import (
    BINARY_COLS, FILE_COLS, TABULAR_COLS, binary_values, cols, ddl, file_values, placeholders, tabular_values,
)
from capsync.cloud.postgres_sql import SqlLogins, run_query
from capsync.cloud.sqlite_schema import binary_from_row, file_from_row, tabular_from_row
from capsync.cloud.store import (
    AggregateRow, BinaryItem, Buckets, Commit, CommittedFile, PartExistsError, PartUsage, Query, QueryRefused,
    ResourceSummary, SqlResult, StoreStatistics, StoreUnavailable, TabularRow, UnknownPartError, Upload, summaries,
)
from capsync.runtime.blocking import run_blocking
from capsync.runtime.sync_protocol import FileKind

T = TypeVar("T")
DEFAULT_SCHEMA = "capsync"
SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,39}")
#: Bumped when the DDL changes: a process finding this version skips the DDL (and its locks).
SCHEMA_VERSION = "1"
#: At most this many SQL queries run at once (each on its own connection).
SQL_CONCURRENCY = 4
_RETRIES = 3  # a deadlock or serialization failure is retried this many times


@lru_cache(maxsize=4)
def _dummy_hash(n: int) -> str:
    return hash_secret("no such part", n=n)


def _lost(exc: BaseException) -> bool:
    """Whether `exc` means the server cannot be reached (as opposed to a bad statement)."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03", "53300")


class PostgresStore:
    """`Store` in the PostgreSQL database at `url` (a libpq URL or conninfo), tables in `schema`."""

    def __init__(self, url: str, *, schema: str = DEFAULT_SCHEMA, scrypt_n: int = 2**14, pool_size: int = 8,
                 connect_timeout_s: int = 5, pool_wait_s: float = 5.0) -> None:
        if not SCHEMA_RE.fullmatch(schema):
            raise ValueError(f"schema {schema!r}: use 1-40 lowercase letters, digits and _, not starting with a digit")
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"not a PostgreSQL URL: {str(exc).strip()[:200]}") from None
        self.url, self.schema = url, schema
        self.where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}/{params.get('dbname') or ''}"
        self._scrypt_n = scrypt_n
        self._connect_timeout_s = max(2, int(connect_timeout_s))
        options: dict[str, Any] = {"autocommit": True, "application_name": "capsync-cloud"}
        for key, value in (("connect_timeout", self._connect_timeout_s), ("keepalives_idle", 10),
                           ("keepalives_interval", 5), ("keepalives_count", 3)):
            if key not in params:  # the URL's own settings win
                options[key] = value
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, kwargs=options, open=False,
                                    timeout=pool_wait_s, check=ConnectionPool.check_connection,
                                    name=f"capsync-{schema}")
        self._s = sql.Identifier(schema)
        self._logins = SqlLogins(schema)
        self._ready = False
        self._ready_lock = threading.Lock()
        self._down = False
        self._sql_slots: trio.Semaphore | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def _q(self, text: str) -> sql.Composed:
        """`text` with `{s}` as the store's schema."""
        return sql.SQL(text).format(s=self._s)

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return StoreUnavailable(f"PostgreSQL at {self.where}: {type(exc).__name__}: {detail}")

    def _prepare(self) -> None:
        with self._ready_lock:
            if self._ready:
                return
            try:  # one plain connection first: its error says why (password, host, database), the pool's would not
                with psycopg.connect(self.url, **self._pool.kwargs) as db:
                    self._create_schema(db)
            except psycopg.OperationalError as exc:
                raise self._unavailable(exc) from exc
            self._pool.open(wait=False)
            self._ready = True

    def _create_schema(self, db: psycopg.Connection) -> None:
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"capsync schema {self.schema}",))
            if db.execute("SELECT to_regclass(%s)", (f"{self.schema}.meta",)).fetchone()[0] is not None:
                row = db.execute(self._q("SELECT value FROM {s}.meta WHERE key = 'version'")).fetchone()
                if row and row[0] == SCHEMA_VERSION:
                    return
            for stmt in ddl(self.schema):
                db.execute(stmt)
            db.execute(self._q("INSERT INTO {s}.meta VALUES ('id', %s) ON CONFLICT DO NOTHING"), (secrets.token_hex(5),))
            db.execute(self._q("INSERT INTO {s}.meta VALUES ('version', %s) ON CONFLICT (key) DO UPDATE "
                               "SET value = excluded.value"), (SCHEMA_VERSION,))

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(connection, *args)` on a pooled connection; connection failures become StoreUnavailable."""
        self._prepare()
        if self._down:  # the last call lost the server: one quick probe, not a wait for the pool's reconnects
            try:
                psycopg.connect(self.url, **self._pool.kwargs).close()
            except psycopg.OperationalError as exc:
                raise self._unavailable(exc) from exc
            self._down = False
        try:
            with self._pool.connection() as db:
                return fn(db, *args)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            if _lost(exc):
                self._down = True
                raise self._unavailable(exc) from exc
            raise

    def _tx(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(connection, *args)` in one transaction, retried after a deadlock or serialization failure."""
        def run(db: psycopg.Connection) -> T:
            for attempt in range(_RETRIES):
                try:
                    with db.transaction():
                        return fn(db, *args)
                except (errors.DeadlockDetected, errors.SerializationFailure):
                    if attempt == _RETRIES - 1:
                        raise
            raise AssertionError("unreachable")

        return self._call(run)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_blocking(partial(self._call, fn, *args))

    def _rows(self, db: psycopg.Connection, query: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return db.cursor(row_factory=dict_row).execute(self._q(query), args).fetchall()

    def prepare_sync(self) -> None:
        """Connect and create the schema now (blocking; at start and for the CLI); StoreUnavailable if unreachable."""
        self._prepare()

    # -- parts --------------------------------------------------------------------------------

    def add_part_sync(self, part_id: str, secret: str, *, rotate: bool = False) -> None:
        """Blocking `add_part`, for the CLI that runs outside Trio."""
        digest, now = hash_secret(secret, n=self._scrypt_n), time.time_ns()

        def tx(db: psycopg.Connection) -> None:
            if rotate:
                if db.execute(self._q("UPDATE {s}.parts SET secret_hash = %s, rotated_ns = %s WHERE part_id = %s"),
                              (digest, now, part_id)).rowcount == 0:
                    raise UnknownPartError(part_id)
            elif db.execute(self._q("INSERT INTO {s}.parts VALUES (%s, %s, %s, NULL) ON CONFLICT DO NOTHING"),
                            (part_id, digest, now)).rowcount == 0:
                raise PartExistsError(part_id)

        self._tx(tx)

    async def add_part(self, part_id: str, secret: str, *, rotate: bool = False) -> None:
        """Create a part, or with `rotate=True` replace an existing part's secret."""
        await run_blocking(partial(self.add_part_sync, part_id, secret, rotate=rotate))

    async def verify_part(self, part_id: str, secret: str) -> bool:
        """Whether `secret` is the secret of `part_id`; an unknown part costs the same scrypt."""
        row = await self._run(lambda db: db.execute(self._q("SELECT secret_hash FROM {s}.parts WHERE part_id = %s"),
                                                    (part_id,)).fetchone())
        stored = _dummy_hash(self._scrypt_n) if row is None else row[0]
        ok = await run_blocking(check_secret, secret, stored)
        return ok and row is not None

    # -- part administration (capsync.cloud.part_admin.PartAdmin calls these) ---------------------

    def admin_lookup_sync(self, part_id: str) -> tuple | None:
        """(secret_hash, previous_hash, previous_until_ns, disabled_reason) of a part, or None."""
        return self._call(lambda db: db.execute(self._q(
            "SELECT p.secret_hash, a.previous_hash, a.previous_until_ns, a.disabled_reason FROM {s}.parts p "
            "LEFT JOIN {s}.part_admin a ON a.part_id = p.part_id WHERE p.part_id = %s"), (part_id,)).fetchone())

    def admin_list_sync(self) -> list[tuple]:
        """(part_id, disabled_reason, files, bytes, last committed_ns) of every part, in part id order."""
        return self._call(lambda db: db.execute(self._q(
            "SELECT p.part_id, a.disabled_reason, count(f.file_id), coalesce(sum(f.size), 0)::bigint, "
            "max(f.committed_ns) FROM {s}.parts p LEFT JOIN {s}.part_admin a ON a.part_id = p.part_id "
            "LEFT JOIN {s}.files f ON f.part_id = p.part_id AND f.expired_ns IS NULL "
            "GROUP BY p.part_id, a.disabled_reason ORDER BY p.part_id")).fetchall())

    def admin_set_sync(self, part_id: str, fields: dict[str, Any]) -> None:
        """Set part_admin fields (previous_hash, previous_until_ns, disabled_reason) of an existing part."""
        allowed = {"previous_hash", "previous_until_ns", "disabled_reason"}
        assert set(fields) <= allowed, fields

        def tx(db: psycopg.Connection) -> None:
            if db.execute(self._q("SELECT 1 FROM {s}.parts WHERE part_id = %s FOR UPDATE"), (part_id,)).fetchone() is None:
                raise UnknownPartError(part_id)
            db.execute(self._q("INSERT INTO {s}.part_admin (part_id) VALUES (%s) ON CONFLICT DO NOTHING"), (part_id,))
            sets = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in fields)
            db.execute(sql.SQL("UPDATE {}.part_admin SET {} WHERE part_id = %s").format(self._s, sets),
                       (*fields.values(), part_id))

        self._tx(tx)

    def admin_remove_sync(self, part_id: str, *, delete_data: bool) -> None:
        """Remove a part (and its SQL login); with `delete_data` its uploads, files and rows too."""
        def tx(db: psycopg.Connection) -> None:
            db.execute(self._q("DELETE FROM {s}.parts WHERE part_id = %s"), (part_id,))
            db.execute(self._q("DELETE FROM {s}.part_admin WHERE part_id = %s"), (part_id,))
            self._logins.drop(db, part_id)
            if delete_data:
                for table in ("uploads", "files", "tabular", "binary_items", "staged_tabular", "staged_binary"):
                    db.execute(sql.SQL("DELETE FROM {}.{} WHERE part_id = %s").format(self._s, sql.Identifier(table)),
                               (part_id,))

        self._tx(tx)

    # -- uploads ------------------------------------------------------------------------------

    @staticmethod
    def _upload(r: dict[str, Any]) -> Upload:
        return Upload(r["part_id"], r["file_id"], FileKind(r["kind"]), r["size"], r["sha256"], r["name"],
                      r["mime_type"], r["received"], r["created_ns"])

    async def get_upload(self, part_id: str, file_id: str) -> Upload | None:
        """The declared upload of (part, file), or None."""
        rows = await self._run(self._rows, "SELECT * FROM {s}.uploads WHERE part_id = %s AND file_id = %s",
                               (part_id, file_id))
        return self._upload(rows[0]) if rows else None

    async def save_upload(self, upload: Upload) -> None:
        """Insert or replace a declared upload."""
        u = upload
        await self._run(lambda db: db.execute(self._q(
            "INSERT INTO {s}.uploads VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'partial', %s) "
            "ON CONFLICT (part_id, file_id) DO UPDATE SET kind = excluded.kind, size = excluded.size, "
            "sha256 = excluded.sha256, name = excluded.name, mime_type = excluded.mime_type, "
            "received = excluded.received, state = excluded.state, created_ns = excluded.created_ns"),
            (u.part_id, u.file_id, u.kind.value, u.size, u.sha256, u.name, u.mime_type, u.received, u.created_ns)))

    async def delete_upload(self, part_id: str, file_id: str) -> None:
        """Forget an upload."""
        await self._run(lambda db: db.execute(self._q("DELETE FROM {s}.uploads WHERE part_id = %s AND file_id = %s"),
                                              (part_id, file_id)))

    async def list_uploads(self) -> list[Upload]:
        """Every declared upload of every part."""
        return [self._upload(r) for r in await self._run(self._rows, "SELECT * FROM {s}.uploads")]

    async def part_usage(self, part_id: str) -> PartUsage:
        """The part's uploads in flight (count, declared bytes) and its stored, unexpired bytes."""
        row = await self._run(lambda db: db.execute(self._q(
            "SELECT (SELECT count(*) FROM {s}.uploads WHERE part_id = %s), "
            "(SELECT coalesce(sum(size), 0) FROM {s}.uploads WHERE part_id = %s)::bigint, "
            "(SELECT coalesce(sum(size), 0) FROM {s}.files WHERE part_id = %s AND expired_ns IS NULL)::bigint"),
            (part_id, part_id, part_id)).fetchone())
        return PartUsage(*row)

    # -- committing ---------------------------------------------------------------------------

    async def get_file(self, part_id: str, file_id: str) -> CommittedFile | None:
        """The committed file (part, file), or None."""
        rows = await self._run(self._rows, "SELECT * FROM {s}.files WHERE part_id = %s AND file_id = %s",
                               (part_id, file_id))
        return file_from_row(rows[0]) if rows else None

    def _copy(self, db: psycopg.Connection, table: str, names: str, values: list[tuple]) -> None:
        if not values:
            return
        stmt = sql.SQL("COPY {}.{} ({}) FROM STDIN").format(self._s, sql.Identifier(table), cols(names))
        with db.cursor().copy(stmt) as copy:
            for v in values:
                copy.write_row(v)

    def _stage_sync(self, db: psycopg.Connection, trows: list[tuple], brows: list[tuple]) -> None:
        # COPY into a temporary table, then one INSERT that skips rows a concurrent stager already put there.
        for table, names, values in (("staged_tabular", TABULAR_COLS, trows), ("staged_binary", BINARY_COLS, brows)):
            if not values:
                continue
            tmp = sql.Identifier(f"capsync_in_{table}")
            db.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}.{}) ON COMMIT DELETE ROWS").format(
                tmp, self._s, sql.Identifier(table)))
            with db.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(tmp, cols(names))) as copy:
                for v in values:
                    copy.write_row(v)
            db.execute(sql.SQL("INSERT INTO {}.{} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING").format(
                self._s, sql.Identifier(table), cols(names), cols(names), tmp))

    async def stage_rows(self, tabular: Sequence[TabularRow], binary: Sequence[BinaryItem]) -> None:
        """Stage one batch of a file's rows (one short transaction); `commit(..., staged=True)` publishes them."""
        from capsync.cloud.ingest import Rejected

        trows, brows = [tabular_values(r) for r in tabular], [binary_values(b) for b in binary]
        try:
            await run_blocking(self._tx, self._stage_sync, trows, brows)
        except psycopg.DataError as exc:  # a NUL in a name or tag: PostgreSQL text cannot hold it
            raise Rejected(f"the cloud's PostgreSQL cannot store a value of this file: {str(exc)[:200]}") from None

    async def drop_staged(self, part_id: str, file_id: str) -> None:
        """Forget the staged rows of (part, file): before staging anew, and after a rejected file."""
        def tx(db: psycopg.Connection) -> None:
            for table in ("staged_tabular", "staged_binary"):
                db.execute(sql.SQL("DELETE FROM {}.{} WHERE part_id = %s AND file_id = %s").format(
                    self._s, sql.Identifier(table)), (part_id, file_id))

        await run_blocking(self._tx, tx)

    def _insert_commit(self, db: psycopg.Connection, c: Commit, trows: list[tuple], brows: list[tuple]) -> bool:
        """Inside a transaction: store one file's commit; False (nothing inserted) if already committed."""
        f = c.file
        key = (f.part_id, f.file_id)
        new = db.execute(sql.SQL("INSERT INTO {}.files ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
            self._s, cols(FILE_COLS), placeholders(FILE_COLS)), file_values(f)).rowcount == 1
        if new:
            self._copy(db, "tabular", TABULAR_COLS, trows)
            self._copy(db, "binary_items", BINARY_COLS, brows)
            if c.staged:
                moved = 0
                for table, staging, names in (("tabular", "staged_tabular", TABULAR_COLS),
                                              ("binary_items", "staged_binary", BINARY_COLS)):
                    moved += db.execute(sql.SQL(
                        "INSERT INTO {s}.{t} ({c}) SELECT {c} FROM {s}.{g} WHERE part_id = %s AND file_id = %s").format(
                        s=self._s, t=sql.Identifier(table), g=sql.Identifier(staging), c=cols(names)), key).rowcount
                if moved + len(trows) + len(brows) != f.records:
                    raise StoreUnavailable(f"file {f.file_id!r} of part {f.part_id!r} is being committed by another "
                                           "cloud process at the same time; retry the commit")
        for staging in ("staged_tabular", "staged_binary"):
            db.execute(sql.SQL("DELETE FROM {}.{} WHERE part_id = %s AND file_id = %s").format(
                self._s, sql.Identifier(staging)), key)
        db.execute(self._q("DELETE FROM {s}.uploads WHERE part_id = %s AND file_id = %s"), key)
        return new

    def _commit_many_sync(self, commits: Sequence[Commit]) -> list[bool]:
        values = [([tabular_values(r) for r in c.tabular], [binary_values(b) for b in c.binary]) for c in commits]
        order = sorted(range(len(commits)), key=lambda i: (commits[i].file.part_id, commits[i].file.file_id))

        def tx(db: psycopg.Connection) -> list[bool]:
            out = [False] * len(commits)
            for i in order:  # one lock order for every process: no deadlock between two group commits
                out[i] = self._insert_commit(db, commits[i], *values[i])
            return out

        return self._tx(tx)

    async def commit(self, file: CommittedFile, tabular: Sequence[TabularRow], binary: Sequence[BinaryItem],
                     *, staged: bool = False) -> bool:
        """Atomically store a committed file with its rows (and, with `staged`, the rows staged for it);
        False (nothing inserted) if already committed, by this process or another."""
        return (await self.commit_many([Commit(file, tabular, binary, staged)]))[0]

    async def commit_many(self, commits: Sequence[Commit]) -> list[bool]:
        """Commit every file of `commits` in one transaction (group commit); see `Store.commit_many`."""
        return await run_blocking(self._commit_many_sync, commits) if commits else []

    async def list_files(self, part_id: str, *, after: str | None = None, limit: int = 100) -> list[CommittedFile]:
        """Committed files of a part in file id order, after file id `after`."""
        rows = await self._run(self._rows, "SELECT * FROM {s}.files WHERE part_id = %s AND file_id > %s "
                                           "ORDER BY file_id LIMIT %s", (part_id, after or "", limit))
        return [file_from_row(r) for r in rows]

    # -- queries ------------------------------------------------------------------------------

    def _select(self, db: psycopg.Connection, table: str, part_id: str, q: Query) -> list[dict[str, Any]]:
        where, args = q.sql_filter(part_id, "%s", POSTGRES_TAG_TEST)
        return self._rows(db, f"SELECT * FROM {{s}}.{table} WHERE {where} "
                              f"ORDER BY {q.sql_order()} LIMIT %s", (*args, q.limit))

    async def count(self, part_id: str, kind: str, query: Query) -> int:
        """How many tabular rows or binary items of the part match `query` (see `Store.count`)."""
        table = {"tabular": "tabular", "binary": "binary_items"}[kind]
        where, args = query.sql_filter(part_id, "%s", POSTGRES_TAG_TEST)
        return await self._run(lambda db: db.execute(self._q(f"SELECT count(*) FROM {{s}}.{table} WHERE {where}"),
                                                      args).fetchone()[0])

    def _aggregate_sync(self, db: psycopg.Connection, part_id: str, q: Query, b: Buckets, max_rows: int,
                        timeout_s: float) -> list[AggregateRow]:
        text, args = postgres_statement(part_id, q, b)
        try:
            with db.transaction():
                db.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(max(1, int(timeout_s * 1000)))))
                with db.cursor(name="capsync_aggregate") as cur:  # server-side: rows arrive as they are read
                    cur.itersize = 2000
                    cur.execute(self._q(text), args)
                    return rows_of(cur, max_rows)
        except errors.QueryCanceled:
            raise QueryRefused(f"the aggregate ran longer than {timeout_s:g} s and was stopped; "
                               "narrow the time range or the filters") from None

    async def aggregate_tabular(self, part_id: str, query: Query, buckets: Buckets, *, max_rows: int,
                                timeout_s: float) -> list[AggregateRow]:
        """Per series, numeric field and time bucket: count, min, max, sum, by GROUP BY (cloud/aggregate_sql.py)."""
        if self._sql_slots is None:
            self._sql_slots = trio.Semaphore(SQL_CONCURRENCY)
        async with self._sql_slots:
            return await self._run(self._aggregate_sync, part_id, query, buckets, max_rows, timeout_s)

    async def query_tabular(self, part_id: str, query: Query) -> list[TabularRow]:
        """Tabular rows of a part matching `query`, in (requested_ns, file_id, record_index) order."""
        return [tabular_from_row(r) for r in await self._run(self._select, "tabular", part_id, query)]

    async def query_binary(self, part_id: str, query: Query) -> list[BinaryItem]:
        """Binary items of a part matching `query`, in (requested_ns, file_id, record_index) order."""
        return [binary_from_row(r) for r in await self._run(self._select, "binary_items", part_id, query)]

    async def get_binary(self, part_id: str, file_id: str, record_index: int) -> BinaryItem | None:
        """One binary item of a part, or None."""
        rows = await self._run(self._rows, "SELECT * FROM {s}.binary_items WHERE part_id = %s AND file_id = %s "
                                           "AND record_index = %s", (part_id, file_id, record_index))
        return binary_from_row(rows[0]) if rows else None

    def _summary_sync(self, db: psycopg.Connection, part_id: str) -> list[ResourceSummary]:
        import json

        key = "resource_type, resource_name, method"
        counts: dict[tuple, list] = {}
        for table, kind in (("tabular", "tabular"), ("binary_items", "binary")):
            for r in db.execute(self._q(f"SELECT {key}, count(*), min(requested_ns), max(requested_ns) FROM {{s}}.{table} "
                                        f"WHERE part_id = %s GROUP BY {key}"), (part_id,)):
                counts[(r[0], r[1], r[2], kind)] = [r[3], r[4], r[5]]
        files = db.execute(self._q("SELECT resource_type, resource_name, method, data_kind, size, tags FROM {s}.files "
                                   "WHERE part_id = %s AND expired_ns IS NULL"), (part_id,))
        return summaries(counts, ((*r[:5], json.loads(r[5])) for r in files))

    async def summary(self, part_id: str) -> list[ResourceSummary]:
        """Per capture method of the part: items, time range, files, bytes and tags."""
        return await self._run(self._summary_sync, part_id)

    async def run_sql(self, part_id: str, sql_text: str, *, max_rows: int, timeout_s: float) -> SqlResult:
        """Run one read-only statement over the part's `readings` view, as the part's own login
        (cloud/postgres_sql.py); QueryRefused with the reason for anything else."""
        if self._sql_slots is None:  # made inside Trio: the store itself may be built outside it
            self._sql_slots = trio.Semaphore(SQL_CONCURRENCY)
        async with self._sql_slots:
            role, password = await self._run(self._logins.login, part_id)
            return await run_blocking(partial(run_query, self.url, role, password, self.schema, sql_text,
                                              max_rows=max_rows, timeout_s=timeout_s,
                                              connect_timeout_s=self._connect_timeout_s))

    # -- retention and accounting ---------------------------------------------------------------

    def _expire_sync(self, db: psycopg.Connection, now_ns: int) -> list[CommittedFile]:
        db.execute(self._q("SELECT 1 FROM {s}.locks WHERE name = 'expire' FOR UPDATE"))  # one expire at a time
        rows = self._rows(db, "SELECT * FROM {s}.files WHERE expired_ns IS NULL AND kind = 'capture'")
        gone = []
        for e in retention.due((file_from_row(r) for r in rows), now_ns):
            key = (e.file.part_id, e.file.file_id)
            for table in ("tabular", "binary_items"):
                db.execute(sql.SQL("DELETE FROM {}.{} WHERE part_id = %s AND file_id = %s").format(
                    self._s, sql.Identifier(table)), key)
            db.execute(self._q("UPDATE {s}.files SET expired_ns = %s WHERE part_id = %s AND file_id = %s"), (now_ns, *key))
            gone.append(replace(e.file, expired_ns=now_ns))
        return gone

    async def expire(self, now_ns: int) -> list[CommittedFile]:
        """Delete the rows of files past their retention_policy; the files rows stay, marked expired.

        Safe across processes: each expire holds the `expire` row lock for its transaction, so a
        second one waits, then finds those files already expired and deletes nothing twice.
        """
        return await run_blocking(self._tx, self._expire_sync, now_ns)

    def _sweep_begin(self) -> psycopg.Connection | None:
        self._prepare()
        try:
            db = self._pool.getconn()
        except PoolTimeout as exc:
            raise self._unavailable(exc) from exc
        try:
            db.execute("BEGIN")
            if db.execute(self._q("SELECT 1 FROM {s}.locks WHERE name = 'sweep' FOR UPDATE SKIP LOCKED")).fetchone():
                return db
            db.execute("ROLLBACK")
        except psycopg.OperationalError as exc:
            self._pool.putconn(db)
            raise self._unavailable(exc) from exc
        self._pool.putconn(db)
        return None

    def _sweep_end(self, db: psycopg.Connection) -> None:
        try:
            if not db.closed:
                db.execute("ROLLBACK")
        except psycopg.OperationalError:
            pass  # the connection died: its lock went with it
        finally:
            self._pool.putconn(db)

    @asynccontextmanager
    async def exclusive_sweep(self) -> AsyncIterator[bool]:
        """Hold the retention sweep of the whole database while the block runs: yields True, or False
        at once when another cloud process is sweeping (the caller skips; `apply_retention` does)."""
        db = await run_blocking(self._sweep_begin)
        try:
            yield db is not None
        finally:
            if db is not None:
                with trio.CancelScope(shield=True):
                    await run_blocking(self._sweep_end, db)

    def _count(self, db: psycopg.Connection) -> StoreStatistics:
        tables = ("parts", "uploads", "files", "tabular", "binary_items")
        query = sql.SQL("SELECT {}").format(sql.SQL(", ").join(
            sql.SQL("(SELECT count(*) FROM {}.{})").format(self._s, sql.Identifier(t)) for t in tables))
        return StoreStatistics(*db.execute(query).fetchone())

    async def statistics(self) -> StoreStatistics:
        """Row counts of every table."""
        return await self._run(self._count)

    def close_sync(self) -> None:
        """Close the pool's connections (blocking; for the CLI)."""
        self._pool.close()

    async def aclose(self) -> None:
        """Close the pool's connections."""
        await run_blocking(self._pool.close)
