"""The agent's metrics and health endpoint: plain HTTP on the address `capsync run --metrics-address` names.

    GET /metrics     the agent's metrics in the Prometheus text format (actors/agent_metrics.py)
    GET /v1/health   200 {"healthy": true, ...} while the supervision tree is healthy, else 503 with
                     the problems (the same rule as the systemd watchdog pings)

It is off unless asked for. Both answers are read-only and hold no secret, so there is no auth; bind it
to a loopback address (the systemd unit in configs/ uses 127.0.0.1:9791) unless the network is one you
trust. If the address is taken, the endpoint logs it once and keeps retrying; capture is never affected.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from capsync.actors.agent_metrics import agent_registry
from capsync.actors.control import BIND_BACKOFF
from capsync.actors.status_line import status_line
from capsync.runtime.logs import StateChangeLog

if TYPE_CHECKING:
    from capsync.actors.agent import Agent

log = logging.getLogger("capsync.metrics")


def split_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets) as (host, port); ValueError naming the fix otherwise."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not HOST:PORT (say 127.0.0.1:9791, or [::1]:9791)")
    return host, int(port)


class MetricsEndpoint:
    """Serves /metrics and /v1/health for `agent` on host:port (port 0 picks a free one: `bound_port`)."""

    def __init__(self, agent: Agent, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.bound_port: int | None = None
        self._agent = agent
        self._registry = agent_registry(agent)
        self._bind_log = StateChangeLog(log)
        self._app = Starlette(routes=[Route("/metrics", self._metrics, methods=["GET"]),
                                      Route("/v1/health", self._health, methods=["GET"])])

    async def _metrics(self, request: Request) -> Response:
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)

    async def _health(self, request: Request) -> Response:
        stats = self._agent.statistics()
        problems = self._agent.health.problems(stats, trio.current_time())
        return JSONResponse({"healthy": not problems, "problems": problems, "part_id": stats.part_id,
                             "revision": stats.revision, "status": status_line(stats)},
                            status_code=503 if problems else 200)

    def _config(self) -> Config:
        config = Config()
        config.bind = [f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("capsync.metrics.hypercorn")
        config.include_server_header = False
        config.graceful_timeout = 1.0
        return config

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; readiness is signalled at once (binding retries in the background)."""
        task_status.started()
        attempt = 0
        while True:
            try:
                async with trio.open_nursery() as nursery:
                    binds = await nursery.start(self._serve)
                    self.bound_port = int(binds[0].rsplit(":", 1)[1])
                    address = f"{self.host}:{self.bound_port}"
                    self._bind_log.ok("bind", "metrics endpoint listening again", address=address)
                    log.info("metrics endpoint listening", extra={"url": f"http://{address}/metrics"})
                    attempt = 0
            except* OSError as group:
                self.bound_port = None
                self._bind_log.fail("bind", "metrics endpoint cannot listen; retrying",
                                    address=f"{self.host}:{self.port}", error=str(group.exceptions[0]))
                await trio.sleep(BIND_BACKOFF.delay(attempt))
                attempt += 1

    async def _serve(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await hypercorn_serve(self._app, self._config(), task_status=task_status)  # type: ignore[arg-type]
