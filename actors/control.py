"""The control endpoint: a WebSocket RPC server on `network.bind_address` for status and sync.

Methods: `status` (the agent's statistics as JSON-like data), `sync` (run a sync pass now and
return what it did), `Sync` and `DoCommand` (the data manager service's documented API). Clients
on loopback need nothing more; when the endpoint is bound to another address, every client must
present the part secret (`Authorization: Bearer <secret>`), loopback clients included.
A request with an `Origin` header comes from a web page in a browser: it is refused with HTTP 403
(on every path) unless `network.allowed_origins` lists that origin, so a page cannot drive the
agent through the user's browser. Local tools send no `Origin` and are not affected.
With `network.tls_certificate_file` and `network.tls_key_file` the endpoint serves `wss://` (TLS) on
the same address; a certificate that cannot be loaded is logged and retried like a taken address.
Without them, an endpoint bound to a non-loopback address warns once that secrets arrive in plain text.
If the address is taken, the endpoint logs it once and keeps retrying; capture is never affected.

Whatever one client does stays in its connection: a message that is not bounded CBOR with a
valid call id is answered with `BadMessage` and that connection is closed (runtime/rpc.py), calls
over :data:`MAX_CALL_BYTES` are closed with 1009, and any other failure of a connection is logged
(rate-limited) and ends only that connection, never the listener.
"""

from __future__ import annotations

import hmac
import logging
import ssl
import time
from typing import Any, Awaitable, Callable, Iterable

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from capsync.runtime.backoff import Backoff
from capsync.runtime.logs import StateChangeLog
from capsync.runtime.rpc import (MAX_CALL_BYTES, BadMessage, RpcError, bearer_secret, call_id, close_bad, decode,
                                 encode_reply, error_reply, is_loopback, peer_name, warn_plain_text_secret)

