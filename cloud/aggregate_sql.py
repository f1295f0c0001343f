"""The aggregate of `GET /v1/tabular/aggregate` as one SQL statement, for SQLite and PostgreSQL.

Both walk every numeric leaf of each row's JSON payload (SQLite: `json_tree`; PostgreSQL: a
recursive CTE over `json_each` / `json_array_elements`, on `json` rather than `jsonb` so that a
payload holding `\\u0000` still aggregates) and GROUP BY series (resource type, name, method,
params), field path and time bucket. Booleans are not numbers here, as in the chart. Field paths
come back as SQLite's `fullkey` (`$.pose.x`, `$.joints[0]`, `$`) and are turned into the API's
names (`pose.x`, `joints[0]`, `value`) by `field_name`.
"""

from __future__ import annotations

import re
from typing import Any

from capsync.cloud.store import AggregateRow, Buckets, Query

#: The test of one tag for each store (as `Query.sql_filter` takes it).
SQLITE_TAG_TEST = "EXISTS (SELECT 1 FROM json_each(tags) AS tg WHERE tg.value = ?)"
POSTGRES_TAG_TEST = "tags::jsonb ? %s"


def field_name(fullkey: str) -> str:
    """`$.pose.x` -> `pose.x`, `$[0]` -> `[0]`, `$` -> `value` (a payload that is a number itself)."""
    if fullkey == "$":
        return "value"
    name = fullkey[2:] if fullkey.startswith("$.") else fullkey[1:]
    return re.sub(r'"((?:[^"]|"")*)"', lambda m: m.group(1), name) if '"' in name else name


def sqlite_statement(part_id: str, q: Query, b: Buckets) -> tuple[str, list[Any]]:
    """The SQLite statement (and its arguments) over the `tabular` table."""
    where, args = q.sql_filter(part_id, "?", SQLITE_TAG_TEST)
    series = "resource_type, resource_name, method, params"
    # total(), not sum(): sum() of integers raises on overflow, total() is a float and never does.
    sql = (f"SELECT {series}, j.fullkey, (requested_ns - ?) / ? AS b, count(*), min(j.value), max(j.value), "
           f"total(j.value) FROM tabular, json_tree(tabular.payload) AS j "
           f"WHERE {where} AND j.type IN ('integer', 'real') "
           f"GROUP BY {series}, j.fullkey, b ORDER BY {series}, j.fullkey, b")
    return sql, [b.start_ns, b.width_ns, *args]


def postgres_statement(part_id: str, q: Query, b: Buckets) -> tuple[str, list[Any]]:
    """The PostgreSQL statement (with `{s}` for the store's schema) and its arguments."""
    where, args = q.sql_filter(part_id, "%s", POSTGRES_TAG_TEST)
    series = "resource_type, resource_name, method, params"
    sql = f"""
WITH RECURSIVE leaves AS (
    SELECT {series}, (requested_ns - %s) / %s AS b, '$'::text AS path, payload::json AS v
    FROM {{s}}.tabular WHERE {where}
  UNION ALL
    SELECT l.resource_type, l.resource_name, l.method, l.params, l.b, e.path, e.v
    FROM leaves l CROSS JOIN LATERAL (
        SELECT l.path || '.' || o.key AS path, o.value AS v
        FROM json_each(CASE WHEN json_typeof(l.v) = 'object' THEN l.v ELSE '{{{{}}}}'::json END) AS o
      UNION ALL
        SELECT l.path || '[' || (a.i - 1) || ']', a.value
        FROM json_array_elements(CASE WHEN json_typeof(l.v) = 'array' THEN l.v ELSE '[]'::json END)
             WITH ORDINALITY AS a(value, i)
    ) AS e
    WHERE json_typeof(l.v) IN ('object', 'array')
)
SELECT {series}, path, b, count(*), min(v::text::float8), max(v::text::float8), sum(v::text::float8)
FROM leaves WHERE json_typeof(v) = 'number'
GROUP BY {series}, path, b ORDER BY {series}, path COLLATE "C", b
"""
    return sql, [b.start_ns, b.width_ns, *args]


def rows_of(cursor: Any, max_rows: int) -> list[AggregateRow]:
    """At most `max_rows + 1` AggregateRows from a cursor of either statement's rows."""
    out: list[AggregateRow] = []
    for rtype, name, method, params, path, bucket, n, lo, hi, total in cursor:
        out.append(AggregateRow(rtype, name, method, params, field_name(path), int(bucket), int(n),
                                float(lo), float(hi), float(total)))
        if len(out) > max_rows:
            break
    return out
