"""The PostgreSQL store's schema and row values (cloud/postgres_store.py uses them).

The tables mirror the SQLite store's (cloud/sqlite_schema.py) column for column, with the same
values: JSON (params, tags, payload, metadata) as the same compact JSON text, never `jsonb`, so
every answer is byte for byte what SQLite gives (jsonb would reorder keys and refuse `\\u0000`).
Ids are `COLLATE "C"` so that they sort as SQLite sorts them (by bytes), whatever the database's
locale. Everything lives in one schema (default `capsync`); the per-part SQL view lives in a second
one, `<schema>_sql` (cloud/postgres_sql.py), the only one the SQL logins may use.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from capsync.cloud.sqlite_schema import (  # noqa: F401  (the row encoders are re-exported for the store)
    BINARY_COLS, FILE_COLS, TABULAR_COLS, binary_values, dumps, tabular_values,
)
from capsync.cloud.store import CommittedFile
from capsync.cloud.timefmt import iso_from_ns

_ID = 'TEXT COLLATE "C" NOT NULL'

#: The statements that create the tables in `{s}` (the store's schema) and the SQL view in `{q}`.
_STATEMENTS = [
    "CREATE SCHEMA IF NOT EXISTS {s}",
    """
CREATE TABLE IF NOT EXISTS {s}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
""",
    f"""
CREATE TABLE IF NOT EXISTS {{s}}.parts (
    part_id {_ID} PRIMARY KEY, secret_hash TEXT NOT NULL, created_ns BIGINT NOT NULL, rotated_ns BIGINT
)
""",
    f"""
CREATE TABLE IF NOT EXISTS {{s}}.part_admin (
    part_id {_ID} PRIMARY KEY, previous_hash TEXT, previous_until_ns BIGINT, disabled_reason TEXT
)
""",
    f"""
CREATE TABLE IF NOT EXISTS {{s}}.uploads (
    part_id {_ID}, file_id {_ID}, kind TEXT NOT NULL, size BIGINT NOT NULL,
    sha256 TEXT NOT NULL, name TEXT NOT NULL, mime_type TEXT NOT NULL, received BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'partial', created_ns BIGINT NOT NULL,
    PRIMARY KEY (part_id, file_id)
)
""",
    f"""
CREATE TABLE IF NOT EXISTS {{s}}.files (
    part_id {_ID}, file_id {_ID}, kind TEXT NOT NULL, size BIGINT NOT NULL,
    sha256 TEXT NOT NULL, records BIGINT NOT NULL, name TEXT NOT NULL, mime_type TEXT NOT NULL,
    resource_type TEXT NOT NULL, resource_name TEXT NOT NULL, method TEXT NOT NULL,
    data_kind TEXT NOT NULL, params TEXT NOT NULL, tags TEXT NOT NULL, created_ns BIGINT NOT NULL,
    committed_ns BIGINT NOT NULL, committed_at TEXT NOT NULL, metadata TEXT NOT NULL,
    expired_ns BIGINT,
    PRIMARY KEY (part_id, file_id)
)
""",
    f"""
CREATE TABLE IF NOT EXISTS {{s}}.tabular (
    part_id {_ID}, file_id {_ID}, record_index BIGINT NOT NULL,
    resource_type TEXT NOT NULL, resource_name TEXT NOT NULL, method TEXT NOT NULL, params TEXT NOT NULL,
    requested_ns BIGINT NOT NULL, received_ns BIGINT NOT NULL, requested_at TEXT NOT NULL,
    received_at TEXT NOT NULL, tags TEXT NOT NULL, payload TEXT NOT NULL, metadata TEXT NOT NULL,
    PRIMARY KEY (part_id, file_id, record_index)
)
""",
    """
CREATE INDEX IF NOT EXISTS tabular_by_time ON {s}.tabular (part_id, requested_ns, file_id, record_index)
""",
    f"""
