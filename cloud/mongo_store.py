"""A `Store` on MongoDB (`capsync cloud serve --mongodb-uri URI`): parts, uploads, files and rows.

Binary bytes stay on the cloud's disk (cloud/blobs.py) as with SQLite. pymongo's client blocks,
so every call runs in a worker thread (`run_blocking`); the client is thread-safe.

**Exactly once without transactions.** Multi-document transactions need a replica set, so the
commit does not use one. Instead, every row has a deterministic `_id` (`<part>/<file>/<index>`,
and a unique index on (part_id, file_id, record_index)), the files document is the commit
marker, and readers only ever see documents whose `live` flag is set:

1. If the files document exists, the file was committed before: finish step 4 if a crash
   interrupted it, and answer "already committed" (insert nothing).
2. Delete rows of this file that are not live (left by a commit that crashed before step 3),
   then insert every row with `live: false`, unordered, ignoring duplicate-key errors (a
   concurrent commit of the same file inserts the same rows).
3. Insert the files document (`live: false`). Its unique `_id` decides the race: the loser of a
   concurrent commit gets a duplicate-key error and only helps finish step 4.
4. Set `live: true` on the file's rows, then on the files document, then drop the upload.

A crash anywhere leaves either nothing visible (before step 4 ends the files document is not
live, `get_file` reports no file, and the upload still holds all its bytes, so the agent's retry
commits again and repeats steps 1-4 idempotently), or the whole file visible. No row can be
stored twice: its `_id` and the unique index forbid it. `live` is set on rows before the file,
so a file that is live has all its rows live.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import lru_cache, partial
from typing import Any, TypeVar

from pymongo import ASCENDING, MongoClient
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
)

from capsync.cloud import aggregate_mongo
from capsync.cloud import mongo_docs as docs
from capsync.cloud import retention
from capsync.cloud.auth import check_secret, hash_secret
from capsync.cloud.mql import confine, to_json
from capsync.cloud.sql import MAX_RESULT_BYTES, RowCollector, run_readonly
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
from capsync.runtime.blocking import run_blocking

T = TypeVar("T")
DEFAULT_DATABASE = "capsync"
#: SQL on MongoDB copies the part's rows into memory first; above this many it is refused (use MQL).
MAX_SQL_ROWS = 200_000
#: ... and above this many bytes of their text (payloads, metadata, ...).
MAX_SQL_COPY_BYTES = 64 * 1024 * 1024
_BATCH = 1000
_DUPLICATE_KEY = 11000
_ROW_INDEXES = [("part_id", ASCENDING), ("file_id", ASCENDING), ("record_index", ASCENDING)]
_TIME_INDEX = [("part_id", ASCENDING), ("requested_ns", ASCENDING), ("file_id", ASCENDING), ("record_index", ASCENDING)]
_SORT = [("requested_ns", ASCENDING), ("file_id", ASCENDING), ("record_index", ASCENDING)]


@lru_cache(maxsize=4)
def _dummy_hash(n: int) -> str:
    return hash_secret("no such part", n=n)


class MongoStore:
    """`Store` in the MongoDB at `uri` (database from the URI's path, else `database`)."""

    def __init__(self, uri: str, database: str | None = None, *, scrypt_n: int = 2**14,
                 server_selection_timeout_ms: int = 5000) -> None:
        self.uri = uri
        self._scrypt_n = scrypt_n
        options: dict[str, Any] = {"uuidRepresentation": "standard"}
        if "serverselectiontimeoutms" not in uri.lower():  # the URI's own setting wins
            options["serverSelectionTimeoutMS"] = server_selection_timeout_ms
        self._client: MongoClient = MongoClient(uri, **options)
        self.db = self._client[database] if database else self._client.get_default_database(DEFAULT_DATABASE)
        self.parts, self.uploads, self.files = self.db["parts"], self.db["uploads"], self.db["files"]
        self.readings, self.binary = self.db["readings"], self.db["binary_items"]
        self._ready = False

    # -- plumbing ---------------------------------------------------------------------------

    def _prepare(self) -> None:
        if self._ready:
            return
        for coll in (self.readings, self.binary):
            coll.create_index(_ROW_INDEXES, unique=True, name="exactly_once")
            coll.create_index(_TIME_INDEX, name="by_time")
        for coll in (self.files, self.uploads):
            coll.create_index([("part_id", ASCENDING), ("file_id", ASCENDING)], unique=True, name="by_file")
        self._ready = True
        for d in self.files.find({"live": False}, {"part_id": 1, "file_id": 1}):  # commits a crash interrupted
            self._finish(d["part_id"], d["file_id"])

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            self._prepare()
            return fn(*args)
        except ConnectionFailure as exc:
            raise StoreUnavailable(f"MongoDB: {type(exc).__name__}: {str(exc)[:200]}") from exc

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_blocking(partial(self._call, fn, *args))

    def prepare_sync(self) -> None:
        """Create the indexes and finish interrupted commits now (blocking; at start and for the CLI)."""
        self._call(lambda: None)

    # -- parts --------------------------------------------------------------------------------

    def add_part_sync(self, part_id: str, secret: str, *, rotate: bool = False) -> None:
        """Blocking `add_part`, for the CLI that runs outside Trio."""
        digest = hash_secret(secret, n=self._scrypt_n)
        now = time.time_ns()

        def add() -> None:
            if rotate:
                if self.parts.update_one({"_id": part_id}, {"$set": {"secret_hash": digest, "rotated_ns": now}}).matched_count == 0:
                    raise UnknownPartError(part_id)
                return
            try:
                self.parts.insert_one({"_id": part_id, "secret_hash": digest, "created_ns": now, "rotated_ns": None})
            except DuplicateKeyError:
                raise PartExistsError(part_id) from None

        self._call(add)

    async def add_part(self, part_id: str, secret: str, *, rotate: bool = False) -> None:
        """Create a part, or with `rotate=True` replace an existing part's secret."""
        await run_blocking(partial(self.add_part_sync, part_id, secret, rotate=rotate))

    async def verify_part(self, part_id: str, secret: str) -> bool:
        """Whether `secret` is the secret of `part_id`; an unknown part costs the same scrypt."""
        doc = await self._run(self.parts.find_one, {"_id": part_id})
        stored = _dummy_hash(self._scrypt_n) if doc is None else doc["secret_hash"]
        ok = await run_blocking(check_secret, secret, stored)
        return ok and doc is not None

    # -- uploads ------------------------------------------------------------------------------

    async def get_upload(self, part_id: str, file_id: str) -> Upload | None:
        """The declared upload of (part, file), or None."""
        d = await self._run(self.uploads.find_one, {"_id": docs.key(part_id, file_id)})
        return None if d is None else docs.upload_from_doc(d)

    async def save_upload(self, upload: Upload) -> None:
        """Insert or replace a declared upload."""
        d = docs.upload_doc(upload)
        await self._run(lambda: self.uploads.replace_one({"_id": d["_id"]}, d, upsert=True))

    async def delete_upload(self, part_id: str, file_id: str) -> None:
        """Forget an upload."""
        await self._run(self.uploads.delete_one, {"_id": docs.key(part_id, file_id)})

    async def list_uploads(self) -> list[Upload]:
        """Every declared upload of every part."""
        found = await self._run(lambda: list(self.uploads.find({})))
        return [docs.upload_from_doc(d) for d in found]

    async def part_usage(self, part_id: str) -> PartUsage:
        """The part's uploads in flight (count, declared bytes) and its stored, unexpired bytes."""
        def usage() -> PartUsage:
            sizes = [d["size"] for d in self.uploads.find({"part_id": part_id}, {"size": 1})]
            stored = sum(d["size"] for d in self.files.find({"part_id": part_id, "expired_ns": None}, {"size": 1}))
            return PartUsage(len(sizes), sum(sizes), stored)

        return await self._run(usage)

    # -- committing ---------------------------------------------------------------------------

    async def get_file(self, part_id: str, file_id: str) -> CommittedFile | None:
        """The committed file (part, file), or None — also while its commit is not finished (not live)."""
        d = await self._run(self.files.find_one, {"_id": docs.key(part_id, file_id), "live": True})
        return None if d is None else docs.file_from_doc(d)

    def _insert_rows(self, coll: Any, rows: list[dict[str, Any]]) -> None:
        for i in range(0, len(rows), _BATCH):
            try:
                coll.insert_many(rows[i:i + _BATCH], ordered=False)
            except BulkWriteError as exc:
                others = [e for e in exc.details.get("writeErrors", []) if e.get("code") != _DUPLICATE_KEY]
                if others or exc.details.get("writeConcernErrors"):
                    raise

    def _finish(self, part_id: str, file_id: str) -> None:
        flt = {"part_id": part_id, "file_id": file_id}
        self.readings.update_many({**flt, "live": False}, {"$set": {"live": True}})
        self.binary.update_many({**flt, "live": False}, {"$set": {"live": True}})
        self.files.update_one({"_id": docs.key(part_id, file_id)}, {"$set": {"live": True}})
        self.uploads.delete_one({"_id": docs.key(part_id, file_id)})

    def _stage_sync(self, tabular: Sequence[TabularRow], binary: Sequence[BinaryItem]) -> None:
        self._insert_rows(self.readings, [docs.tabular_doc(r) for r in tabular])
        self._insert_rows(self.binary, [docs.binary_doc(b) for b in binary])

    async def stage_rows(self, tabular: Sequence[TabularRow], binary: Sequence[BinaryItem]) -> None:
        """Insert one batch of a file's rows, not live (step 2 in batches); `commit(..., staged=True)` publishes them."""
        await self._run(self._stage_sync, tabular, binary)

    def _drop_staged_sync(self, part_id: str, file_id: str) -> None:
        if self.files.find_one({"_id": docs.key(part_id, file_id)}, {"live": 1}) is not None:
            return  # its commit got as far as the marker: those rows are the file's, not leftovers
        flt = {"part_id": part_id, "file_id": file_id, "live": False}
        self.readings.delete_many(flt)
        self.binary.delete_many(flt)

    async def drop_staged(self, part_id: str, file_id: str) -> None:
        """Delete the not-live rows of (part, file): before staging anew, and after a rejected file."""
        await self._run(self._drop_staged_sync, part_id, file_id)

    def _commit_sync(self, f: CommittedFile, tabular: Sequence[TabularRow], binary: Sequence[BinaryItem],
                     staged: bool = False) -> bool:
        fkey = docs.key(f.part_id, f.file_id)
        if self.files.find_one({"_id": fkey}, {"live": 1}) is not None:
            self._finish(f.part_id, f.file_id)  # a no-op unless a crash interrupted that commit
            return False
        if not staged:  # rows left by a commit that died before its marker; redone below
            self._drop_staged_sync(f.part_id, f.file_id)
        self._insert_rows(self.readings, [docs.tabular_doc(r) for r in tabular])
        self._insert_rows(self.binary, [docs.binary_doc(b) for b in binary])
        try:
            self.files.insert_one(docs.file_doc(f))
        except DuplicateKeyError:  # a concurrent commit of the same file won
            self._finish(f.part_id, f.file_id)
            return False
        self._finish(f.part_id, f.file_id)
        return True

    async def commit(self, file: CommittedFile, tabular: Sequence[TabularRow], binary: Sequence[BinaryItem],
                     *, staged: bool = False) -> bool:
        """Store a committed file with its rows (and, with `staged`, those staged for it), exactly once
        (see the module doc); False if it was already."""
        return await self._run(self._commit_sync, file, tabular, binary, staged)

    async def commit_many(self, commits: Sequence[Commit]) -> list[bool]:
        """Commit each file in turn: without transactions there is no shared one to join, and each
        commit is already exactly-once on its own (see the module doc)."""
        return [await self.commit(c.file, c.tabular, c.binary, staged=c.staged) for c in commits]

    async def list_files(self, part_id: str, *, after: str | None = None, limit: int = 100) -> list[CommittedFile]:
        """Committed files of a part in file id order, after file id `after`."""
        def find() -> list[dict]:
            cur = self.files.find({"part_id": part_id, "live": True, "file_id": {"$gt": after or ""}})
            return list(cur.sort("file_id", ASCENDING).limit(limit))

        return [docs.file_from_doc(d) for d in await self._run(find)]

    # -- queries ------------------------------------------------------------------------------

    @staticmethod
    def _filter(part_id: str, q: Query) -> dict[str, Any]:
        flt: dict[str, Any] = {"part_id": part_id, "live": True}
        for name in ("resource_type", "resource_name", "method"):
            if (value := getattr(q, name)) is not None:
                flt[name] = value
        span = {op: v for op, v in (("$gte", q.start_ns), ("$lt", q.end_ns)) if v is not None}
        if span:
            flt["requested_ns"] = span
        if q.tags:
            flt["tags"] = {"$all": list(q.tags)}
        if q.after is not None:
            t, fid, idx = q.after
            op = "$lt" if q.descending else "$gt"
            flt["$or"] = [{"requested_ns": {op: t}}, {"requested_ns": t, "file_id": {op: fid}},
                          {"requested_ns": t, "file_id": fid, "record_index": {op: idx}}]
        return flt

    def _select(self, coll: Any, part_id: str, q: Query) -> list[dict]:
        order = [(k, -1) for k, _ in _SORT] if q.descending else _SORT
        return list(coll.find(self._filter(part_id, q)).sort(order).limit(q.limit))

    async def count(self, part_id: str, kind: str, query: Query) -> int:
        """How many tabular rows or binary items of the part match `query` (see `Store.count`)."""
        coll = {"tabular": self.readings, "binary": self.binary}[kind]
        return await self._run(coll.count_documents, self._filter(part_id, query))

    def _aggregate_sync(self, part_id: str, q: Query, b: Buckets, max_rows: int, timeout_s: float) -> list[AggregateRow]:
        match = self._filter(part_id, q)
        deadline = time.monotonic() + timeout_s
        try:
            per_series: dict[Any, set] = {}
            for g in self.readings.aggregate(aggregate_mongo.discovery(match), maxTimeMS=max(1, int(timeout_s * 1000))):
                found = aggregate_mongo.numeric_paths(g.get("first"))
                found += [p for p in aggregate_mongo.numeric_paths(g.get("last")) if p not in found]
                per_series[aggregate_mongo.series_key(g["_id"])] = set(found[:aggregate_mongo.MAX_FIELDS_PER_SERIES])
            fields = sorted({p for paths in per_series.values() for p in paths}, key=repr)[:aggregate_mongo.MAX_FIELDS]
            if not fields:
                return []
            left_ms = max(1, int((deadline - time.monotonic()) * 1000))
            groups = list(self.readings.aggregate(aggregate_mongo.buckets(match, b, fields), maxTimeMS=left_ms))
        except ExecutionTimeout:
            raise QueryRefused(f"the aggregate ran longer than {timeout_s:g} s and was stopped; "
                               "narrow the time range or the filters") from None
        return aggregate_mongo.rows_of(groups, b, fields, per_series)[:max_rows + 1]

    async def aggregate_tabular(self, part_id: str, query: Query, buckets: Buckets, *, max_rows: int,
                                timeout_s: float) -> list[AggregateRow]:
        """Per series, numeric field and time bucket: count, min, max, sum, by aggregation pipelines
        (cloud/aggregate_mongo.py)."""
        return await self._run(self._aggregate_sync, part_id, query, buckets, max_rows, timeout_s)

    async def query_tabular(self, part_id: str, query: Query) -> list[TabularRow]:
        """Tabular rows of a part matching `query`, in (requested_ns, file_id, record_index) order."""
        return [docs.tabular_from_doc(d) for d in await self._run(self._select, self.readings, part_id, query)]

    async def query_binary(self, part_id: str, query: Query) -> list[BinaryItem]:
        """Binary items of a part matching `query`, in (requested_ns, file_id, record_index) order."""
        return [docs.binary_from_doc(d) for d in await self._run(self._select, self.binary, part_id, query)]

    async def get_binary(self, part_id: str, file_id: str, record_index: int) -> BinaryItem | None:
        """One binary item of a part, or None."""
        d = await self._run(self.binary.find_one, {"_id": docs.key(part_id, file_id, record_index), "live": True})
        return None if d is None else docs.binary_from_doc(d)

    def _summary_sync(self, part_id: str) -> list[ResourceSummary]:
        group = {"_id": {"t": "$resource_type", "n": "$resource_name", "m": "$method"}, "n": {"$sum": 1},
                 "first": {"$min": "$requested_ns"}, "last": {"$max": "$requested_ns"}}
        counts = {}
        for coll, kind in ((self.readings, "tabular"), (self.binary, "binary")):
            for g in coll.aggregate([{"$match": {"part_id": part_id, "live": True}}, {"$group": group}]):
                counts[(g["_id"]["t"], g["_id"]["n"], g["_id"]["m"], kind)] = (g["n"], g["first"], g["last"])
        files = self.files.find({"part_id": part_id, "live": True, "expired_ns": None},
                                {"resource_type": 1, "resource_name": 1, "method": 1, "data_kind": 1, "size": 1, "tags": 1})
        return summaries(counts, ((d.get("resource_type", ""), d.get("resource_name", ""), d.get("method", ""),
                                   d.get("data_kind"), d.get("size", 0), d.get("tags", ())) for d in files))

    async def summary(self, part_id: str) -> list[ResourceSummary]:
        """Per capture method of the part: items, time range, files, bytes and tags."""
        return await self._run(self._summary_sync, part_id)

    async def run_sql(self, part_id: str, sql: str, *, max_rows: int, timeout_s: float) -> SqlResult:
        """SQL over an in-memory copy of the part's rows (at most MAX_SQL_ROWS), read-only like on SQLite."""
        def load() -> list[tuple[Any, ...]]:
            rows, size = [], 0
            with self.readings.find({"part_id": part_id, "live": True}).limit(MAX_SQL_ROWS + 1) as cur:
                for d in cur:
                    rows.append(row := docs.sql_row(d))
                    size += sum(len(v) for v in row if isinstance(v, str))
                    if size > MAX_SQL_COPY_BYTES:
                        raise QueryRefused(f"SQL on the MongoDB store copies at most {MAX_SQL_COPY_BYTES} bytes of a "
                                           "part's rows; use POST /v1/tabular/mql for more")
            return rows

        rows = await self._run(load)
        if len(rows) > MAX_SQL_ROWS:
            raise QueryRefused(f"SQL on the MongoDB store reads at most {MAX_SQL_ROWS} rows of a part; "
                               "use POST /v1/tabular/mql for more")
        return await run_blocking(partial(run_readonly, part_id, sql, rows=rows, max_rows=max_rows, timeout_s=timeout_s))

    async def run_mql(self, part_id: str, pipeline: Any, *, max_rows: int, timeout_s: float) -> SqlResult:
        """Run an aggregation pipeline over the part's own readings (cloud/mql.py); rows are one-column documents."""
        stages = confine(pipeline, part_id, max_rows)

        def agg() -> SqlResult:
            rows = RowCollector(max_rows, MAX_RESULT_BYTES)  # documents are kept only while the answer has room
            try:
                with self.readings.aggregate(stages, maxTimeMS=max(1, int(timeout_s * 1000))) as cursor:
                    for d in cursor:
                        if not rows.add([to_json(d)]):
                            break
            except ExecutionTimeout:
                raise QueryRefused(f"the pipeline ran longer than {timeout_s:g} s and was stopped") from None
            except OperationFailure as exc:
                raise QueryRefused(f"MongoDB refused the pipeline: {str(exc.details.get('errmsg', exc))[:300]}") from None
            return rows.result(["document"])

        return await self._run(agg)

    # -- retention and accounting ---------------------------------------------------------------

    def _expire_sync(self, now_ns: int) -> list[CommittedFile]:
        live = self.files.find({"live": True, "expired_ns": None, "kind": "capture"})
        gone = []
        for e in retention.due([docs.file_from_doc(d) for d in live], now_ns):
            flt = {"part_id": e.file.part_id, "file_id": e.file.file_id}
            self.readings.delete_many(flt)
            self.binary.delete_many(flt)  # rows first: a crash here is redone by the next sweep
            self.files.update_one({"_id": docs.key(e.file.part_id, e.file.file_id)}, {"$set": {"expired_ns": now_ns}})
            gone.append(replace(e.file, expired_ns=now_ns))
        return gone

    async def expire(self, now_ns: int) -> list[CommittedFile]:
        """Delete the rows of files past their retention_policy; the files documents stay, marked expired."""
        return await self._run(self._expire_sync, now_ns)

    def _count(self) -> StoreStatistics:
        return StoreStatistics(
            self.parts.count_documents({}), self.uploads.count_documents({}),
            self.files.count_documents({"live": True}), self.readings.count_documents({"live": True}),
            self.binary.count_documents({"live": True}),
        )

    async def statistics(self) -> StoreStatistics:
        """Document counts (live ones for files and rows)."""
        return await self._run(self._count)

    def close_sync(self) -> None:
        """Close the client (blocking; for the CLI)."""
        self._client.close()

    async def aclose(self) -> None:
        """Close the client."""
        await run_blocking(self._client.close)

