"""Capturing from remote parts: one connection per remote, and proxy resources that call through it.

The main part lists each remote in `remotes[]` with its `address` (the remote part's
`network.bind_address`) and `secret` (the remote part's `cloud.secret`). For every remote a
:class:`RemoteConnection` keeps one WebSocket open to `ws://<address>/resources` and reconnects
with backoff when it drops. Calls are multiplexed by id, so a slow camera image never holds up a
board reading on the same connection.

A :class:`RemoteResource` is what a collector captures from for a remote capture method: it
forwards `capture(method, params)` as a `resource.capture` call and turns the answer back into a
readings dict or :class:`Binary`. While the remote is down, or refuses our secret, a call fails at
once with a :class:`RemotePartError` that says why, so the collector counts a failed capture and
keeps its schedule; it captures again as soon as the connection is back.

A `wss://` address is reached over TLS, trusting the system's CAs or `remotes[].tls_ca_file`;
the TLS handshake is made first so a certificate problem is a clear `last_error` at once. A secret
sent to a non-loopback `ws://` address is warned about once.

Wire (see runtime/rpc.py for the envelope): `resource.capture` takes
`{"resource": name, "type": type, "method": method, "params": {...}}` and answers
`{"readings": {...}}` for tabular methods or `{"binary": [{"data": bytes, "mime_type": str,
"metadata": map|null}], "many": bool}` for binary ones (`many` for GetImages' list).
`resource.list` answers `[{"type", "name", "model"}]`.

A reply is decoded with the bounds of runtime/rpc.py and every field is checked before use (the
id, the error's type and message, the result's shape). A reply that breaks the rules drops that
link: its calls fail, the reason is the remote's `last_error` in `capsync status`
(`bad_replies` counts them), and the connection is made again with backoff. Nothing a remote part
sends can end the agent.
"""

from __future__ import annotations

import itertools
import logging
import math
import ssl
import time
from dataclasses import dataclass
from typing import Any

import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, WebSocketConnection, open_websocket_url

from capsync.runtime.backoff import Backoff
from capsync.runtime.config_build import RemoteConfig, ResourceRef
from capsync.runtime.resources.resource import MAX_AGE_S, Binary, CaptureResult, NoCapture, ResourceError
from capsync.runtime.rpc import (MAX_MESSAGE_BYTES, BadMessage, RpcError, auth_headers, call_id, decode, encode,
                                 check_tls, no_handshake, reply_outcome, warn_plain_text_secret)

log = logging.getLogger("capsync.remote")

#: The WebSocket path, on a part's control address, where it serves its resources.
RESOURCES_PATH = "/resources"
#: The port assumed when a remote's address has none (capsync's default bind port).
DEFAULT_PORT = 8791
#: Backoff between connection attempts while the remote is unreachable or drops the connection.
RECONNECT_BACKOFF = Backoff(initial=0.25, factor=2.0, cap=2.0, jitter=0.1)
#: Backoff while the remote refuses our secret (a config fix or a secret change is needed).
REFUSED_BACKOFF = Backoff(initial=1.0, factor=2.0, cap=15.0, jitter=0.1)


class RemotePartError(ResourceError):
    """A call to a remote part failed; `kind` says how (Unreachable, Refused, UnknownResource, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# -- the wire form of capture results ---------------------------------------------------------


def encode_result(result: CaptureResult) -> dict[str, Any]:
    """A capture result as a wire map (bytes stay bytes: CBOR carries them natively)."""
    if isinstance(result, dict):
        return {"readings": result}
    many = isinstance(result, list)
    items = result if many else [result]
    if not all(isinstance(b, Binary) for b in items):
        raise ResourceError(f"resource returned {type(result).__name__}, expected a dict, Binary or list of Binary")
    return {"binary": [{"data": b.data, "mime_type": b.mime_type, "metadata": b.metadata,
                        **({"age_s": b.age_s} if b.age_s else {})} for b in items],
            "many": many}


def decode_result(wire: Any) -> CaptureResult:
    """The capture result a wire map carries; RemotePartError("BadMessage") for anything else."""
    if isinstance(wire, dict) and isinstance(wire.get("readings"), dict):
        return wire["readings"]
    if isinstance(wire, dict) and isinstance(wire.get("binary"), list):
        out = []
        for item in wire["binary"]:
            if not (isinstance(item, dict) and isinstance(item.get("data"), bytes)):
                raise RemotePartError("BadMessage", "binary result item without bytes")
            mime, meta = item.get("mime_type") or "", item.get("metadata")
            if not isinstance(mime, str) or len(mime) > 200:
                raise RemotePartError("BadMessage", "binary result item with a mime_type that is not a short string")
            age = item.get("age_s", 0.0)
            if isinstance(age, bool) or not isinstance(age, int | float) or not 0.0 <= age <= MAX_AGE_S:
                raise RemotePartError("BadMessage", f"binary result item with an age_s that is not 0..{MAX_AGE_S:g} s")
            out.append(Binary(item["data"], mime, meta if isinstance(meta, dict) else None, float(age)))
        return out if wire.get("many") else (out[0] if out else [])
    raise RemotePartError("BadMessage", f"unexpected capture result {type(wire).__name__}")


def resources_url(address: str) -> str:
    """`host:port`, `host` (default port) or a ws:// / wss:// URL -> the URL of the resources endpoint."""
    if address.startswith(("ws://", "wss://")):
        scheme, _, rest = address.partition("://")
        return address if "/" in rest else f"{address}{RESOURCES_PATH}"
    _, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        address = f"{address}:{DEFAULT_PORT}"
    return f"ws://{address}{RESOURCES_PATH}"


