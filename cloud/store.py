"""What the cloud keeps about parts, uploads and committed data, independent of where it keeps it.

`Store` is the interface the HTTP app talks to. `capsync.cloud.sqlite_store.SqliteStore` is the default
implementation; the MongoDB and PostgreSQL stores implement the same methods. Every method is async so an
implementation may run blocking drivers in a worker thread.

A store that several cloud processes share (PostgreSQL) may also offer `exclusive_sweep()`, an
async context manager yielding whether this process may run the retention sweep now;
`capsync.cloud.app.apply_retention` skips the sweep when it yields False. It is optional: the
other stores have one process each.

The records here are plain frozen dataclasses. Every key includes the part id: file ids are
chosen by agents, so each part has its own namespace and no part can see another's rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

from capsync.runtime.sync_protocol import FileKind

#: Sort key of query results and what an opaque cursor encodes: (requested_ns, file_id, record_index).
SortKey = tuple[int, str, int]


class PartExistsError(Exception):
    """`add_part` was asked to create a part that already exists (and not to rotate its secret)."""


class UnknownPartError(Exception):
    """`add_part(rotate=True)` was asked to rotate the secret of a part that does not exist."""


@dataclass(frozen=True)
class Upload:
    """A declared, not yet committed upload: what the agent said it will send, and how much arrived."""

    part_id: str
    file_id: str
    kind: FileKind
    size: int
    sha256: str
    name: str = ""
    mime_type: str = ""
    received: int = 0
    created_ns: int = 0


@dataclass(frozen=True)
class CommittedFile:
    """One committed file: its checksum-verified bytes live on disk, its records in the tables."""

    part_id: str
    file_id: str
    kind: FileKind
    size: int
    sha256: str
    records: int
    committed_ns: int
    name: str = ""
    mime_type: str = ""
    resource_type: str = ""
    resource_name: str = ""
    method: str = ""
    data_kind: str = ""  # "tabular" | "binary" for capture files, "" for plain files
    params: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    created_ns: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    expired_ns: int | None = None  # set when retention deleted its data; the file stays "committed"


@dataclass(slots=True)
class TabularRow:
    """One record of a tabular capture file: a reading with its times and tags.

    Not frozen, unlike the other rows: a frozen dataclass's __init__ sets each field through
    object.__setattr__, and at 1.9 us a row that was a quarter of an ingest's parsing. Treat it as
    immutable all the same.
    """

    part_id: str
    file_id: str
    record_index: int
    resource_type: str
    resource_name: str
    method: str
    requested_ns: int
    received_ns: int
    tags: tuple[str, ...]
    payload: Any
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BinaryItem:
    """One binary datum: a record of a binary capture file, or a whole plain file (record_index 0).

    `item_id` is ``f"{file_id}-{record_index}"``; it is unambiguous because file ids may contain
    `-` but record indexes are digits only, so the last `-` always separates the two.
    """

    part_id: str
    file_id: str
    record_index: int
    resource_type: str
    resource_name: str
    method: str
    mime_type: str
    size: int
    requested_ns: int
    received_ns: int
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # for plain files: the path relative to the sync root
    from_capture: bool = True  # False: the bytes are the whole committed file

    @property
    def item_id(self) -> str:
        """The public id of this item, used in `GET /v1/binary/{id}`."""
        return f"{self.file_id}-{self.record_index}"


@dataclass(frozen=True)
class Commit:
    """One file's commit as `Store.commit_many` takes it: the file row, its rows, and whether rows
    were staged for it (`Store.stage_rows`)."""

    file: CommittedFile
    tabular: Sequence[TabularRow] = ()
    binary: Sequence[BinaryItem] = ()
    staged: bool = False


@dataclass(frozen=True)
class Query:
    """Filters of a tabular or binary query. Times are ns since the epoch; start inclusive, end exclusive."""

    resource_type: str | None = None
    resource_name: str | None = None
    method: str | None = None
    start_ns: int | None = None
    end_ns: int | None = None
    tags: tuple[str, ...] = ()
    after: SortKey | None = None
    limit: int = 100
    #: Newest first: rows in descending SortKey order, and `after` selects the keys below it.
    descending: bool = False

    def sql_filter(self, part_id: str, mark: str, tag_test: str) -> tuple[str, list[Any]]:
        """For an SQL store: the condition selecting this query's rows of `part_id` (no ORDER BY or
        LIMIT) and its arguments. `mark` is the driver's placeholder (`?`, `%s`); `tag_test` the
        store's test that a row's tags hold the tag bound to the one `mark` in it."""
        where, args = [f"part_id = {mark}"], [part_id]
        for col, value in (("resource_type", self.resource_type), ("resource_name", self.resource_name),
                           ("method", self.method)):
            if value is not None:
                where.append(f"{col} = {mark}")
                args.append(value)
        if self.start_ns is not None:
            where.append(f"requested_ns >= {mark}")
            args.append(self.start_ns)
        if self.end_ns is not None:
            where.append(f"requested_ns < {mark}")
            args.append(self.end_ns)
        for tag in self.tags:
            where.append(tag_test)
            args.append(tag)
        if self.after is not None:
            where.append(f"(requested_ns, file_id, record_index) {'<' if self.descending else '>'} ({mark}, {mark}, {mark})")
            args.extend(self.after)
        return " AND ".join(where), args

    def sql_order(self) -> str:
        """For an SQL store: the ORDER BY of this query's rows (SortKey order, or its reverse)."""
        way = " DESC" if self.descending else ""
        return f"requested_ns{way}, file_id{way}, record_index{way}"


