"""Which store a cloud command works on: the one place that reads `--store URL` (and `--mongodb-uri`).

- no URL: SQLite in `--data-dir` (`cloud.sqlite`), the default;
- `postgresql://user:password@host:port/database` (or `postgres://`, any libpq URL option such as
  `sslmode`, plus `schema=NAME` for the store's schema, default `capsync`): cloud/postgres_store.py;
- `mongodb://...` or `mongodb+srv://...`: cloud/mongo_store.py (`--mongodb-uri URI` is an alias).

A URL that cannot be used is a `StoreUrlError` whose message names the flag and the fix; the CLI
prints it and exits 2. Nothing here connects: an unreachable server shows on first use
(`StoreUnavailable`, exit 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_USAGE = ("use postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE or mongodb://HOST[:PORT]/DATABASE, "
          "or leave --store out to keep everything in SQLite under --data-dir")


class StoreUrlError(ValueError):
    """A `--store` URL the cloud cannot use; the message says what to write instead."""


def redacted(url: str) -> str:
    """`url` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def store_url(args: argparse.Namespace) -> str | None:
    """The store URL of parsed arguments: `--store`, or its alias `--mongodb-uri`; None for SQLite."""
    url, alias = getattr(args, "store", None), getattr(args, "mongodb_uri", None)
    if url and alias and url != alias:
        raise StoreUrlError("--store and --mongodb-uri name different stores; give only --store URL")
    return url or alias or None


def _kind(url: str) -> str:
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    if scheme in ("mongodb", "mongodb+srv"):
        return "mongodb"
    shown = f"scheme {scheme!r}" if scheme else "no scheme"
    raise StoreUrlError(f"--store {redacted(url)!r} has {shown}; {_USAGE}")


def postgres_args(url: str) -> tuple[str, str]:
    """(libpq URL, schema) of a postgresql:// URL: `schema=` is the store's, not a libpq option."""
    from capsync.cloud.postgres_store import DEFAULT_SCHEMA, SCHEMA_RE

    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not SCHEMA_RE.fullmatch(schema):
        raise StoreUrlError(f"--store: schema={schema!r} is not usable; use 1-40 lowercase letters, digits and _")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def check(url: str | None) -> None:
    """Raise StoreUrlError if `url` cannot name a store (parses it, connects to nothing)."""
    if url:
        _build(url, None, {})


def open_store(url: str | None, data_dir: Path, **options: Any) -> Any:
    """The store `url` names, or SQLite in `data_dir` when it is None; `options` go to its constructor
    (e.g. `scrypt_n`). Raises StoreUrlError for a bad URL; connects only on first use."""
    if not url:
        from capsync.cloud.app import DB_NAME
        from capsync.cloud.sqlite_store import SqliteStore

        return SqliteStore(Path(data_dir) / DB_NAME, **options)
    return _build(url, data_dir, options)


def _build(url: str, data_dir: Path | None, options: dict[str, Any]) -> Any:
    """The store of a postgresql:// or mongodb:// `url`; with `data_dir` None, only check the URL."""
    kind = _kind(url)
    try:
        if kind == "postgresql":
            from psycopg.conninfo import conninfo_to_dict

            from capsync.cloud.postgres_store import PostgresStore

            libpq_url, schema = postgres_args(url)
            conninfo_to_dict(libpq_url)
            return None if data_dir is None else PostgresStore(libpq_url, schema=schema, **options)
        from pymongo.uri_parser import parse_uri

        from capsync.cloud.mongo_store import MongoStore

        if not url.lower().startswith("mongodb+srv"):  # an SRV URL would be resolved in DNS
            parse_uri(url)
        return None if data_dir is None else MongoStore(url, **options)
    except StoreUrlError:
        raise
    except Exception as exc:  # the driver's own word on a malformed URL
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise StoreUrlError(f"--store {redacted(url)!r} is not a valid {kind} URL ({message}); {_USAGE}") from None
