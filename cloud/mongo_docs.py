"""The documents the MongoDB cloud store keeps, and their conversion from and to the store's records.

Collections (in the database named by the URI's path, default `capsync`):

    parts         {_id: part_id, secret_hash, created_ns, rotated_ns}
    uploads       {_id: "<part>/<file>", part_id, file_id, kind, size, sha256, name, mime_type, received, created_ns}
    files         {_id: "<part>/<file>", part_id, file_id, kind, size, ..., metadata, expired_ns, live}
    readings      {_id: "<part>/<file>/<index>", part_id, file_id, record_index, resource_type, resource_name,
                   method, params, requested, received (BSON dates), requested_ns, received_ns, tags,
                   payload, metadata, live}
    binary_items  like readings, with mime_type, size, name, from_capture instead of payload

`live` is the commit marker (see cloud/mongo_store.py). Values BSON cannot hold as they are —
integers beyond int64, keys starting with `$` (such as the `{"$base64": ...}` of bytes) or holding
NUL — are stored in a BSON-safe form (big integers as strings, `$` keys prefixed with `_`), and the
exact JSON of payload, params and metadata is then kept in `exact_json` as well, which the query
API reads back. Pipelines (`/v1/tabular/mql`) see the BSON-safe form.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from capsync.cloud.store import BinaryItem, CommittedFile, TabularRow, Upload
from capsync.cloud.timefmt import iso_from_ns
from capsync.runtime.sync_protocol import FileKind

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_INT64 = (-(2**63), 2**63 - 1)


def key(part_id: str, file_id: str, record_index: int | None = None) -> str:
    """The `_id` of a file or upload (no index) or of one of its records. Part and file ids hold no `/`."""
    return f"{part_id}/{file_id}" if record_index is None else f"{part_id}/{file_id}/{record_index}"


def ns_to_date(ns: int) -> datetime:
    """Nanoseconds since the epoch as a UTC datetime (BSON keeps milliseconds)."""
    return _EPOCH + timedelta(milliseconds=ns // 1_000_000)


def bson_safe(value: Any) -> tuple[Any, bool]:
    """A copy of a JSON value that BSON can store, and whether anything had to change."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value, False
    if isinstance(value, int):
        return (value, False) if _INT64[0] <= value <= _INT64[1] else (str(value), True)
    if isinstance(value, dict):
        out, lossy = {}, False
        for k, v in value.items():
            safe_k = str(k).replace("\x00", "\ufffd")
            if safe_k.startswith("$"):
                safe_k = "_" + safe_k
            out[safe_k], changed = bson_safe(v)
            lossy = lossy or changed or safe_k != k
        return out, lossy
    if isinstance(value, (list, tuple)):
        items = [bson_safe(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    return str(value), True


def _safe_fields(**fields: Any) -> dict[str, Any]:
    doc, lossy = {}, False
    for name, value in fields.items():
        doc[name], changed = bson_safe(value)
        lossy = lossy or changed
    if lossy:
        doc["exact_json"] = json.dumps(fields, separators=(",", ":"), default=str)
    return doc


def _exact(doc: dict[str, Any], name: str) -> Any:
    if "exact_json" in doc:
        return json.loads(doc["exact_json"]).get(name)
    return doc.get(name)


def upload_doc(u: Upload) -> dict[str, Any]:
    """An Upload as its document."""
    return {
        "_id": key(u.part_id, u.file_id), "part_id": u.part_id, "file_id": u.file_id, "kind": u.kind.value,
        "size": u.size, "sha256": u.sha256, "name": u.name, "mime_type": u.mime_type, "received": u.received,
        "created_ns": u.created_ns,
    }


def upload_from_doc(d: dict[str, Any]) -> Upload:
    """An uploads document as an Upload."""
    return Upload(d["part_id"], d["file_id"], FileKind(d["kind"]), d["size"], d["sha256"], d.get("name", ""),
                  d.get("mime_type", ""), d.get("received", 0), d.get("created_ns", 0))


def file_doc(f: CommittedFile) -> dict[str, Any]:
    """A CommittedFile as its document, not yet live."""
    return {
        "_id": key(f.part_id, f.file_id), "part_id": f.part_id, "file_id": f.file_id, "kind": f.kind.value,
        "size": f.size, "sha256": f.sha256, "records": f.records, "committed_ns": f.committed_ns,
        "committed": ns_to_date(f.committed_ns), "name": f.name, "mime_type": f.mime_type,
        "resource_type": f.resource_type, "resource_name": f.resource_name, "method": f.method,
        "data_kind": f.data_kind, "tags": list(f.tags), "created_ns": f.created_ns, "expired_ns": None, "live": False,
        **_safe_fields(params=f.params, metadata=f.metadata),
    }


def file_from_doc(d: dict[str, Any]) -> CommittedFile:
    """A files document as a CommittedFile."""
    return CommittedFile(
        part_id=d["part_id"], file_id=d["file_id"], kind=FileKind(d["kind"]), size=d["size"], sha256=d["sha256"],
        records=d["records"], committed_ns=d["committed_ns"], name=d.get("name", ""), mime_type=d.get("mime_type", ""),
        resource_type=d.get("resource_type", ""), resource_name=d.get("resource_name", ""), method=d.get("method", ""),
        data_kind=d.get("data_kind", ""), params=_exact(d, "params") or {}, tags=tuple(d.get("tags", ())),
        created_ns=d.get("created_ns", 0), metadata=_exact(d, "metadata") or {}, expired_ns=d.get("expired_ns"),
    )


def _common(r: TabularRow | BinaryItem) -> dict[str, Any]:
    return {
        "_id": key(r.part_id, r.file_id, r.record_index), "part_id": r.part_id, "file_id": r.file_id,
        "record_index": r.record_index, "resource_type": r.resource_type, "resource_name": r.resource_name,
        "method": r.method, "requested": ns_to_date(r.requested_ns), "received": ns_to_date(r.received_ns),
        "requested_ns": r.requested_ns, "received_ns": r.received_ns, "tags": list(r.tags), "live": False,
    }


def tabular_doc(r: TabularRow) -> dict[str, Any]:
    """A TabularRow as its readings document, not yet live."""
    return {**_common(r), **_safe_fields(payload=r.payload, params=r.params, metadata=r.metadata)}


def tabular_from_doc(d: dict[str, Any]) -> TabularRow:
    """A readings document as a TabularRow (exact values when they had to be made BSON-safe)."""
    return TabularRow(
        d["part_id"], d["file_id"], d["record_index"], d["resource_type"], d["resource_name"], d["method"],
        d["requested_ns"], d["received_ns"], tuple(d.get("tags", ())), _exact(d, "payload"),
        _exact(d, "params") or {}, _exact(d, "metadata") or {},
    )


def binary_doc(b: BinaryItem) -> dict[str, Any]:
    """A BinaryItem as its binary_items document, not yet live."""
    return {**_common(b), "mime_type": b.mime_type, "size": b.size, "name": b.name, "from_capture": b.from_capture,
            **_safe_fields(metadata=b.metadata)}


def binary_from_doc(d: dict[str, Any]) -> BinaryItem:
    """A binary_items document as a BinaryItem."""
    return BinaryItem(
        d["part_id"], d["file_id"], d["record_index"], d["resource_type"], d["resource_name"], d["method"],
        d["mime_type"], d["size"], d["requested_ns"], d["received_ns"], tuple(d.get("tags", ())),
        _exact(d, "metadata") or {}, d.get("name", ""), bool(d.get("from_capture", True)),
    )


def sql_row(d: dict[str, Any]) -> tuple[Any, ...]:
    """A readings document as a row of the SQLite `tabular` table (capsync.cloud.sqlite_schema.TABULAR_COLS)."""
    r = tabular_from_doc(d)
    return (
        r.part_id, r.file_id, r.record_index, r.resource_type, r.resource_name, r.method,
        json.dumps(r.params, separators=(",", ":")), r.requested_ns, r.received_ns, iso_from_ns(r.requested_ns),
        iso_from_ns(r.received_ns), json.dumps(list(r.tags)), json.dumps(r.payload, separators=(",", ":")),
        json.dumps(r.metadata, separators=(",", ":")),
    )
