"""Managing parts: list them, disable and enable, remove (with or without their data), rotate secrets.

`PartAdmin(store)` works on every store (SQLite, MongoDB, PostgreSQL). The CLI (`capsync cloud parts`,
`disable-part`, `enable-part`, `remove-part`, `rotate-secret`) calls its blocking methods; the server
calls `lookup` on every signed-in request, a cheap read, so that a part disabled or a secret rotated
by the CLI (another process) takes effect at once, not when a cached sign-in expires.

What it keeps beside the store's `parts` rows: on SQLite a `part_admin` table (part id, the previous
secret hash and until when it still works, the reason a part is disabled); on MongoDB the same
fields in the part's document; on PostgreSQL a `part_admin` table too, through the store's
`admin_*_sync` methods (cloud/postgres_store.py).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsync.cloud.auth import check_secret
from capsync.cloud.blobs import Blobs, LocalBlobs
from capsync.cloud.store import UnknownPartError
from capsync.runtime.blocking import run_blocking

_ADMIN_TABLE = """
CREATE TABLE IF NOT EXISTS part_admin (
    part_id TEXT PRIMARY KEY, previous_hash TEXT, previous_until_ns INTEGER, disabled_reason TEXT
)
"""
#: The tables whose rows belong to a part (SQLite), deleted by `remove --delete-data`.
_PART_TABLES = ("uploads", "files", "tabular", "binary_items")


@dataclass(frozen=True)
class PartRecord:
    """What signing in needs to know of a part: its secret hashes and whether it is disabled."""

    part_id: str
    secret_hash: str
    previous_hash: str | None = None
    previous_until_ns: int | None = None
    disabled_reason: str | None = None

    def previous_valid(self, now_ns: int) -> bool:
        """Whether the secret before the last rotation still works (its grace period runs)."""
        return self.previous_hash is not None and (self.previous_until_ns or 0) > now_ns

    def version(self, now_ns: int) -> str:
        """Changes whenever the secrets that work change: part of the sign-in cache's key."""
        return self.secret_hash + ("|" + (self.previous_hash or "") if self.previous_valid(now_ns) else "")


@dataclass(frozen=True)
class PartInfo:
    """One row of `capsync cloud parts`."""

    part_id: str
    enabled: bool
    disabled_reason: str | None
    files: int
    bytes: int
    last_upload_ns: int | None