@dataclass(frozen=True)
class Buckets:
    """The time buckets of an aggregate: `count` buckets of `width_ns` from `start_ns`; bucket i holds
    start_ns + i * width_ns <= requested_ns < start_ns + (i + 1) * width_ns."""

    start_ns: int
    width_ns: int
    count: int


@dataclass(frozen=True)
class AggregateRow:
    """One numeric field of one series (resource, method and params) in one time bucket: its count,
    min, max and sum (the mean is sum / count). `params` is the params' JSON text as the store keeps it
    (SQL stores) or the params themselves (MongoDB)."""

    resource_type: str
    resource_name: str
    method: str
    params: Any
    field: str
    bucket: int
    count: int
    min: float
    max: float
    sum: float


@dataclass(frozen=True)
class PartUsage:
    """What one part holds now, for its quotas: uploads not yet committed (count and declared bytes)
    and the bytes of its committed files that retention has not expired."""

    uploads: int
    upload_bytes: int
    stored_bytes: int


@dataclass(frozen=True)
class StoreStatistics:
    """Row counts of a store, for `capsync status`, accounting and tests."""

    parts: int
    uploads: int
    files: int
    tabular_rows: int
    binary_items: int


@dataclass(frozen=True)
class ResourceSummary:
    """What a part holds of one capture method (or of plain files: empty type, name and method)."""

    resource_type: str
    resource_name: str
    method: str
    data_kind: str  # "tabular" | "binary" ("binary" for plain files)
    items: int  # tabular rows or binary items
    first_ns: int | None
    last_ns: int | None
    files: int  # committed files that still hold data
    bytes: int  # their size on disk
    tags: tuple[str, ...] = ()


def summaries(counts: dict[tuple, Sequence], files: Iterable[tuple[str, str, str, str | None, int, Iterable[str]]],
              ) -> list[ResourceSummary]:
    """ResourceSummary rows from per-method `counts` ((items, first_ns, last_ns) keyed by (type,
    name, method, data kind)) and the part's unexpired `files` as (type, name, method, data kind,
    size, tags) (a plain file's data kind is empty: it counts as binary); shared by the stores."""
    totals: dict[tuple, list[Any]] = {}
    for rtype, name, method, data_kind, size, tags in files:
        entry = totals.setdefault((rtype, name, method, data_kind or "binary"), [0, 0, set()])
        entry[0] += 1
        entry[1] += size
        entry[2].update(tags)
    out = []
    for k in sorted(counts):
        n, first, last = counts[k]
        nfiles, size, tags = totals.get(k, [0, 0, set()])
        out.append(ResourceSummary(*k, items=n, first_ns=first, last_ns=last, files=nfiles, bytes=size,
                                   tags=tuple(sorted(tags))))
    return out


@dataclass(frozen=True)
class SqlResult:
    """The answer to a read-only SQL query: column names, rows (JSON-safe values), and whether more rows were cut."""

    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    #: Why the rows were cut (row limit or result bytes), when `truncated`.
    truncated_reason: str | None = None


class StoreUnavailable(Exception):
    """The store's backend cannot be reached right now (e.g. MongoDB is down): answered 503, retry later."""


class QueryRefused(Exception):
    """A user query (SQL or MQL) the cloud will not run, or that failed; the message says why (a 400)."""


