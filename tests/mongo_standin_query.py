"""A STAND-IN for MongoDB with queries, for the cloud's MongoDB store tests. It is not MongoDB.

Extends tests/mongo_standin.py (which speaks the wire protocol and handles insert/find by equality)
with what cloud/mongo_store.py needs: createIndexes with unique indexes (duplicate keys answered
with error 11000, per document, honouring `ordered`), find with query operators, sort, skip,
limit and projection, update (`$set`, `$unset`, replacement, upsert, multi), delete, and
aggregate with the stages $match, $group ($sum, $min, $max, $avg, $first, $last, $push),
$sort, $skip, $limit, $project/$unset (field paths), $addFields/$set, $count and $unwind, and
the expression operators $literal, $cond (array form), $isNumber, $arrayElemAt, $getField,
$subtract and $mod (what the cloud's aggregate endpoint sends, cloud/aggregate_mongo.py).
Query operators: $eq $ne $gt $gte $lt $lte $in $nin $exists $all $size, $and $or $nor. A
`fail_next_update` hook makes the next update fail, to test a commit interrupted midway.
"""

from __future__ import annotations

import copy
import math
from datetime import datetime
from typing import Any

import bson

from tests.mongo_standin import MongoStandIn

_MISSING = object()


def get_path(doc: Any, path: str) -> Any:
    """The value at a dotted path, or _MISSING."""
    cur = doc
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def _rank(v: Any) -> tuple[int, Any]:
    """A sort key following MongoDB's type order closely enough: missing/null < numbers < strings < ..."""
    if v is _MISSING or v is None:
        return (0, 0)
    if isinstance(v, bool):
        return (5, v)
    if isinstance(v, (int, float)):
        return (1, v)
    if isinstance(v, str):
        return (2, v)
    if isinstance(v, datetime):
        return (6, v)
    if isinstance(v, dict):
        return (3, str(sorted(v.items())))
    if isinstance(v, list):
        return (4, [_rank(x) for x in v])
    return (7, str(v))


def _cmp(op: str, a: Any, b: Any) -> bool:
    if a is _MISSING:
        return False
    ra, rb = _rank(a), _rank(b)
    if ra[0] != rb[0]:
        return False
    return {"$gt": ra > rb, "$gte": ra >= rb, "$lt": ra < rb, "$lte": ra <= rb}[op]


def _eq(value: Any, want: Any) -> bool:
    if want is None:
        return value is _MISSING or value is None
    if isinstance(value, list) and not isinstance(want, list):
        return any(v == want for v in value)
    return value is not _MISSING and value == want


def _cond(value: Any, cond: Any) -> bool:
    if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
        for op, arg in cond.items():
            candidates = value if isinstance(value, list) and op in ("$gt", "$gte", "$lt", "$lte") else [value]
            if op == "$eq" and not _eq(value, arg):
                return False
            if op == "$ne" and _eq(value, arg):
                return False
            if op in ("$gt", "$gte", "$lt", "$lte") and not any(_cmp(op, v, arg) for v in candidates):
                return False
            if op == "$in" and not any(_eq(value, a) for a in arg):
                return False
            if op == "$nin" and any(_eq(value, a) for a in arg):
                return False
            if op == "$exists" and (value is not _MISSING) != bool(arg):
                return False
            if op == "$all" and not (isinstance(value, list) and all(a in value for a in arg)):
                return False
            if op == "$size" and not (isinstance(value, list) and len(value) == arg):
                return False
            if op not in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$all", "$size"):
                raise ValueError(f"unknown operator: {op}")
        return True
    return _eq(value, cond)


def matches(doc: dict, flt: dict) -> bool:
    """Whether `doc` matches the query filter `flt`."""
    for k, cond in flt.items():
        if k == "$and":
            if not all(matches(doc, f) for f in cond):
                return False
        elif k == "$or":
            if not any(matches(doc, f) for f in cond):
                return False
        elif k == "$nor":
            if any(matches(doc, f) for f in cond):
                return False
        elif not _cond(get_path(doc, k), cond):
            return False
    return True


