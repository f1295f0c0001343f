"""The cloud's HTTP API as a Starlette app: the sync protocol's upload routes, the query API, and the
data browser page (docs/cloud.md).

`create_app(data_dir)` builds the app over a data dir holding `cloud.sqlite` and the uploaded
bytes; pass `store=` to use another Store (e.g. MongoDB). The app is plain ASGI: the server
(cloud/server.py) runs it under Hypercorn's Trio worker, and tests run it in-process through
`httpx.ASGITransport`. The protocol is documented in docs/sync-protocol.md.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from capsync.cloud import aggregate, browser, export, metrics, query, quotas, uploads, user_queries, whole_upload
from capsync.cloud.auth import CredentialCache
from capsync.cloud.blobs import Blobs, LocalBlobs
from capsync.cloud.http import Cloud, error_response
from capsync.cloud.part_admin import PartAdmin
from capsync.cloud.limits import UploadLimits
from capsync.cloud.sqlite_store import SqliteStore
from capsync.cloud.store import CommittedFile, Store
from capsync.cloud.timefmt import iso_from_ns
from capsync.runtime.blocking import run_blocking
from capsync.runtime.capture_file import make_private_dirs_durable
from capsync.runtime.sync_protocol import API_PREFIX, MAX_CHUNK_BYTES, MAX_FILE_BYTES, ErrorBody

log = logging.getLogger("capsync.cloud")

#: Name of the SQLite database inside the data dir.
DB_NAME = "cloud.sqlite"


def private_dir(path: Path) -> None:
    """Create `path` (and missing parents) as 0700; warn when an existing one is open to others."""
    if not path.exists():
        make_private_dirs_durable(path)  # a power cut must not forget the dir under its first commit
    elif path.stat().st_mode & 0o077:
        log.warning("the data dir can be read by other users of this machine; chmod 700 it",
                    extra={"data_dir": str(path), "mode": oct(path.stat().st_mode & 0o777)})


async def health(request: Request) -> Response:
    """`GET /v1/health`: liveness, without auth (the process answers; see `ready` for its dependencies)."""
    return JSONResponse({
        "ok": True,
        "service": "capsync-cloud",
        "api": API_PREFIX,
        "time": iso_from_ns(time.time_ns()),
        "max_chunk_bytes": MAX_CHUNK_BYTES,
        "max_file_bytes": MAX_FILE_BYTES,
    })


#: A failing readiness probe is logged at most this often per part (store, blobs).
NOT_READY_LOG_INTERVAL_S = 60.0
_not_ready_logged: dict[str, float] = {}


async def ready(request: Request) -> Response:
    """`GET /v1/ready`: readiness for a load balancer, without auth: 200 when this process can reach
    its store and its file bytes, else 503 naming which cannot be reached (and no secrets or paths)."""
    cloud: Cloud = request.app.state.cloud
    checks: dict[str, str] = {}
    probes = {
        "store": lambda: cloud.store.get_file("ready-probe", "ready-probe"),  # a point read every store answers
        "blobs": lambda: run_blocking(cloud.blobs.check),
    }
    for name, probe in probes.items():
        try:
            await probe()
            checks[name] = "ok"
        except Exception as exc:  # any failure means "not ready"; the answer says which part
            checks[name] = f"unavailable: {type(exc).__name__}"
            now = time.monotonic()
            if now - _not_ready_logged.get(name, -math.inf) >= NOT_READY_LOG_INTERVAL_S:  # probes come every few s
                _not_ready_logged[name] = now
                log.warning("not ready: cannot reach the %s", name, extra={"error": str(exc)[:300]})
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ok, **checks}, status_code=200 if ok else 503,
                        headers=None if ok else {"Retry-After": "5"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    errors = {404: "not found", 405: "method not allowed"}
    body = ErrorBody(error=errors.get(exc.status_code, "bad request"), detail=f"{request.method} {request.url.path}"[:300])
    return error_response(exc.status_code, body, dict(exc.headers or {}))


async def _crash(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path, "method": request.method})
    return error_response(500, ErrorBody(error="internal error", detail="see the cloud's log"))


def create_app(data_dir: Path, store: Store | None = None, *, auth_cache_ttl_s: float = 30.0,
               limits: UploadLimits | None = None, blobs: Blobs | None = None,
               trusted_proxies: frozenset[str] = frozenset()) -> Starlette:
    """The cloud's ASGI app over `data_dir` (created if missing).

    Without `store`, a `SqliteStore` at `<data_dir>/cloud.sqlite` is opened. Verified part
    secrets are cached for `auth_cache_ttl_s` seconds. `limits` are the per-part upload limits
    (capsync.cloud.limits.UploadLimits, its defaults when None). `blobs` holds the file bytes
    (capsync.cloud.blobs; default: LocalBlobs in `data_dir`). `trusted_proxies` are the addresses of
    reverse proxies whose X-Forwarded-For is believed (capsync.cloud.http.client_address). `app.state.cloud` holds the `Cloud`
    object (store, blobs, credential cache) for the server and for tests.
    """
    data_dir = Path(data_dir)
    private_dir(data_dir)
    if store is None:
        store = SqliteStore(data_dir / DB_NAME)
    parts = PartAdmin(store)
    cloud = Cloud(store=store, blobs=blobs or LocalBlobs(data_dir), credentials=CredentialCache(parts.verify, ttl_s=auth_cache_ttl_s),
                  limits=limits or UploadLimits(), parts=parts, trusted_proxies=frozenset(trusted_proxies))
    p = API_PREFIX
    routes = [
        Route(f"{p}/health", health, methods=["GET"]),
        Route(f"{p}/ready", ready, methods=["GET"]),
        Route(f"{p}/files", query.files, methods=["GET"]),
        Route(f"{p}/files/{{file_id}}", uploads.file_resource, methods=["GET", "POST"]),
        Route(f"{p}/files/{{file_id}}", whole_upload.put_file, methods=["PUT"]),
        Route(f"{p}/files/{{file_id}}/data", uploads.file_data, methods=["PUT"]),
        Route(f"{p}/files/{{file_id}}/commit", uploads.file_commit, methods=["POST"]),
        Route(f"{p}/tabular", query.tabular, methods=["GET"]),
        Route(f"{p}/tabular/aggregate", aggregate.aggregate, methods=["GET"]),
        Route(f"{p}/export/tabular", export.export_tabular, methods=["GET"]),
        Route(f"{p}/export/binary", export.export_binary, methods=["GET"]),
        Route(f"{p}/binary", query.binary, methods=["GET"]),
        Route(f"{p}/binary/{{item_id}}", query.binary_bytes, methods=["GET"]),
        Route(f"{p}/summary", user_queries.summary, methods=["GET"]),
        Route(f"{p}/tabular/sql", user_queries.sql, methods=["POST"]),
        Route(f"{p}/tabular/mql", user_queries.mql, methods=["POST"]),
        Route("/metrics", metrics.metrics, methods=["GET"]),
        *browser.routes(),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _crash})
    app.add_middleware(metrics.RequestCounter, metrics=cloud.metrics, routes=routes)
    app.state.cloud = cloud
    return app


async def apply_retention(cloud: Cloud, now_ns: int | None = None) -> list[CommittedFile]:
    """Delete the data of committed files past their retention_policy, rows and bytes; return those files.

    The rule (UTC days, size limits oldest first) is capsync.cloud.retention's. `now_ns` defaults to now;
    tests pass any time to apply retention on demand. Abandoned uploads are expired first
    (capsync.cloud.quotas.expire_abandoned).

    Several cloud processes may share one store (PostgreSQL): a store that has `exclusive_sweep()`
    (an async context manager yielding whether this process may sweep) is asked first, and while
    another process sweeps this one skips the sweep and returns [].
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    exclusive = getattr(cloud.store, "exclusive_sweep", None)
    async with (exclusive() if exclusive is not None else _always()) as mine:
        if not mine:
            log.info("retention sweep skipped: another cloud process is sweeping this store")
            return []
        return await _sweep(cloud, now_ns)


@asynccontextmanager
async def _always() -> AsyncIterator[bool]:
    yield True


async def _sweep(cloud: Cloud, now_ns: int) -> list[CommittedFile]:
    await quotas.expire_abandoned(cloud, now_ns)  # abandoned uploads are swept on the same schedule
    gone = await cloud.store.expire(now_ns)
    for f in gone:
        await run_blocking(cloud.blobs.drop_committed, f.part_id, f.file_id)
        log.info("retention expired file", extra={
            "part": f.part_id, "file_id": f.file_id, "records": f.records, "bytes": f.size,
            "resource": f"{f.resource_type}/{f.resource_name}/{f.method}", "committed": iso_from_ns(f.committed_ns),
        })
    return gone
