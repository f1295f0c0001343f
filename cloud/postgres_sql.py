"""Part-scoped, read-only SQL on the PostgreSQL store (`POST /v1/tabular/sql`), natively in PostgreSQL.

How a query is confined to one part's rows, without trusting the query text:

1. **A login of its own per part.** The first SQL query of a part creates a PostgreSQL role for it
   (`capsync_<id>_p<n>`, LOGIN, a random password kept in the store's `sql_roles` table), a member
   of one group role (`capsync_<id>_sql`) that holds the only privileges SQL needs: USAGE on the
   schema `<schema>_sql` and SELECT on its view `readings`. The query runs on a fresh connection
   logged in as that role, never as the store's role, so `SET ROLE`, `RESET ROLE` and
   `set_config('role', ...)` cannot reach the store's privileges: the session user has none.
2. **The view filters by the session user.** `readings` is a `security_barrier` view owned by the
   store's role: `... FROM tabular WHERE part_id = (the part of sql_roles whose role is session_user)`.
   The session user cannot be changed without superuser (`SET SESSION AUTHORIZATION`), so no GUC,
   `set_config`, or `current_setting` trick changes the part; security_barrier makes PostgreSQL
   apply the view's filter before any function of the query sees a row (no leaks through errors).
   The roles have no privilege on any table (`parts`, `files`, `tabular`, ... are "permission
   denied"), so `pg_stats` shows them none of those tables' values either.
3. **Read only, one statement, bounded.** The transaction is `READ ONLY`; the text must parse on its
   own as one query (`DECLARE ... CURSOR FOR <text>` over the extended protocol: no second statement,
   no `COPY`, `SET`, `EXPLAIN` or data-modifying `WITH`); `statement_timeout` and a client-side
   cancel stop it after `timeout_s`; rows are fetched from a server-side cursor a few at a time,
   at most `max_rows` and MAX_RESULT_BYTES of JSON (`RowCollector`, as on SQLite), and the server
   refuses any one row larger than that before sending it. Functions that read files or reach
   other servers (`pg_read_file`, `lo_import`, `dblink`) need privileges these roles lack.

What the roles can still see is what any PostgreSQL role sees in `pg_catalog`: names of tables and
roles, and their sizes and approximate row counts (all parts together), never a row of them.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import secrets
import threading
import uuid
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import errors, sql

from capsync.cloud.postgres_schema import sql_schema
from capsync.cloud.sql import MAX_RESULT_BYTES, RowCollector, _first_word
from capsync.cloud.store import QueryRefused, SqlResult, StoreUnavailable

#: Rows fetched from the cursor at a time: each is at most MAX_RESULT_BYTES, so this bounds memory.
FETCH_ROWS = 32
#: How a query may begin: SELECT and its relatives only (anything else is refused before it is sent).
_QUERY_WORDS = {"select", "with", "values", "table", ""}
#: PostgreSQL's other statements: refused as "read-only" (any other first word is a syntax error).
_OTHER_STATEMENTS = set(
    "insert update delete merge create drop alter truncate grant revoke copy set reset begin start commit "
    "rollback end abort savepoint release vacuum analyze cluster reindex lock listen notify unlisten prepare "
    "execute deallocate do call declare fetch move close discard load comment security refresh import "
    "checkpoint reassign show".split())


class SqlLogins:
    """The per-part SQL roles of one store schema: created on first use, dropped with the part."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.s = sql.Identifier(schema)
        self.q = sql.Identifier(sql_schema(schema))

    def _group(self, db: psycopg.Connection) -> str:
        """The group role holding SQL's privileges, created (under a lock) if missing."""
        row = db.execute(sql.SQL("SELECT value FROM {}.meta WHERE key = 'sql_group'").format(self.s)).fetchone()
        if row:
            return row[0]
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"capsync sql group {self.schema}",))
            row = db.execute(sql.SQL("SELECT value FROM {}.meta WHERE key = 'sql_group'").format(self.s)).fetchone()
            if row:
                return row[0]
            group = f"{self._prefix(db)}_sql"
            g = sql.Identifier(group)
            db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(g))
            db.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(self.q, g))
            db.execute(sql.SQL("GRANT SELECT ON {}.readings TO {}").format(self.q, g))
            db.execute(sql.SQL("INSERT INTO {}.meta VALUES ('sql_group', %s)").format(self.s), (group,))
        return group

    def _prefix(self, db: psycopg.Connection) -> str:
        return "capsync_" + db.execute(sql.SQL("SELECT value FROM {}.meta WHERE key = 'id'").format(self.s)).fetchone()[0]

    def login(self, db: psycopg.Connection, part_id: str) -> tuple[str, str]:
        """(role, password) of the part's SQL login, created on its first query.

        Raises QueryRefused naming the fix when the store's role may not create roles.
        """
        find = sql.SQL("SELECT role_name, password FROM {}.sql_roles WHERE part_id = %s").format(self.s)
        if row := db.execute(find, (part_id,)).fetchone():
            return row[0], row[1]
        try:
            group = self._group(db)
            with db.transaction():
                seq = sql.Identifier(self.schema, "sql_role_seq").as_string(db)
                n = db.execute("SELECT nextval(%s::regclass)", (seq,)).fetchone()[0]
                role, password = f"{self._prefix(db)}_p{n}", secrets.token_hex(24)
                claimed = db.execute(sql.SQL("INSERT INTO {}.sql_roles VALUES (%s, %s, %s) ON CONFLICT DO NOTHING "
                                             "RETURNING 1").format(self.s), (part_id, role, password)).fetchone()
                if claimed:  # else another process made the part's login meanwhile: use that one
                    db.execute(sql.SQL("CREATE ROLE {} LOGIN INHERIT CONNECTION LIMIT 8 PASSWORD {} IN ROLE {}").format(
                        sql.Identifier(role), sql.Literal(password), sql.Identifier(group)))
        except errors.InsufficientPrivilege:
            raise QueryRefused("SQL is not available on this cloud: its PostgreSQL role may not create roles; "
                               "the operator grants it with `ALTER ROLE <role> CREATEROLE` (docs/cloud.md, PostgreSQL store)") from None
        row = db.execute(find, (part_id,)).fetchone()
        return row[0], row[1]

    def drop(self, db: psycopg.Connection, part_id: str) -> None:
        """Drop the part's SQL login, if it has one (inside the caller's transaction)."""
        row = db.execute(sql.SQL("DELETE FROM {}.sql_roles WHERE part_id = %s RETURNING role_name").format(self.s),
                         (part_id,)).fetchone()
        if row:
            db.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(row[0])))


