"""Big data sets for cloud tests and benchmarks, fast: readings written straight through the store's
commit API (one `commit_many` per batch of files, as the group committer does), images uploaded as
real binary capture files over the sync protocol.

A day of 100 Hz data would take a day to capture with an agent; here it takes seconds. The rows are
what ingest makes of a capture file (TabularRow with its file row), so every query, aggregate and
export path reads them exactly as it reads synced data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

from capsync.cloud.store import Commit, CommittedFile, Store, TabularRow
from capsync.runtime.capture_file import new_file_id
from capsync.runtime.sync_protocol import FileKind
from tests.test_cloud_support import binary_capture, upload


def _file(part: str, file_id: str, resource: tuple[str, str, str], params: dict[str, Any], records: int,
          t_ns: int, tags: tuple[str, ...]) -> CommittedFile:
    return CommittedFile(part, file_id, FileKind.CAPTURE, records * 64, hashlib.sha256(file_id.encode()).hexdigest(),
                         records, t_ns, resource_type=resource[0], resource_name=resource[1], method=resource[2],
                         data_kind="tabular", params=params, tags=tags, created_ns=t_ns)


def reading_files(part: str, resource: tuple[str, str, str], times_ns: Iterable[int], payload: Callable[[int, int], Any],
                  *, params: dict[str, Any] | None = None, per_file: int = 6000,
                  tags: tuple[str, ...] = ()) -> Iterator[Commit]:
    """Commits of capture files of `resource` holding one reading at each of `times_ns`, `per_file`
    a file; `payload(i, t_ns)` makes the i-th reading's payload."""
    params = params or {}
    batch: list[TabularRow] = []
    file_id = new_file_id()
    for i, t in enumerate(times_ns):
        batch.append(TabularRow(part, file_id, len(batch), *resource, t, t + 1_000_000, tags, payload(i, t), params))
        if len(batch) == per_file:
            yield Commit(_file(part, file_id, resource, params, len(batch), t, tags), batch)
            batch, file_id = [], new_file_id()
    if batch:
        yield Commit(_file(part, file_id, resource, params, len(batch), batch[-1].requested_ns, tags), batch)


async def commit_all(store: Store, commits: Iterable[Commit], files_per_commit: int = 20) -> int:
    """Commit every file of `commits`, `files_per_commit` in one transaction; returns the rows committed."""
    rows, group = 0, []
    for c in commits:
        group.append(c)
        if len(group) == files_per_commit:
            await store.commit_many(group)
            rows += sum(len(g.tabular) for g in group)
            group = []
    if group:
        await store.commit_many(group)
        rows += sum(len(g.tabular) for g in group)
    return rows


def every(start_ns: int, end_ns: int, hz: float) -> range:
    """Sample times at `hz` from `start_ns` (inclusive) to `end_ns` (exclusive)."""
    return range(start_ns, end_ns, round(1e9 / hz))


async def upload_images(client: httpx.AsyncClient, work_dir: Path, part: str, n: int, *, per_file: int = 50,
                        t0_ns: int = 2_000_000_000, step_ns: int = 10**9, size: int = 2048) -> list[bytes]:
    """Upload `n` small distinct JPEG-typed images in binary capture files of `per_file`; returns their bytes."""
    images = [b"\xff\xd8\xff" + i.to_bytes(4, "big") + bytes([i % 251]) * (size - 7) for i in range(n)]
    for k in range(0, n, per_file):
        fid, data = binary_capture(work_dir / f"img{k}", images[k:k + per_file], part, t0=t0_ns + k * step_ns)
        r = await upload(client, fid, data, chunk=1 << 20)
        assert r.status_code == 200, r.text
    return images
