"""Running the cloud: Hypercorn's Trio worker serving the app, with readiness and graceful shutdown.

`serve` binds (port 0 picks a free port), reports the bound port through `task_status`, runs a
retention sweep at start and then once a day just after each UTC midnight (the boundary that
`retention_policy.days` counts in), and on cancellation stops accepting, lets requests in flight
finish for up to `graceful_timeout_s`, then closes the store.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from capsync.cloud.app import apply_retention, create_app
from capsync.cloud.blobs import Blobs
from capsync.cloud.limits import UploadLimits
from capsync.cloud.http import Cloud
from capsync.cloud.store import Store

log = logging.getLogger("capsync.cloud.server")

#: Seconds after UTC midnight at which the daily retention sweep runs.
RETENTION_AFTER_MIDNIGHT_S = 5.0
_DAY_S = 86_400.0
#: A connection that sends nothing for this many seconds (mid-headers or mid-body) is closed.
READ_TIMEOUT_S = 30


def seconds_to_next_sweep(now_s: float) -> float:
    """Seconds from the wall-clock time `now_s` to the next daily sweep (just after UTC midnight)."""
    return _DAY_S - (now_s % _DAY_S) + RETENTION_AFTER_MIDNIGHT_S


def _config(host: str, port: int, tls_cert: Path | None, tls_key: Path | None, graceful_timeout_s: float,
            listen_fd: int | None = None) -> Config:
    config = Config()
    if listen_fd is not None:
        config.bind = [f"fd://{listen_fd}"]
    else:
        config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("TLS needs both a certificate and a key")
    if tls_cert is not None and tls_key is not None:
        config.certfile, config.keyfile = str(tls_cert), str(tls_key)
    config.graceful_timeout = graceful_timeout_s
    config.read_timeout = READ_TIMEOUT_S
    config.accesslog = None
    config.errorlog = logging.getLogger("capsync.cloud.hypercorn")
    config.include_server_header = False
    return config


async def _retention_loop(cloud: Cloud, interval_s: float | None) -> None:
    while True:
        try:
            await apply_retention(cloud)
        except Exception:
            log.exception("retention sweep failed")
        await trio.sleep(seconds_to_next_sweep(time.time()) if interval_s is None else interval_s)


async def serve(
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8787,
    *,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    store: Store | None = None,
    graceful_timeout_s: float = 5.0,
    retention_interval_s: float | None = None,
    limits: UploadLimits | None = None,
    blobs: Blobs | None = None,
    trusted_proxies: frozenset[str] = frozenset(),
    listen_fd: int | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the cloud over `data_dir` on host:port until cancelled; `task_status.started(port)`.

    `port=0` binds a free port; the port actually bound is what `started` reports. With
    `tls_cert` and `tls_key` the server speaks HTTPS. Cancellation is a graceful shutdown:
    in-flight requests get `graceful_timeout_s` to finish, then a store serve() opened is closed.
    `limits` are the per-part upload limits (capsync.cloud.limits); `blobs` the file bytes (default:
    LocalBlobs in `data_dir`); `trusted_proxies` the reverse proxies whose X-Forwarded-For is believed;
    `listen_fd` an inherited listening socket to accept from instead of binding host:port (a worker
    of `serve --workers`, cloud/workers.py). Retention, and with it the
    expiry of abandoned uploads, runs at start and daily after UTC midnight; `retention_interval_s` sweeps every
    that many seconds instead (`math.inf`: only on demand, through `capsync.cloud.app.apply_retention`).
    """
    owns_store = store is None
    app = create_app(Path(data_dir), store, limits=limits, blobs=blobs, trusted_proxies=trusted_proxies)
    cloud = app.state.cloud
    config = _config(host, port, tls_cert, tls_key, graceful_timeout_s, listen_fd)
    shutdown = trio.Event()
    server_scope = trio.CancelScope(shield=True)

    async def run_server(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        # Shielded so that cancelling serve() becomes hypercorn's own graceful shutdown, not an abort.
        with server_scope:
            await hypercorn_serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)

    try:
        async with trio.open_nursery() as nursery:
            try:
                binds = await nursery.start(run_server)
                bound = urlsplit(binds[0]).port
                assert bound is not None
                log.info("cloud listening", extra={"url": binds[0], "data_dir": str(data_dir),
                                                   "blobs": cloud.blobs.describe()})
                if retention_interval_s is None or math.isfinite(retention_interval_s):
                    nursery.start_soon(_retention_loop, cloud, retention_interval_s)
                task_status.started(bound)
                await trio.sleep_forever()
            finally:
                shutdown.set()
                server_scope.deadline = trio.current_time() + graceful_timeout_s + 2.0
                nursery.cancel_scope.cancel()
    finally:
        if owns_store:
            with trio.CancelScope(shield=True):
                await cloud.store.aclose()
        log.info("cloud stopped", extra={"data_dir": str(data_dir)})