def json_value(value: Any) -> Any:
    """A PostgreSQL value as JSON: integral numerics as integers, bytes as {"$base64": ...}, times as text."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            return "NaN" if value.is_nan() else ("Infinity" if value > 0 else "-Infinity")
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, (dt.timedelta, uuid.UUID)) or not isinstance(value, (str, int, float, bool, dict, type(None))):
        return str(value)
    return value


def _message(exc: psycopg.Error) -> str:
    diag = getattr(exc, "diag", None)
    text = (diag.message_primary if diag is not None and diag.message_primary else str(exc)).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def run_query(conninfo: str, role: str, password: str, schema: str, text: str, *, max_rows: int,
              timeout_s: float, connect_timeout_s: int) -> SqlResult:
    """Run `text` as the part login `role` over the `readings` view (blocking; call in a worker thread).

    Raises QueryRefused with the reason for anything but one read-only query, errors and timeouts;
    StoreUnavailable when the login cannot connect.
    """
    text = text.strip().rstrip(";").rstrip()
    if not text:
        raise QueryRefused("the query is empty")
    word = _first_word(text)
    if word == "explain":
        raise QueryRefused("EXPLAIN is refused: only SELECT statements run")
    if word in _OTHER_STATEMENTS:
        raise QueryRefused("the query is read-only: only SELECT statements run")
    if word not in _QUERY_WORDS:
        raise QueryRefused(f"invalid query: a query begins with SELECT, WITH, VALUES or TABLE, not {word!r}")
    timeout_ms = max(1, int(timeout_s * 1000))
    try:
        conn = psycopg.connect(
            conninfo, user=role, password=password, autocommit=True, connect_timeout=connect_timeout_s,
            application_name="capsync-sql",
            options=f"-c search_path={sql_schema(schema)} -c statement_timeout={timeout_ms} "
                    f"-c idle_in_transaction_session_timeout={timeout_ms * 2} -c default_transaction_read_only=on")
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"PostgreSQL refused the SQL login {role!r} ({_message(exc)}); pg_hba.conf must let "
                               "the cloud's SQL roles log in with a password (docs/cloud.md)") from None
    timer = threading.Timer(timeout_s + 0.5, conn.cancel_safe)  # in case the query turns statement_timeout off
    timer.start()
    try:
        return _fetch(conn, text, max_rows, timeout_s)
    finally:
        timer.cancel()
        conn.close()


def _fetch(conn: psycopg.Connection, text: str, max_rows: int, timeout_s: float) -> SqlResult:
    user = sql.SQL(text)  # type: ignore[arg-type]  # the text is sent as it is, never formatted
    wrapped = sql.SQL("SELECT _q.* FROM (\n{}\n) AS _q WHERE row_fits(octet_length(_q::text), {}) LIMIT {}").format(
        user, sql.Literal(MAX_RESULT_BYTES), sql.Literal(max_rows + 1))
    try:
        conn.execute("BEGIN READ ONLY")
        # binary=True sends over the extended protocol, which takes one statement only (DECLARE returns no
        # rows, so the format changes nothing). The text must first parse on its own as one query, so
        # that inside the wrapper it cannot close the parenthesis and change what the wrapper checks.
        conn.execute(sql.SQL("DECLARE capsync_check NO SCROLL CURSOR FOR {}").format(user), binary=True)
        conn.execute("CLOSE capsync_check")
        conn.execute(sql.SQL("DECLARE capsync_rows NO SCROLL CURSOR FOR {}").format(wrapped), binary=True)
        rows = RowCollector(max_rows, MAX_RESULT_BYTES)
        columns: list[str] = []
        while True:
            cur = conn.execute(sql.SQL("FETCH FORWARD {} FROM capsync_rows").format(sql.Literal(FETCH_ROWS)))
            columns = [d.name for d in cur.description or ()]
            batch = cur.fetchall()
            if not all(rows.add([json_value(v) for v in row]) for row in batch) or len(batch) < FETCH_ROWS:
                break
        conn.execute("ROLLBACK")
    except QueryRefused:
        raise
    except errors.QueryCanceled:
        raise QueryRefused(f"the query ran longer than {timeout_s:g} s and was stopped") from None
    except (errors.ReadOnlySqlTransaction, errors.FeatureNotSupported) as exc:
        raise QueryRefused(f"the query is read-only: {_message(exc)}") from None
    except errors.ProgramLimitExceeded as exc:
        raise QueryRefused(_message(exc)) from None
    except errors.InsufficientPrivilege as exc:
        raise QueryRefused(f"refused: {_message(exc)} (a query may only read the readings view)") from None
    except psycopg.OperationalError as exc:
        if conn.closed or exc.sqlstate is None or exc.sqlstate.startswith("08"):
            raise StoreUnavailable(f"PostgreSQL: the SQL connection failed: {_message(exc)}") from None
        raise QueryRefused(f"the query failed: {_message(exc)}") from None
    except psycopg.Error as exc:
        if "cannot insert multiple commands" in str(exc):
            raise QueryRefused("send one statement at a time") from None
        raise QueryRefused(f"invalid query: {_message(exc)}") from None
    except (OverflowError, MemoryError, ValueError) as exc:
        raise QueryRefused(f"the query failed: {type(exc).__name__}") from None
    return rows.result(columns)
