"""Read-only, part-scoped SQL over tabular rows: `POST /v1/tabular/sql` (docs/cloud.md).

How a query is confined to one part's rows, without trusting the query text:

1. A fresh connection whose `main` database is an empty in-memory one. The cloud's database is
   ATTACHed read-only (`mode=ro`) under a random schema name that changes with every request,
   and `main` holds an empty table of the same name for every table of the attached database, so
   an unqualified `tabular`, `parts` or `files` never reaches a real one (`count(*)` reads no
   column, so the authorizer alone cannot refuse it). (On MongoDB the attached database is an in-memory copy of the part's rows.)
2. `temp.readings` is a view of that attached table with `WHERE part_id = '<part>'`.
3. `PRAGMA query_only = 1`, then an authorizer (sqlite3 `set_authorizer`) that allows SELECT,
   recursive CTEs, functions (but `load_extension`), the JSON table functions, and reads only of
   the view and of the attached `tabular` table. Everything else is denied: every write, CREATE,
   DROP, ATTACH/DETACH, PRAGMA (table-valued pragma functions included), transactions, and reads
   of any other table (`parts`, `files`, `sqlite_master`, ...). The random schema name cannot be
   guessed within the one statement a request runs, and error messages never show it.
4. EXPLAIN is refused (a query plan would name the attached database). One statement; at most
   `max_rows` rows and MAX_RESULT_BYTES of row JSON (more sets `truncated`, with the reason); a
   progress handler interrupts the statement after `timeout_s`; strings and blobs longer than
   16 MB are refused by SQLite.
"""

from __future__ import annotations

import base64
import json
import math
import re
import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from capsync.cloud.sqlite_schema import TABULAR_COLS, placeholders
from capsync.cloud.store import QueryRefused, SqlResult

#: The columns of the `readings` view, in order (times as ns and as RFC 3339 text; JSON as text).
READINGS_COLUMNS = (
    "part_id", "file_id", "record_index", "resource_type", "resource_name", "method", "params",
    "requested_ns", "received_ns", "requested", "received", "tags", "payload", "metadata",
)
MAX_VALUE_BYTES = 16 * 1024 * 1024
#: An SQL or MQL answer holds at most this many bytes of row JSON; past it, it is cut (`truncated`).
MAX_RESULT_BYTES = 8 * 1024 * 1024
_TABLE_FUNCTIONS = {"json_each", "json_tree"}
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}
_WRITE_ACTIONS = {
    sqlite3.SQLITE_INSERT: "INSERT", sqlite3.SQLITE_UPDATE: "UPDATE", sqlite3.SQLITE_DELETE: "DELETE",
    sqlite3.SQLITE_ALTER_TABLE: "ALTER TABLE", sqlite3.SQLITE_REINDEX: "REINDEX", sqlite3.SQLITE_ANALYZE: "ANALYZE",
    sqlite3.SQLITE_TRANSACTION: "a transaction", sqlite3.SQLITE_SAVEPOINT: "a savepoint",
}


def _view_sql(schema: str, part_id: str) -> str:
    literal = "'" + part_id.replace("'", "''") + "'"
    return (
        "CREATE TEMP VIEW readings AS SELECT part_id, file_id, record_index, resource_type, resource_name, "
        "method, params, requested_ns, received_ns, requested_at AS requested, received_at AS received, tags, "
        f"payload, metadata FROM {schema}.tabular WHERE part_id = {literal}"
    )