def _sort(docs: list[dict], spec: dict) -> list[dict]:
    for field, direction in reversed(list(spec.items())):
        docs = sorted(docs, key=lambda d: _rank(get_path(d, field)), reverse=direction < 0)
    return docs


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _mod(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    return int(math.fmod(a, b)) if isinstance(a, int) and isinstance(b, int) else math.fmod(a, b)  # sign of a, as MongoDB


def _elem_at(arr: Any, i: Any) -> Any:
    if not isinstance(arr, list) or not -len(arr) <= i < len(arr):
        return None  # missing, as MongoDB: out of range or not an array
    return arr[i]


def _get_field(spec: Any, doc: dict) -> Any:
    target = _expr(doc, spec["input"]) if isinstance(spec, dict) else doc
    name = spec["field"] if isinstance(spec, dict) else spec
    return target.get(name) if isinstance(target, dict) else None


#: Expression operators: name -> function of (the operator's argument, the document).
_OPERATORS = {
    "$literal": lambda arg, doc: arg,
    "$cond": lambda arg, doc: _expr(doc, arg[1]) if _expr(doc, arg[0]) not in (None, False, 0) else _expr(doc, arg[2]),
    "$isNumber": lambda arg, doc: _is_number(_expr(doc, arg[0] if isinstance(arg, list) else arg)),
    "$arrayElemAt": lambda arg, doc: _elem_at(_expr(doc, arg[0]), _expr(doc, arg[1])),
    "$getField": lambda arg, doc: _get_field(arg, doc),
    "$subtract": lambda arg, doc: (lambda a, b: None if a is None or b is None else a - b)(*[_expr(doc, x) for x in arg]),
    "$mod": lambda arg, doc: _mod(*[_expr(doc, x) for x in arg]),
}


def _expr(doc: dict, e: Any) -> Any:
    if isinstance(e, str) and e.startswith("$"):
        v = get_path(doc, e[1:])
        return None if v is _MISSING else v
    if isinstance(e, dict) and len(e) == 1 and next(iter(e)).startswith("$"):
        (op, arg), = e.items()
        if op not in _OPERATORS:
            raise ValueError(f"Unrecognized expression '{op}'")
        return _OPERATORS[op](arg, doc)
    if isinstance(e, dict):
        return {k: _expr(doc, v) for k, v in e.items()}
    return e


def _project(doc: dict, spec: dict) -> dict:
    include = [k for k, v in spec.items() if v not in (0, False)]
    if not include or (include == ["_id"] and len(spec) > 1):
        out = copy.deepcopy(doc)
        for k, v in spec.items():
            if v in (0, False):
                out.pop(k, None)
        return out
    out = {"_id": doc["_id"]} if "_id" in doc and spec.get("_id", 1) not in (0, False) else {}
    for k in include:
        v = spec[k]
        val = get_path(doc, k) if v in (1, True) else _expr(doc, v)
        if val is not _MISSING:
            out[k] = val
    return out


def _group(docs: list[dict], spec: dict) -> list[dict]:
    groups: dict[str, dict] = {}
    for d in docs:
        gid = _expr(d, spec["_id"])
        key = repr(bson.encode({"k": gid}))
        g = groups.setdefault(key, {"_id": gid, "__docs": []})
        g["__docs"].append(d)
    out = []
    for g in groups.values():
        res = {"_id": g["_id"]}
        for name, acc in spec.items():
            if name == "_id":
                continue
            (op, arg), = acc.items()
            vals = [_expr(d, arg) for d in g["__docs"]]
            nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
            present = [v for v in vals if v is not None]
            res[name] = {
                "$sum": lambda: sum(nums), "$avg": lambda: sum(nums) / len(nums) if nums else None,
                "$min": lambda: min(present, key=_rank) if present else None,
                "$max": lambda: max(present, key=_rank) if present else None,
                "$first": lambda: vals[0] if vals else None, "$last": lambda: vals[-1] if vals else None,
                "$push": lambda: vals,
            }[op]()
        out.append(res)
    return out


def aggregate(docs: list[dict], pipeline: list[dict]) -> list[dict]:
    """Run a pipeline over `docs` (copies); raises ValueError on an unknown stage."""
    docs = [copy.deepcopy(d) for d in docs]
    for stage in pipeline:
        (name, arg), = stage.items()
        if name == "$match":
            docs = [d for d in docs if matches(d, arg)]
        elif name == "$group":
            docs = _group(docs, arg)
        elif name == "$sort":
            docs = _sort(docs, arg)
        elif name == "$skip":
            docs = docs[int(arg):]
        elif name == "$limit":
            docs = docs[: int(arg)]
        elif name == "$project":
            docs = [_project(d, arg) for d in docs]
        elif name == "$unset":
            docs = [_project(d, {k: 0 for k in ([arg] if isinstance(arg, str) else arg)}) for d in docs]
        elif name in ("$addFields", "$set"):
            docs = [{**d, **{k: _expr(d, v) for k, v in arg.items()}} for d in docs]
        elif name == "$count":
            docs = [{arg: len(docs)}] if docs else []
        elif name == "$unwind":
            path = (arg if isinstance(arg, str) else arg["path"])[1:]
            docs = [{**d, path: v} for d in docs for v in (get_path(d, path) if isinstance(get_path(d, path), list) else [])]
        else:
            raise ValueError(f"Unrecognized pipeline stage name: '{name}'")
    return docs


class QueryingMongoStandIn(MongoStandIn):
    """The wire-protocol stand-in with indexes, query operators, updates, deletes and aggregation."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.unique: dict[tuple[str, str], list[list[str]]] = {}
        self.fail_next_update: str | None = None  # when set, the next update command fails with it

    def _coll(self, db: str, name: str) -> list[dict]:
        return self.data.setdefault((db, name), [])

    def _duplicate(self, db: str, coll: str, doc: dict, ignore: dict | None = None) -> str | None:
        for keys in [["_id"], *self.unique.get((db, coll), [])]:
            want = [get_path(doc, k) for k in keys]
            for other in self._coll(db, coll):
                if other is not ignore and [get_path(other, k) for k in keys] == want:
                    return f"E11000 duplicate key error collection: {db}.{coll} index: {'_'.join(keys)} dup key"
        return None

    def _command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = next(iter(cmd), "")
        db = cmd.get("$db", "admin")
        handler = getattr(self, f"_cmd_{name}", None)
        if handler is None:
            return super()._command(cmd)
        with self.lock:
            self.commands.append(name)
            try:
                return handler(db, cmd)
            except (ValueError, KeyError, TypeError) as exc:
                return {"ok": 0.0, "errmsg": str(exc), "code": 2, "codeName": "BadValue"}

    def _cmd_createIndexes(self, db: str, cmd: dict) -> dict:
        for ix in cmd["indexes"]:
            if ix.get("unique") and list(ix["key"]) not in self.unique.setdefault((db, cmd["createIndexes"]), []):
                self.unique[(db, cmd["createIndexes"])].append(list(ix["key"]))
        return {"ok": 1.0, "numIndexesBefore": 1, "numIndexesAfter": 1 + len(cmd["indexes"])}

    def _cmd_insert(self, db: str, cmd: dict) -> dict:
        if self.fail_inserts:
            return {"ok": 0.0, "errmsg": self.fail_inserts, "code": 8000, "codeName": "AtlasError"}
        coll, errors, n = cmd["insert"], [], 0
        for i, doc in enumerate(cmd.get("documents", [])):
            dup = self._duplicate(db, coll, doc)
            if dup:
                errors.append({"index": i, "code": 11000, "errmsg": dup})
                if cmd.get("ordered", True):
                    break
                continue
            self._coll(db, coll).append(doc)
            n += 1
        return {"n": n, "ok": 1.0, **({"writeErrors": errors} if errors else {})}

    def _cmd_find(self, db: str, cmd: dict) -> dict:
        docs = [d for d in self._coll(db, cmd["find"]) if matches(d, cmd.get("filter") or {})]
        if cmd.get("sort"):
            docs = _sort(docs, cmd["sort"])
        docs = docs[int(cmd.get("skip") or 0):]
        if cmd.get("limit"):
            docs = docs[: abs(int(cmd["limit"]))]
        if cmd.get("projection"):
            docs = [_project(d, cmd["projection"]) for d in docs]
        return {"cursor": {"id": bson.Int64(0), "ns": f"{db}.{cmd['find']}", "firstBatch": docs}, "ok": 1.0}

    def _apply(self, doc: dict, u: dict) -> dict:
        if not any(k.startswith("$") for k in u):
            return {"_id": doc.get("_id"), **u}
        out = copy.deepcopy(doc)
        for k, v in u.get("$set", {}).items():
            out[k] = v
        for k in u.get("$unset", {}):
            out.pop(k, None)
        return out

    def _cmd_update(self, db: str, cmd: dict) -> dict:
        if self.fail_next_update:
            msg, self.fail_next_update = self.fail_next_update, None
            return {"ok": 0.0, "errmsg": msg, "code": 8000, "codeName": "AtlasError"}
        coll, n, modified, upserted, errors = cmd["update"], 0, 0, [], []
        docs = self._coll(db, coll)
        for i, spec in enumerate(cmd["updates"]):
            hits = [j for j, d in enumerate(docs) if matches(d, spec["q"])]
            if not spec.get("multi"):
                hits = hits[:1]
            for j in hits:
                new = self._apply(docs[j], spec["u"])
                dup = self._duplicate(db, coll, new, ignore=docs[j])
                if dup:
                    errors.append({"index": i, "code": 11000, "errmsg": dup})
                    continue
                n += 1
                modified += new != docs[j]
                docs[j] = new
            if not hits and spec.get("upsert"):
                base = {k: v for k, v in spec["q"].items() if not k.startswith("$") and not isinstance(v, dict)}
                new = self._apply(base, spec["u"])
                new.setdefault("_id", base.get("_id", bson.ObjectId()))
                docs.append(new)
                n += 1
                upserted.append({"index": i, "_id": new["_id"]})
        reply = {"n": n, "nModified": modified, "ok": 1.0}
        if upserted:
            reply["upserted"] = upserted
        if errors:
            reply["writeErrors"] = errors
        return reply

    def _cmd_delete(self, db: str, cmd: dict) -> dict:
        coll, n = cmd["delete"], 0
        for spec in cmd["deletes"]:
            docs = self._coll(db, coll)
            hits = [d for d in docs if matches(d, spec["q"])]
            if spec.get("limit") == 1:
                hits = hits[:1]
            ids = {id(d) for d in hits}
            self.data[(db, coll)] = [d for d in docs if id(d) not in ids]
            n += len(hits)
        return {"n": n, "ok": 1.0}

    def _cmd_aggregate(self, db: str, cmd: dict) -> dict:
        docs = aggregate(self._coll(db, cmd["aggregate"]), cmd["pipeline"])
        return {"cursor": {"id": bson.Int64(0), "ns": f"{db}.{cmd['aggregate']}", "firstBatch": docs}, "ok": 1.0}

    def _cmd_listIndexes(self, db: str, cmd: dict) -> dict:
        ixs = [{"v": 2, "key": {"_id": 1}, "name": "_id_"}] + [
            {"v": 2, "key": {k: 1 for k in keys}, "name": "_".join(keys), "unique": True}
            for keys in self.unique.get((db, cmd["listIndexes"]), [])
        ]
        return {"cursor": {"id": bson.Int64(0), "ns": f"{db}.{cmd['listIndexes']}", "firstBatch": ixs}, "ok": 1.0}


__all__ = ["QueryingMongoStandIn", "aggregate", "matches", "get_path"]