@runtime_checkable
class Store(Protocol):
    """Where the cloud keeps parts, uploads in progress and committed data.

    Implementations must make `commit` atomic (the file row and all its rows, or nothing) and
    idempotent (a second commit of the same (part, file) inserts nothing and returns False).
    """

    async def add_part(self, part_id: str, secret: str, *, rotate: bool = False) -> None:
        """Create a part with `secret` (kept only as a salted hash); `rotate=True` replaces an existing one's."""
        ...

    async def verify_part(self, part_id: str, secret: str) -> bool:
        """Whether `secret` is the secret of `part_id`; False for an unknown part."""
        ...

    async def get_upload(self, part_id: str, file_id: str) -> Upload | None:
        """The declared upload of (part, file), or None."""
        ...

    async def save_upload(self, upload: Upload) -> None:
        """Insert or replace the declared upload of (upload.part_id, upload.file_id)."""
        ...

    async def delete_upload(self, part_id: str, file_id: str) -> None:
        """Forget an upload (after a checksum mismatch or a rejected file)."""
        ...

    async def list_uploads(self) -> list[Upload]:
        """Every declared, not yet committed upload of every part (for expiring abandoned ones)."""
        ...

    async def part_usage(self, part_id: str) -> PartUsage:
        """The part's uploads in flight and stored bytes (for its quotas)."""
        ...

    async def get_file(self, part_id: str, file_id: str) -> CommittedFile | None:
        """The committed file (part, file), or None."""
        ...

    async def commit(
        self, file: CommittedFile, tabular: Sequence[TabularRow], binary: Sequence[BinaryItem], *, staged: bool = False
    ) -> bool:
        """Atomically store a committed file with its rows and drop its upload; False if it was already committed.

        With `staged`, the rows staged for the file (`stage_rows`) become visible with it, atomically.
        """
        ...

    async def commit_many(self, commits: Sequence[Commit]) -> list[bool]:
        """Commit several files at once (group commit): one transaction and one round of fsyncs where
        the backend allows, all or nothing; each is idempotent exactly as `commit`. Returns, for each,
        whether it was new."""
        ...

    async def stage_rows(self, tabular: Sequence[TabularRow], binary: Sequence[BinaryItem]) -> None:
        """Store one batch of the rows of a file about to be committed, invisible to every query until
        `commit(..., staged=True)`; a big file is ingested in many short batches, never one long hold."""
        ...

    async def drop_staged(self, part_id: str, file_id: str) -> None:
        """Forget the rows staged for (part, file) and not committed (a restart or a rejected file)."""
        ...

    async def list_files(self, part_id: str, *, after: str | None = None, limit: int = 100) -> list[CommittedFile]:
        """Committed files of a part in file id order, those after file id `after`."""
        ...

    async def query_tabular(self, part_id: str, query: Query) -> list[TabularRow]:
        """Tabular rows of a part matching `query`, in SortKey order, at most `query.limit`."""
        ...

    async def query_binary(self, part_id: str, query: Query) -> list[BinaryItem]:
        """Binary items of a part matching `query`, in SortKey order, at most `query.limit`."""
        ...

    async def get_binary(self, part_id: str, file_id: str, record_index: int) -> BinaryItem | None:
        """One binary item of a part, or None."""
        ...

    async def count(self, part_id: str, kind: str, query: Query) -> int:
        """How many tabular rows (`kind` "tabular") or binary items ("binary") of a part match `query`
        (`limit` ignored; `after` honoured), for an export's progress."""
        ...

    async def aggregate_tabular(self, part_id: str, query: Query, buckets: Buckets, *, max_rows: int,
                                timeout_s: float) -> list[AggregateRow]:
        """Per series (resource, method, params), numeric payload field and time bucket of the part's rows
        matching `query` within `buckets`: count, min, max, sum, computed by the backend itself (GROUP
        BY, an aggregation pipeline), sorted by series, field and bucket, at most `max_rows + 1` rows
        (more means the caller cuts). Buckets without data have no row. Raises QueryRefused when it
        runs longer than `timeout_s`. Field names are paths into the payload: `pose.x`, `joints[0]`,
        `value` for a payload that is a number itself."""
        ...

    async def summary(self, part_id: str) -> list[ResourceSummary]:
        """Per capture method of a part: item counts, time range, files, bytes and tags (for the data browser)."""
        ...

    async def run_sql(self, part_id: str, sql: str, *, max_rows: int, timeout_s: float) -> SqlResult:
        """Run one read-only SQL statement over a `readings` view of the part's own tabular rows.

        Raises QueryRefused for writes, ATTACH, PRAGMA, anything but the view, errors and timeouts.
        """
        ...

    async def expire(self, now_ns: int) -> list[CommittedFile]:
        """Delete the rows of every file past its retention_policy (capsync.cloud.retention.due); return them.

        The file rows stay, marked expired (`expired_ns`), so late retries still see "committed".
        """
        ...

    async def statistics(self) -> StoreStatistics:
        """Row counts."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