log = logging.getLogger("capsync.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
#: Serves one whole WebSocket request on its own path (e.g. `/resources`), authentication included.
Route = Callable[[WebSocketRequest], Awaitable[None]]
BIND_BACKOFF = Backoff(initial=1.0, factor=2.0, cap=30.0, jitter=0.1)
#: At most one log line per this many seconds about clients' bad messages or broken connections.
CLIENT_ERROR_LOG_INTERVAL_S = 10.0


class RateLimitedLog:
    """Logs a warning at most once per `interval_s`, with how many were left out since the last one."""

    def __init__(self, logger: logging.Logger, interval_s: float = CLIENT_ERROR_LOG_INTERVAL_S) -> None:
        self._logger, self._interval_s = logger, interval_s
        self._last = -float("inf")
        self._skipped = 0

    def warning(self, message: str, **fields: Any) -> None:
        """Log `message` unless one was logged less than `interval_s` ago (then count it)."""
        now = time.monotonic()
        if now - self._last < self._interval_s:
            self._skipped += 1
            return
        if self._skipped:
            fields["left_out"] = self._skipped
        self._last, self._skipped = now, 0
        self._logger.warning(message, extra=fields)


def request_origin(request: WebSocketRequest) -> str | None:
    """The `Origin` header of a handshake (browsers always send it; local tools do not)."""
    for k, v in request.headers:
        if k.lower() == b"origin":
            return v.decode(errors="replace")
    return None


class ControlEndpoint:
    """Serves `handlers` (method name -> async fn(params) -> result) over WebSocket RPC; requests
    for a path in `routes` go to that route instead (it does its own authentication)."""

    def __init__(self, host: str, port: int, handlers: dict[str, Handler], *, secret: str = "",
                 routes: dict[str, Route] | None = None, allowed_origins: Iterable[str] = (),
                 tls_certificate_file: str = "", tls_key_file: str = "") -> None:
        self.host, self.port = host, port
        self._handlers = handlers
        self._routes = dict(routes or {})
        self._secret = secret
        self._require_secret = not is_loopback(host)
        self._tls = (tls_certificate_file, tls_key_file) if tls_certificate_file else None
        self._allowed_origins = frozenset(o.lower().rstrip("/") for o in allowed_origins)
        self.refused_origins = 0
        self.bound_port: int | None = None
        self._bind_log = StateChangeLog(log)
        self._client_log = RateLimitedLog(log)
        self._origin_log = RateLimitedLog(log)
        self.calls = 0
        self.bad_messages = 0
        self.connection_errors = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; readiness is signalled at once (binding retries in the background)."""
        if self._require_secret and not self._secret:
            log.error("control endpoint not started: it binds to a non-loopback address and the part has no "
                      "cloud.secret to require from clients", extra={"address": f"{self.host}:{self.port}"})
            task_status.started()
            await trio.sleep_forever()
        task_status.started()
        if self._require_secret and self._tls is None:
            host = f"[{self.host}]" if ":" in self.host else self.host
            warn_plain_text_secret(log, "control endpoint", f"ws://{host}:{self.port}",
                                   "set network.tls_certificate_file and network.tls_key_file to serve wss://")
        attempt = 0
        while True:
            try:
                async with trio.open_nursery() as nursery:
                    server = await nursery.start(self._serve)
                    self.bound_port = server.port
                    self._bind_log.ok("bind", "control endpoint listening again", address=f"{self.host}:{server.port}")
                    log.info("control endpoint listening", extra={"address": f"{self.host}:{server.port}"})
                    attempt = 0
            except* OSError as group:  # the address is taken or not ours: retry, capture goes on
                self._bind_log.fail("bind", "control endpoint cannot listen; retrying",
                                    address=f"{self.host}:{self.port}", error=str(group.exceptions[0]))
                await trio.sleep(BIND_BACKOFF.delay(attempt))
                attempt += 1

    @property
    def scheme(self) -> str:
        """`wss` when the endpoint serves TLS, else `ws`."""
        return "ws" if self._tls is None else "wss"

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self._tls is None:
            return None
        cert, key = self._tls
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:  # OSError: the bind retry loop logs it and tries again
            raise OSError(f"network.tls_certificate_file {cert!r} / network.tls_key_file {key!r} "
                          f"cannot be loaded: {exc}") from None
        return ctx

    async def _serve(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_websocket(self._handle, self.host, self.port, self._ssl_context(), max_message_size=MAX_CALL_BYTES,
                              connect_timeout=10, disconnect_timeout=2, task_status=task_status)

    def _authorized(self, request: WebSocketRequest) -> bool:
        if not self._require_secret:
            return True
        given = bearer_secret(list(request.headers))
        return given is not None and hmac.compare_digest(given.encode(), self._secret.encode())

    async def _handle(self, request: WebSocketRequest) -> None:
        peer = peer_name(request)  # read once: the socket may be gone by the time we log
        try:
            origin = request_origin(request)
            if origin is not None and origin.lower().rstrip("/") not in self._allowed_origins:
                self.refused_origins += 1
                self._origin_log.warning("browser origin refused", client=peer, origin=origin[:200])
                await request.reject(403, body=f"browser origin {origin[:200]!r} is not allowed: add it to "
                                     "network.allowed_origins to let its pages use this endpoint".encode())
                return
            route = self._routes.get(request.path)
            if route is not None:
                await route(request)
                return
            if not self._authorized(request):
                log.warning("control client refused: missing or wrong part secret", extra={"client": peer})
                await request.reject(401, body=b"the part secret is required (Authorization: Bearer <secret>)")
                return
            ws = await request.accept()
            try:
                await self._serve_calls(ws, peer)
            except ConnectionClosed:
                pass
        except Exception as exc:  # one client's broken connection must not end the listener
            self.connection_errors += 1
            self._client_log.warning("control connection failed", client=peer, path=request.path,
                                     error=f"{type(exc).__name__}: {exc}")

    async def _serve_calls(self, ws: WebSocketConnection, peer: str) -> None:
        while True:
            reply, bad = await self._dispatch(await ws.get_message())
            await ws.send_message(encode_reply(reply))
            if bad is not None:
                self.bad_messages += 1
                self._client_log.warning("control client sent a bad message; connection closed",
                                         client=peer, error=bad.message)
                await close_bad(ws, bad)
                return

    async def _dispatch(self, data: bytes | str) -> tuple[dict[str, Any], BadMessage | None]:
        """The reply to one message, and the BadMessage that must close the connection, if any."""
        cid = None
        try:
            msg = decode(data, max_bytes=MAX_CALL_BYTES)
            cid = call_id(msg)
            method, params = msg.get("method"), msg.get("params") or {}
            if not isinstance(params, dict):
                raise BadMessage("params must be a map")
            handler = self._handlers.get(method) if isinstance(method, str) else None
            if handler is None:
                shown = repr(method)[:80]
                raise RpcError("UnknownMethod", f"no method {shown}; available: {', '.join(sorted(self._handlers))}")
            self.calls += 1
            return {"id": cid, "result": await handler(params)}, None
        except BadMessage as exc:
            return error_reply(cid, exc), exc
        except RpcError as exc:
            return error_reply(cid, exc), None
        except Exception as exc:  # a failing handler answers with an error; the endpoint stays up
            log.exception("control call failed", extra={"call_id": cid})
            return {"id": cid, "error": {"type": type(exc).__name__, "message": str(exc)}}, None