CREATE TABLE IF NOT EXISTS {{s}}.binary_items (
    part_id {_ID}, file_id {_ID}, record_index BIGINT NOT NULL, item_id TEXT NOT NULL,
    resource_type TEXT NOT NULL, resource_name TEXT NOT NULL, method TEXT NOT NULL, mime_type TEXT NOT NULL,
    size BIGINT NOT NULL, requested_ns BIGINT NOT NULL, received_ns BIGINT NOT NULL,
    requested_at TEXT NOT NULL, received_at TEXT NOT NULL, tags TEXT NOT NULL, metadata TEXT NOT NULL,
    name TEXT NOT NULL, from_capture INTEGER NOT NULL,
    PRIMARY KEY (part_id, file_id, record_index)
)
""",
    """
CREATE INDEX IF NOT EXISTS binary_by_time ON {s}.binary_items (part_id, requested_ns, file_id, record_index)
""",
    """
CREATE TABLE IF NOT EXISTS {s}.staged_tabular (LIKE {s}.tabular INCLUDING ALL)
""",
    """
CREATE TABLE IF NOT EXISTS {s}.staged_binary (LIKE {s}.binary_items INCLUDING ALL)
""",
    """
CREATE TABLE IF NOT EXISTS {s}.locks (name TEXT PRIMARY KEY)
""",
    """
INSERT INTO {s}.locks VALUES ('sweep'), ('expire') ON CONFLICT DO NOTHING
""",
    f"""
CREATE TABLE IF NOT EXISTS {{s}}.sql_roles (
    part_id {_ID} PRIMARY KEY, role_name TEXT NOT NULL UNIQUE, password TEXT NOT NULL
)
""",
    """
CREATE SEQUENCE IF NOT EXISTS {s}.sql_role_seq
""",
    """
CREATE SCHEMA IF NOT EXISTS {q}
""",
    """
REVOKE ALL ON SCHEMA {q} FROM PUBLIC
""",
    """
CREATE OR REPLACE VIEW {q}.readings WITH (security_barrier) AS
    SELECT part_id, file_id, record_index, resource_type, resource_name, method, params, requested_ns,
           received_ns, requested_at AS requested, received_at AS received, tags, payload, metadata
    FROM {s}.tabular
    WHERE part_id = (SELECT r.part_id FROM {s}.sql_roles r WHERE r.role_name = session_user)
""",
    """
CREATE OR REPLACE FUNCTION {q}.row_fits(size BIGINT, max_size BIGINT) RETURNS BOOLEAN
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF size > max_size THEN
        RAISE EXCEPTION 'one row of the result is % bytes, more than the % bytes an answer may hold; select fewer or shorter columns', size, max_size
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    RETURN TRUE;
END $$
""",
]


def ddl(schema: str) -> list[sql.Composed]:
    """The statements that create (idempotently) the store's tables in `schema` and its SQL view."""
    ids = {"s": sql.Identifier(schema), "q": sql.Identifier(sql_schema(schema))}
    return [sql.SQL(stmt.strip()).format(**ids) for stmt in _STATEMENTS]


def sql_schema(schema: str) -> str:
    """The schema holding the `readings` view that SQL logins see."""
    return f"{schema}_sql"


def cols(names: str) -> sql.Composed:
    """A comma-separated column list as identifiers."""
    return sql.SQL(", ").join(sql.Identifier(c.strip()) for c in names.split(","))


def placeholders(names: str) -> sql.Composed:
    """`%s, %s, ...`: one placeholder per column of a comma-separated column list."""
    return sql.SQL(", ").join(sql.Placeholder() for _ in names.split(","))


def file_values(f: CommittedFile) -> tuple[Any, ...]:
    """A committed file's values in FILE_COLS order, as SQLite keeps them."""
    return (
        f.part_id, f.file_id, f.kind.value, f.size, f.sha256, f.records, f.name, f.mime_type,
        f.resource_type, f.resource_name, f.method, f.data_kind, dumps(f.params), dumps(list(f.tags)),
        f.created_ns, f.committed_ns, iso_from_ns(f.committed_ns), dumps(f.metadata),
    )
