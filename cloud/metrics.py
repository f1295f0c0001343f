"""The cloud's Prometheus metrics (`GET /metrics`, docs/cloud.md): requests by route and status,
what ingest committed, commit latency and store errors, plus the process's CPU and memory.

Each app has a registry of its own (several apps may run in one process, as in tests). In the
workers of `serve --workers N` (cloud/workers.py sets PROMETHEUS_MULTIPROC_DIR for them),
prometheus_client keeps the values in files that every worker's `/metrics` adds up, so a scrape
through the shared port sees the whole cloud; the per-process CPU and memory are left out there. Labels are
bounded: routes are the app's route templates (anything unmatched is `other`), never a part id, a
file id or a path, so a fleet of any size and a hostile client cannot grow the metrics.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import Response

from capsync.cloud.store import CommittedFile

#: Where prometheus_client's multiprocess mode keeps its values (set for the workers of `serve --workers`).
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
#: Commit latency buckets (seconds): a lone small commit takes milliseconds, a round under load more.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class CloudMetrics:
    """The cloud's metric objects, on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._multiprocess_dir = os.environ.get(MULTIPROCESS_DIR_ENV)
        if not self._multiprocess_dir:
            ProcessCollector(registry=r)
        self.requests = Counter("capsync_cloud_http_requests", "HTTP requests answered, by route template, "
                                "method and status", ["route", "method", "status"], registry=r)
        self.files = Counter("capsync_cloud_ingest_files", "Files committed (new ones; a repeated commit is "
                             "not counted again), by kind", ["kind"], registry=r)
        self.rows = Counter("capsync_cloud_ingest_rows", "Records of the files committed (tabular rows and "
                            "binary items), by kind", ["kind"], registry=r)
        self.bytes = Counter("capsync_cloud_ingest_bytes", "Bytes of the files committed, by kind", ["kind"], registry=r)
        self.commit_seconds = Histogram("capsync_cloud_commit_duration_seconds", "From a commit's arrival at the "
                                        "group committer to its durable answer", buckets=COMMIT_BUCKETS, registry=r)
        self.store_errors = Counter("capsync_cloud_store_errors", "Requests that failed because the store "
                                    "(database) or the blobs (file bytes) could not be used, and failed "
                                    "commits", ["store"], registry=r)
        for kind in ("capture", "file"):  # present at 0 from the start, so rate() sees the first file
            for c in (self.files, self.rows, self.bytes):
                c.labels(kind)
        for store in ("store", "blobs", "commit"):
            self.store_errors.labels(store)

    def committed(self, f: CommittedFile, seconds: float) -> None:
        """Count one new committed file that took `seconds` from arrival to durable."""
        kind = f.kind.value
        self.files.labels(kind).inc()
        self.rows.labels(kind).inc(f.records)
        self.bytes.labels(kind).inc(f.size)
        self.commit_seconds.observe(seconds)

    def exposition(self) -> Response:
        """The registry in the Prometheus text format (every worker's values added up, in a worker)."""
        registry = self.registry
        if self._multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self._multiprocess_dir)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def metrics(request: Request) -> Response:
    """`GET /metrics`: the cloud's metrics in the Prometheus text format (no auth; nothing per part)."""
    return request.app.state.cloud.metrics.exposition()


ASGIApp = Callable[[MutableMapping[str, Any], Callable, Callable], Awaitable[None]]


class RequestCounter:
    """ASGI middleware counting every HTTP answer in `capsync_cloud_http_requests_total`, labelled
    with the route template that served it (Starlette leaves its endpoint in the scope)."""

    def __init__(self, app: ASGIApp, metrics: CloudMetrics, routes: list[Any]) -> None:
        self._app = app
        self._metrics = metrics
        self._templates = {id(r.endpoint): r.path for r in routes if hasattr(r, "endpoint")}

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = [0]

        async def sending(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, sending)
        except Exception:
            status[0] = status[0] or 500  # the outermost error handler answers it with a 500
            raise
        finally:
            route = self._templates.get(id(scope.get("endpoint")), "other")
            method = scope.get("method", "")
            self._metrics.requests.labels(route, method if method in _METHODS else "other",
                                          str(status[0]) if status[0] else "none").inc()