class _Guard:
    """The authorizer: allows reading the part's view and nothing that writes or escapes it."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.refusal: str | None = None

    def _deny(self, reason: str) -> int:
        if self.refusal is None:
            self.refusal = reason
        return sqlite3.SQLITE_DENY

    def __call__(self, action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None) -> int:
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ:
            if (db == self.schema and arg1 == "tabular") or (db == "temp" and arg1 == "readings"):
                return sqlite3.SQLITE_OK
            if db == "main" and (arg1 in _TABLE_FUNCTIONS or arg1 == "sqlite_master"):
                return sqlite3.SQLITE_OK  # main is the empty in-memory database; JSON table functions read it
            if db is None:
                return sqlite3.SQLITE_OK  # a common table expression of the query itself (count(*) FROM cte)
            return self._deny(f"only the readings view can be read, not {arg1!r}")
        if action == sqlite3.SQLITE_UPDATE and db == "main" and arg1 == "sqlite_master" and source is None:
            return sqlite3.SQLITE_OK  # SQLite declares a table function's columns this way; no write happens
        if action == sqlite3.SQLITE_FUNCTION:
            if (arg2 or "").lower() in _DENIED_FUNCTIONS:
                return self._deny(f"the function {arg2}() is refused")
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA:
            return self._deny("PRAGMA is refused")
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            return self._deny("ATTACH and DETACH are refused")
        if action in _WRITE_ACTIONS:
            return self._deny(f"the query is read-only: {_WRITE_ACTIONS[action]} is refused")
        return self._deny("the query is read-only: only SELECT statements run")


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    return value


def _scrub(message: str, schema: str) -> str:
    return message.replace(f"{schema}.", "").replace(schema, "db")[:300]


def run_readonly(
    part_id: str,
    sql: str,
    *,
    source: Path | None = None,
    rows: Iterable[Sequence[Any]] | None = None,
    max_rows: int,
    timeout_s: float,
) -> SqlResult:
    """Run `sql` over the `readings` view of `part_id`'s rows (blocking; call in a worker thread).

    The rows come from the SQLite database file `source` (opened read-only), or else from `rows`
    (tuples in TABULAR_COLS order), copied into an in-memory database first. Raises QueryRefused
    with a reason for anything that is not a read of the view, a bad statement, or a timeout.
    """
    text = sql.strip()
    if not text:
        raise QueryRefused("the query is empty")
    if _first_word(text) == "explain":  # a plan names the attached database and its tables
        raise QueryRefused("EXPLAIN is refused: only SELECT statements run")
    schema = "src_" + secrets.token_hex(12)
    db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False, uri=True)
    try:
        db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        db.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 1)
        if source is not None:
            db.execute(f"ATTACH DATABASE ? AS {schema}", (f"file:{quote(str(source))}?mode=ro",))
        else:
            db.execute(f"ATTACH DATABASE ':memory:' AS {schema}")
            db.execute(f"CREATE TABLE {schema}.tabular ({TABULAR_COLS})")
            db.executemany(f"INSERT INTO {schema}.tabular VALUES ({placeholders(TABULAR_COLS)})", rows or ())
        _shadow_tables(db, schema)
        db.execute(_view_sql(schema, part_id))
        db.execute("PRAGMA query_only = 1")
        guard = _Guard(schema)
        db.set_authorizer(guard)
        deadline = time.monotonic() + timeout_s
        db.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 2000)
        return _fetch(db, text, guard, max_rows, timeout_s)
    finally:
        db.close()


def _shadow_tables(db: sqlite3.Connection, schema: str) -> None:
    """An empty `main` table for every table of the attached database, so an unqualified name
    (`parts`, `files`, ...) never reaches a real one: `SELECT count(*) FROM parts` reads no column,
    and SQLite then tells the authorizer no database name to refuse it by."""
    names = {r[0] for r in db.execute(f"SELECT name FROM {schema}.sqlite_master WHERE type IN ('table', 'view')")}
    for name in sorted(names | {"tabular"}):
        if name.startswith("sqlite_"):
            continue
        cols = TABULAR_COLS if name == "tabular" else "x"
        db.execute(f'CREATE TABLE main."{name.replace(chr(34), chr(34) * 2)}" ({cols})')


_LEADING_COMMENTS = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$))*", re.S)


def _first_word(text: str) -> str:
    rest = text[_LEADING_COMMENTS.match(text).end():]
    return re.match(r"[A-Za-z_]*", rest).group(0).lower()


class RowCollector:
    """Gathers result rows up to `max_rows` and `max_bytes` of their JSON, then says why it stopped.

    Shared by SQL and MQL, so that no query answer is ever held or sent past MAX_RESULT_BYTES.
    """

    def __init__(self, max_rows: int, max_bytes: int) -> None:
        self.max_rows, self.max_bytes = max_rows, max_bytes
        self.rows: list[list[Any]] = []
        self.size = 0
        self.reason: str | None = None

    def add(self, row: list[Any]) -> bool:
        """Keep `row` if it fits; False (and `reason` set) once the answer is full."""
        if len(self.rows) >= self.max_rows:
            self.reason = f"more than the {self.max_rows} rows asked for (raise limit, or page with WHERE/LIMIT)"
            return False
        size = len(json.dumps(row, separators=(",", ":"), default=str)) + 1
        if self.size + size > self.max_bytes:
            if not self.rows:
                raise QueryRefused(f"one row of the result is {size} bytes of JSON, more than the "
                                   f"{self.max_bytes} bytes an answer may hold; select fewer or shorter columns")
            self.reason = (f"the answer reached {self.max_bytes} bytes of JSON after {len(self.rows)} rows "
                           "(select fewer columns, or page with WHERE/LIMIT)")
            return False
        self.rows.append(row)
        self.size += size
        return True

    def result(self, columns: list[str]) -> SqlResult:
        """The rows gathered as an SqlResult."""
        return SqlResult(columns, self.rows, self.reason is not None, self.reason)


def _fetch(db: sqlite3.Connection, text: str, guard: _Guard, max_rows: int, timeout_s: float) -> SqlResult:
    try:
        cur = db.execute(text)
        if cur.description is None:
            raise QueryRefused("the query is read-only: only SELECT statements run")
        columns = [d[0] for d in cur.description]
        rows = RowCollector(max_rows, MAX_RESULT_BYTES)
        for row in cur:
            if not rows.add([_json_value(v) for v in row]):
                break
    except QueryRefused:
        raise
    except (sqlite3.Warning, sqlite3.ProgrammingError) as exc:
        if "one statement" in str(exc):
            raise QueryRefused("send one statement at a time") from None
        raise QueryRefused(f"invalid query: {_scrub(str(exc), guard.schema)}") from None
    except sqlite3.Error as exc:
        if guard.refusal is not None:
            raise QueryRefused(guard.refusal) from None
        message = str(exc)
        if "cannot modify" in message or "readonly" in message or "read-only" in message:
            raise QueryRefused("the query is read-only: writes are refused") from None
        if message == "interrupted":
            raise QueryRefused(f"the query ran longer than {timeout_s:g} s and was stopped") from None
        raise QueryRefused(f"invalid query: {_scrub(message, guard.schema)}") from None
    except (OverflowError, MemoryError, ValueError) as exc:
        raise QueryRefused(f"the query failed: {type(exc).__name__}") from None
    return rows.result(columns)