# -- one connection per remote ----------------------------------------------------------------


@dataclass(frozen=True)
class RemoteStats:
    """A snapshot of one remote part's connection, for `capsync status` and tests."""

    name: str
    address: str
    state: str  # connecting, connected, unreachable, refused, disconnected
    last_error: str | None
    connects: int
    disconnects: int
    calls: int
    failed_calls: int
    state_since_ns: int
    bad_replies: int = 0  # replies that broke the wire rules (each one dropped the link)


class _Pending:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reply: dict[str, Any] | None = None


class RemoteConnection:
    """Keeps one multiplexed RPC connection to a remote part open; `call` goes through it."""

    def __init__(self, config: RemoteConfig, *, connect_timeout_s: float = 5.0,
                 ping_interval_s: float = 2.0, ping_timeout_s: float = 5.0) -> None:
        self.name, self.address, self.secret = config.name, config.address, config.secret
        self.tls_ca_file = config.tls_ca_file
        self._warn_if_plain_text()
        self.connect_timeout_s = connect_timeout_s
        self.ping_interval_s, self.ping_timeout_s = ping_interval_s, ping_timeout_s
        self._ws: WebSocketConnection | None = None
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._state, self._error, self._since_ns = "connecting", None, time.time_ns()
        self._connects = self._disconnects = self._calls = self._failed = self._bad = 0
        self._changed = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._settled = trio.Event()  # set once the first connection attempt has an outcome

    def reconfigure(self, config: RemoteConfig) -> None:
        """Take a new address or secret: the current connection is dropped and made again at once."""
        if (config.address, config.secret, config.tls_ca_file) == (self.address, self.secret, self.tls_ca_file):
            return
        self.address, self.secret, self.tls_ca_file = config.address, config.secret, config.tls_ca_file
        self._warn_if_plain_text()
        self._changed.set()
        if self._scope is not None:
            self._scope.cancel()

    def _warn_if_plain_text(self) -> None:
        if self.secret:
            warn_plain_text_secret(log, f"remote part {self.name!r}", resources_url(self.address),
                                   "give remotes[].address as wss://host:port with TLS on the remote part")

    def statistics(self) -> RemoteStats:
        """Counters and the state of the link."""
        return RemoteStats(self.name, self.address, self._state, self._error, self._connects, self._disconnects,
                           self._calls, self._failed, self._since_ns, self._bad)

    # -- the link ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve calls until the link drops, reconnect with backoff; until cancelled."""
        attempt = 0
        while True:
            self._changed = trio.Event()
            with trio.CancelScope() as scope:
                self._scope = scope
                try:
                    await self._session()
                    attempt = 0  # it was up: start the backoff over
                except RpcError as exc:
                    self._set_state("refused" if exc.type == "Refused" else "unreachable", exc.message)
                except Exception as exc:  # a bug in this link must end the link, not the agent
                    log.exception("remote link failed", extra={"remote": self.name})
                    self._set_state("disconnected", f"{type(exc).__name__}: {exc}")
            self._scope = None
            self._settled.set()
            if scope.cancelled_caught:  # reconfigured: connect to the new address now
                attempt = 0
                continue
            policy = REFUSED_BACKOFF if self._state == "refused" else RECONNECT_BACKOFF
            with trio.move_on_after(policy.delay(attempt)):
                await self._changed.wait()
            attempt += 1

    async def _session(self) -> None:
        url = resources_url(self.address)
        connected = False
        try:
            ctx = self._ssl_context(url)
            await check_tls(url, ctx, self.connect_timeout_s)
            # trio-websocket's connect_timeout does not bound a peer that accepts and never answers
            handshake = trio.CancelScope(deadline=trio.current_time() + self.connect_timeout_s)
            with handshake:
                async with open_websocket_url(url, ctx, extra_headers=auth_headers(self.secret or None),
                                              max_message_size=MAX_MESSAGE_BYTES,
                                              connect_timeout=self.connect_timeout_s, disconnect_timeout=1) as ws:
                    handshake.deadline = math.inf
                    connected = True
                    self._ws = ws
                    self._connects += 1
                    self._set_state("connected", None)
                    self._settled.set()
                    reason = "the remote part stopped answering pings"  # unless the reader says otherwise
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._keepalive, ws, nursery.cancel_scope)
                            reason = await self._read(ws)
                            nursery.cancel_scope.cancel()
                    finally:
                        self._drop_link()
                    self._set_state("disconnected", reason)
            if handshake.cancelled_caught and not connected:
                raise RpcError("Unreachable", no_handshake(url, self.connect_timeout_s))
        except ConnectionRejected as exc:
            body = (exc.body or b"").decode(errors="replace").strip()
            raise RpcError("Refused", f"HTTP {exc.status_code}: {body or 'rejected'}") from exc
        except (HandshakeError, OSError) as exc:
            if connected:  # the link was up and closing it failed: just a disconnect
                self._set_state("disconnected", "connection lost")
                return
            cause = exc.__cause__ or exc.__context__ or exc
            reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
            raise RpcError("Unreachable", reason) from exc

    def _ssl_context(self, url: str) -> ssl.SSLContext | None:
        if not url.startswith("wss://"):
            return None
        try:
            return ssl.create_default_context(cafile=self.tls_ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise RpcError("Unreachable", f"remotes[].tls_ca_file {self.tls_ca_file!r} cannot be loaded: {exc}") from None

    async def _read(self, ws: WebSocketConnection) -> str:
        """Hand each reply to its waiting call; returns why the connection ended."""
        try:
            while True:
                data = await ws.get_message()
                try:
                    msg = decode(data, max_bytes=MAX_MESSAGE_BYTES)
                    cid = call_id(msg)
                    reply_outcome(msg)  # the error, if any, is well formed
                except BadMessage as exc:
                    self._bad += 1
                    log.warning("remote part sent a bad reply; dropping the link",
                                extra={"remote": self.name, "error": exc.message})
                    return f"the remote part sent a bad reply: {exc.message}"
                pending = self._pending.pop(cid, None) if type(cid) is int else None
                if pending is not None:  # replies to calls that gave up waiting are dropped
                    pending.reply = msg
                    pending.event.set()
        except ConnectionClosed as exc:
            why = exc.reason
            if why is None:
                return "the remote part closed the connection"
            return f"connection closed ({why.code}{' ' + why.reason if why.reason else ''})"

    async def _keepalive(self, ws: WebSocketConnection, scope: trio.CancelScope) -> None:
        """Ping now and then; a remote that stops answering (a partition, no FIN) ends the session."""
        while True:
            await trio.sleep(self.ping_interval_s)
            with trio.move_on_after(self.ping_timeout_s) as timeout:
                try:
                    await ws.ping()
                except ConnectionClosed:
                    return
            if timeout.cancelled_caught:
                log.warning("remote part stopped answering pings; reconnecting", extra={"remote": self.name})
                scope.cancel()
                return

    def _drop_link(self) -> None:
        self._ws = None
        self._disconnects += 1
        pending, self._pending = self._pending, {}
        for p in pending.values():
            p.event.set()  # reply None: the call fails with "connection lost"

    def _set_state(self, state: str, error: str | None) -> None:
        """Record the link state; log only when it changes (retries of the same failure stay quiet)."""
        if state == self._state:
            self._error = error
            return
        previous, self._state, self._error, self._since_ns = self._state, state, error, time.time_ns()
        fields = {"remote": self.name, "address": self.address, "previous": previous}
        if state == "connected":
            log.info("remote part connected", extra=fields)
        elif state == "refused":
            log.error("remote part refused this part's secret; captures from it fail until remotes[].secret "
                      "matches the remote part's cloud.secret", extra={**fields, "error": error})
        else:
            log.warning(f"remote part {state}; reconnecting with backoff", extra={**fields, "error": error})

    # -- calls ---------------------------------------------------------------------------

    def _down_error(self) -> RemotePartError:
        where = f"remote part {self.name!r} at {self.address}"
        if self._state == "refused":
            return RemotePartError("Refused", f"{where} refused this part's secret ({self._error}); "
                                   "remotes[].secret must be the remote part's cloud.secret")
        if self._state == "connecting":
            return RemotePartError("NotConnected", f"{where} is not connected yet")
        return RemotePartError("Unreachable", f"{where} is {self._state}: {self._error}")

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        """Call `method` on the remote part; its result, or RemotePartError (at once while the link is down)."""
        self._calls += 1
        if self._ws is None and not self._settled.is_set():  # just started: wait for the first attempt
            with trio.move_on_after(self.connect_timeout_s):
                await self._settled.wait()
        ws = self._ws
        if ws is None:
            self._failed += 1
            raise self._down_error()
        cid = next(self._ids)
        pending = self._pending[cid] = _Pending()
        try:
            await ws.send_message(encode({"id": cid, "method": method, "params": params}))
            await pending.event.wait()
        except ConnectionClosed:
            pass
        finally:
            self._pending.pop(cid, None)
            if pending.reply is None or "error" in pending.reply:
                self._failed += 1
        reply = pending.reply
        if reply is None:
            raise RemotePartError("ConnectionLost", f"remote part {self.name!r}: connection lost during the call")
        result, error = reply_outcome(reply)  # checked by the reader
        if error is not None:
            raise RemotePartError(error.type, f"remote part {self.name!r}: {error.type}: {error.message}")
        return result


# -- all remotes of a part, and the proxies ---------------------------------------------------


class RemoteResource:
    """A resource on a remote part, as a collector sees it: `capture` calls through the remote's connection."""

    model = "remote"

    def __init__(self, parts: RemoteParts, ref: ResourceRef) -> None:
        self.type, self.name, self.remote = ref.type, ref.name, ref.remote or ""
        self._parts = parts

    async def capture(self, method: str, params: dict) -> CaptureResult:
        """Capture `method` on the remote resource; RemotePartError when the remote cannot answer."""
        conn = self._parts.connection(self.remote)
        try:
            wire = await conn.call("resource.capture", {"resource": self.name, "type": self.type,
                                                        "method": method, "params": dict(params)})
        except RemotePartError as exc:
            if exc.kind == "NoCapture":  # the remote resource had nothing to capture this time
                raise NoCapture() from None
            raise
        return decode_result(wire)

    async def do_command(self, command: dict) -> CaptureResult:
        """DoCommand capture on the remote resource (the remote part calls its `do_command`)."""
        return await self.capture("DoCommand", command)

    async def close(self) -> None:
        """Nothing to close: the connection belongs to the remote, not to one resource."""


class RemoteParts:
    """The connections to every configured remote part; run it as one actor of the agent's tree."""

    def __init__(self, remotes: list[RemoteConfig]) -> None:
        self._configs = {r.name: r for r in remotes}
        self._conns = {r.name: RemoteConnection(r) for r in remotes}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep every remote's connection up until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                for cfg in self._configs.values():
                    self._start(cfg)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None
                self._scopes.clear()

    def _start(self, cfg: RemoteConfig) -> None:
        conn = self._conns.get(cfg.name)
        if conn is None:
            conn = self._conns[cfg.name] = RemoteConnection(cfg)
        if self._nursery is not None and cfg.name not in self._scopes:
            scope = self._scopes[cfg.name] = trio.CancelScope()
            self._nursery.start_soon(self._run_one, conn, scope)

    @staticmethod
    async def _run_one(conn: RemoteConnection, scope: trio.CancelScope) -> None:
        with scope:
            await conn.run()

    def reconfigure(self, remotes: list[RemoteConfig]) -> None:
        """Follow a new config: drop removed remotes, start new ones, re-point changed ones."""
        new = {r.name: r for r in remotes}
        for name in [n for n in self._configs if n not in new]:
            scope = self._scopes.pop(name, None)
            if scope is not None:
                scope.cancel()
            self._conns.pop(name, None)
        for name, cfg in new.items():
            if name in self._conns:
                self._conns[name].reconfigure(cfg)
            else:
                self._start(cfg)
        self._configs = new

    def connection(self, name: str) -> RemoteConnection:
        """The connection to remote `name`; RemotePartError("NotConfigured") when there is none."""
        conn = self._conns.get(name)
        if conn is None:
            raise RemotePartError("NotConfigured", f"no remote part named {name!r} in remotes[]")
        return conn

    def proxy(self, ref: ResourceRef) -> RemoteResource:
        """The stand-in a collector captures from for a resource of a remote part."""
        return RemoteResource(self, ref)

    def statistics(self) -> tuple[RemoteStats, ...]:
        """One snapshot per configured remote, in config order."""
        return tuple(self._conns[n].statistics() for n in self._configs if n in self._conns)