class PartAdmin:
    """Part management over a SqliteStore or a MongoStore (see the module doc)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._mongo = hasattr(store, "parts") and hasattr(store, "readings")
        self._native = hasattr(store, "admin_lookup_sync")  # the store implements part administration itself
        #: Stores other than these (test doubles) only check current secrets.
        self.supported = self._mongo or self._native or hasattr(store, "_db")
        if self.supported and not self._mongo and not self._native:
            store._locked(store._db.execute, _ADMIN_TABLE)

    # -- reading ------------------------------------------------------------------------------

    def lookup_sync(self, part_id: str) -> PartRecord | None:
        """The part's record, or None when there is no such part (blocking)."""
        if not self.supported:
            return None
        if self._native:
            row = self.store.admin_lookup_sync(part_id)
            return None if row is None else PartRecord(part_id, *row)
        if self._mongo:
            d = self.store._call(self.store.parts.find_one, {"_id": part_id})
            if d is None:
                return None
            return PartRecord(part_id, d["secret_hash"], d.get("previous_hash"), d.get("previous_until_ns"),
                              d.get("disabled_reason"))
        row = self.store._locked(lambda: self.store._db.execute(
            "SELECT p.secret_hash, a.previous_hash, a.previous_until_ns, a.disabled_reason FROM parts p "
            "LEFT JOIN part_admin a ON a.part_id = p.part_id WHERE p.part_id = ?", (part_id,)).fetchone())
        return None if row is None else PartRecord(part_id, *tuple(row))

    async def lookup(self, part_id: str) -> PartRecord | None:
        """`lookup_sync` in a worker thread."""
        return await run_blocking(self.lookup_sync, part_id)

    async def verify(self, part_id: str, secret: str) -> bool:
        """Whether `secret` is the part's secret, or its previous one within the rotation's grace period."""
        if await self.store.verify_part(part_id, secret):  # an unknown part costs the same scrypt
            return True
        record = await self.lookup(part_id)
        if record is None or not record.previous_valid(time.time_ns()):
            return False
        return await run_blocking(check_secret, secret, record.previous_hash)

    def list_sync(self) -> list[PartInfo]:
        """Every part with its file count, stored bytes and last upload, in part id order (blocking)."""
        if self._native:
            return [PartInfo(r[0], r[1] is None, r[1], r[2], r[3], r[4]) for r in self.store.admin_list_sync()]
        if self._mongo:
            def read() -> list[PartInfo]:
                totals: dict[str, list[int]] = {}
                for f in self.store.files.find({"live": True, "expired_ns": None}, {"part_id": 1, "size": 1, "committed_ns": 1}):
                    t = totals.setdefault(f["part_id"], [0, 0, 0])
                    t[0] += 1
                    t[1] += int(f.get("size", 0))
                    t[2] = max(t[2], int(f.get("committed_ns", 0)))
                out = []
                for d in self.store.parts.find({}).sort("_id", 1):
                    n, size, last = totals.get(d["_id"], [0, 0, 0])
                    reason = d.get("disabled_reason")
                    out.append(PartInfo(d["_id"], reason is None, reason, n, size, last or None))
                return out

            return self.store._call(read)
        rows = self.store._locked(lambda: self.store._db.execute(
            "SELECT p.part_id, a.disabled_reason, count(f.file_id), coalesce(sum(f.size), 0), max(f.committed_ns) "
            "FROM parts p LEFT JOIN part_admin a ON a.part_id = p.part_id "
            "LEFT JOIN files f ON f.part_id = p.part_id AND f.expired_ns IS NULL "
            "GROUP BY p.part_id ORDER BY p.part_id").fetchall())
        return [PartInfo(r[0], r[1] is None, r[1], r[2], r[3], r[4]) for r in rows]

    # -- changing -------------------------------------------------------------------------------

    def _require(self, part_id: str) -> None:
        if self.lookup_sync(part_id) is None:
            raise UnknownPartError(part_id)

    def _set_admin(self, part_id: str, **fields: Any) -> None:
        """Set part_admin fields of an existing part (UnknownPartError otherwise)."""
        if self._native:
            self.store.admin_set_sync(part_id, fields)
            return
        if self._mongo:
            def update() -> None:
                if self.store.parts.update_one({"_id": part_id}, {"$set": fields}).matched_count == 0:
                    raise UnknownPartError(part_id)

            self.store._call(update)
            return

        def tx(db: sqlite3.Connection) -> None:
            if db.execute("SELECT 1 FROM parts WHERE part_id = ?", (part_id,)).fetchone() is None:
                raise UnknownPartError(part_id)
            db.execute("INSERT OR IGNORE INTO part_admin (part_id) VALUES (?)", (part_id,))
            sets = ", ".join(f"{k} = ?" for k in fields)
            db.execute(f"UPDATE part_admin SET {sets} WHERE part_id = ?", (*fields.values(), part_id))

        self.store._locked(self.store._tx, tx)

    def disable_sync(self, part_id: str, reason: str) -> None:
        """Refuse the part's requests (403 with `reason`) until `enable_sync`; its data stays."""
        self._set_admin(part_id, disabled_reason=reason)

    def enable_sync(self, part_id: str) -> None:
        """Serve a disabled part again."""
        self._set_admin(part_id, disabled_reason=None)

    def rotate_sync(self, part_id: str, secret: str, *, grace_s: float = 0.0) -> None:
        """Give the part `secret`; the old one stops working at once, or after `grace_s` seconds."""
        old = self.lookup_sync(part_id)
        if old is None:
            raise UnknownPartError(part_id)
        now = time.time_ns()
        until = now + int(grace_s * 1e9) if grace_s > 0 else None
        self.store.add_part_sync(part_id, secret, rotate=True)
        self._set_admin(part_id, previous_hash=old.secret_hash if until else None, previous_until_ns=until)

    def remove_sync(self, part_id: str, *, delete_data: bool, data_dir: Path | None = None,
                    blobs: Blobs | None = None) -> None:
        """Remove the part: it can no longer sign in. With `delete_data`, its uploads, files, rows and
        stored bytes (in `blobs`, or LocalBlobs under `data_dir`) go too; without, they stay (and come back
        if the id is added again)."""
        self._require(part_id)
        if blobs is None and data_dir is not None:
            blobs = LocalBlobs(Path(data_dir))
        if delete_data and blobs is not None:
            blobs.check()  # an unusable object store fails the command before any row is deleted
        if self._native:
            self.store.admin_remove_sync(part_id, delete_data=delete_data)
        elif self._mongo:
            def remove() -> None:
                self.store.parts.delete_one({"_id": part_id})
                if delete_data:
                    for coll in (self.store.uploads, self.store.files, self.store.readings, self.store.binary):
                        coll.delete_many({"part_id": part_id})

            self.store._call(remove)
        else:
            def tx(db: sqlite3.Connection) -> None:
                db.execute("DELETE FROM parts WHERE part_id = ?", (part_id,))
                db.execute("DELETE FROM part_admin WHERE part_id = ?", (part_id,))
                if delete_data:
                    for table in _PART_TABLES:
                        db.execute(f"DELETE FROM {table} WHERE part_id = ?", (part_id,))

            self.store._locked(self.store._tx, tx)
        if delete_data and blobs is not None:
            blobs.drop_part(part_id)

