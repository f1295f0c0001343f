"""The agent's RPC wire format over WebSocket: CBOR messages carrying calls, results and typed errors.

Used by the control endpoint (`capsync status`, `capsync sync`, the data manager's `Sync` and
`DoCommand`) and by parts serving their resources to other parts. One call is one message:

    call    {"id": 7, "method": "status", "params": {...}}
    result  {"id": 7, "result": ...}
    error   {"id": 7, "error": {"type": "UnknownMethod", "message": "..."}}

A client that is not on loopback must present the part secret in the WebSocket handshake:
`Authorization: Bearer <secret>`.

Every message either side receives is decoded by runtime/untrusted_cbor.py (bounded size and
depth, no shared references or other tags), and a call id must be an int of at most 64 bits or a
string of at most :data:`MAX_ID_CHARS` characters. A message that breaks these rules is a
:class:`BadMessage`: a server answers it (with id null when the id was the problem) and closes that
connection with code 1008; nothing else is affected.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import math
import ssl
import urllib.parse
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import cbor2
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, WebSocketConnection, open_websocket_url

from capsync.runtime import untrusted_cbor

#: Largest reply a client accepts (an image from a remote camera fits comfortably).
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
#: Largest call a server accepts: calls are small, and decoding 64 KiB of the worst CBOR takes ~3 ms.
MAX_CALL_BYTES = 64 * 1024
#: Longest string call id accepted (ints must fit in 64 bits).
MAX_ID_CHARS = 64
#: WebSocket close code a server uses after answering a bad message (policy violation).
CLOSE_BAD_MESSAGE = 1008


def is_loopback(host: str) -> bool:
    """True when `host` is a loopback address or `localhost`."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_warned_plain_text: set[tuple[str, str]] = set()


def warn_plain_text_secret(logger: logging.Logger, what: str, url: str, fix: str) -> bool:
    """Warn once per process when `what` would send a secret unencrypted (ws://, http://) to a host
    that is not loopback; `fix` says which setting to change. Returns True if it warned."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
    except ValueError:  # not a URL we can read: the connection will say so
        return False
    if parts.scheme not in ("ws", "http") or is_loopback(host):
        return False
    if (what, url) in _warned_plain_text:
        return False
    _warned_plain_text.add((what, url))
    logger.warning(f"{what}: the secret travels in plain text ({parts.scheme}://) over the network to or from "
                   f"{host}; anyone on the way can read it ({fix})", extra={"url": url})
    return True


class RpcError(Exception):
    """A call failed on the other side (`type` names the kind of error) or could not be made."""

    def __init__(self, type_: str, message: str) -> None:
        super().__init__(f"{type_}: {message}")
        self.type = type_
        self.message = message


class BadMessage(RpcError):
    """A message that breaks the wire rules (not bounded CBOR, not a map, a bad id or field)."""

    def __init__(self, message: str) -> None:
        super().__init__("BadMessage", message)


def encode(message: dict[str, Any]) -> bytes:
    """One wire message."""
    return cbor2.dumps(message)


def encode_reply(reply: dict[str, Any]) -> bytes:
    """A server's reply; a result that cannot be encoded becomes an error reply instead of a crash."""
    try:
        return cbor2.dumps(reply)
    except Exception as exc:
        return cbor2.dumps({"id": reply.get("id"), "error": {
            "type": "InternalError", "message": f"the result could not be encoded: {type(exc).__name__}"}})


def decode(data: bytes | str, *, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """One wire message back, decoded with the bounds of runtime/untrusted_cbor.py; BadMessage if refused."""
    if isinstance(data, str):
        raise BadMessage("expected a binary CBOR message, got text")
    try:
        msg = untrusted_cbor.decode(bytes(data), max_bytes=max_bytes)
    except untrusted_cbor.UntrustedCBORError as exc:
        raise BadMessage(f"refused CBOR: {exc}") from None
    if not isinstance(msg, dict):
        raise BadMessage("a message must be a CBOR map")
    return msg


def call_id(msg: dict[str, Any]) -> int | str:
    """The message's `id`, checked: an int of at most 64 bits or a short string; BadMessage otherwise."""
    value = msg.get("id")
    if type(value) is int and -(2 ** 63) <= value < 2 ** 64:
        return value
    if type(value) is str and len(value) <= MAX_ID_CHARS:
        return value
    raise BadMessage(f"a call id must be an int of at most 64 bits or a string of at most {MAX_ID_CHARS} "
                     f"characters, got {type(value).__name__}")


def reply_outcome(msg: dict[str, Any]) -> tuple[Any, RpcError | None]:
    """A checked reply's (result, None) or (None, the error it carries); BadMessage for a malformed reply."""
    if "error" not in msg:
        return msg.get("result"), None
    err = msg["error"]
    if not (isinstance(err, dict) and type(err.get("type")) is str and type(err.get("message", "")) is str):
        raise BadMessage("an error reply must be {type: str, message: str}")
    return None, RpcError(err["type"][:100], err.get("message", "")[:2000])


def error_reply(cid: int | str | None, exc: RpcError) -> dict[str, Any]:
    """The error reply to call `cid` (None when the call's id could not be read)."""
    return {"id": cid, "error": {"type": exc.type, "message": exc.message}}


def peer_name(request: Any) -> str:
    """`host:port` of a WebSocket request's client, read while the socket is open ("unknown" if it is gone)."""
    try:
        remote = request.remote
    except Exception:  # OSError once the socket is closed; nothing about a peer is worth a crash
        return "unknown"
    address, port = getattr(remote, "address", None), getattr(remote, "port", None)
    return f"{address}:{port}" if address is not None else str(remote)


async def close_bad(ws: WebSocketConnection, exc: RpcError) -> None:
    """Close a connection that sent a bad message, saying why (the reason is cut to the 123 bytes allowed)."""
    reason = exc.message.encode()[:120].decode(errors="ignore")
    await ws.aclose(CLOSE_BAD_MESSAGE, reason)


def auth_headers(secret: str | None) -> list[tuple[bytes, bytes]]:
    """Handshake headers carrying the part secret, if any."""
    return [(b"authorization", f"Bearer {secret}".encode())] if secret else []


def bearer_secret(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The secret a client presented in its handshake headers, if any."""
    for k, v in headers:
        if k.lower() == b"authorization" and v.startswith(b"Bearer "):
            return v[len(b"Bearer "):].decode(errors="replace")
    return None


class RpcClient:
    """Calls methods on one RPC endpoint over an open WebSocket connection, one call at a time."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._lock = trio.Lock()

    async def call(self, method: str, **params: Any) -> Any:
        """Call `method` with `params`; returns the result or raises RpcError."""
        async with self._lock:
            wanted = next(self._ids)
            try:
                await self._ws.send_message(encode({"id": wanted, "method": method, "params": params}))
                reply = decode(await self._ws.get_message())
            except ConnectionClosed as exc:
                raise RpcError("ConnectionClosed", str(exc.reason)) from exc
        result, error = reply_outcome(reply)
        if reply.get("id") is None and error is not None:  # the server could not read our call
            raise error
        if call_id(reply) != wanted:
            raise BadMessage(f"reply for another call, expected {wanted}")
        if error is not None:
            raise error
        return result


def no_handshake(url: str, timeout_s: float) -> str:
    """Why a connection that opened but never completed its WebSocket handshake failed."""
    return f"no WebSocket handshake within {timeout_s:g} s" + (
        " (an endpoint that serves TLS needs a wss:// address)" if url.startswith("ws://") else "")


async def check_tls(url: str, ssl_context: ssl.SSLContext | None, timeout_s: float) -> None:
    """For a wss:// URL, make one TLS handshake first, so an untrusted or wrong certificate is a clear
    RpcError("Unreachable") at once (trio-websocket only times out on one). Nothing for ws://."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "wss":
        return
    ctx = ssl_context or ssl.create_default_context()
    try:
        with trio.fail_after(timeout_s):
            stream = await trio.open_ssl_over_tcp_stream(parts.hostname or "", parts.port or 443, ssl_context=ctx,
                                                         https_compatible=True)
            try:
                await stream.do_handshake()
            finally:
                await trio.aclose_forcefully(stream)
    except trio.BrokenResourceError as exc:
        raise RpcError("Unreachable", f"{url}: TLS handshake failed: {exc.__cause__ or exc}") from None
    except trio.TooSlowError:
        raise RpcError("Unreachable", f"{url}: no TLS handshake within {timeout_s:g} s") from None
    except OSError as exc:
        raise RpcError("Unreachable", f"{url}: {exc.strerror or exc}") from None


@asynccontextmanager
async def connect(address: str, *, secret: str | None = None, path: str = "/control",
                  ssl_context: ssl.SSLContext | None = None, timeout_s: float = 10.0) -> AsyncIterator[RpcClient]:
    """Open an RPC connection to `host:port` (or a ws:// URL); RpcError if it cannot be opened."""
    url = address if address.startswith(("ws://", "wss://")) else f"ws://{address}{path}"
    await check_tls(url, ssl_context, timeout_s)
    opened = False
    # trio-websocket's connect_timeout does not bound a server that accepts and never answers
    handshake = trio.CancelScope(deadline=trio.current_time() + timeout_s)
    try:
        with handshake:
            async with open_websocket_url(url, ssl_context, extra_headers=auth_headers(secret),
                                          max_message_size=MAX_MESSAGE_BYTES, connect_timeout=timeout_s,
                                          disconnect_timeout=2) as ws:
                handshake.deadline = math.inf
                opened = True
                yield RpcClient(ws)
        if handshake.cancelled_caught and not opened:
            raise RpcError("Unreachable", f"{url}: {no_handshake(url, timeout_s)}")
    except ConnectionRejected as exc:
        body = (exc.body or b"").decode(errors="replace")
        raise RpcError("Refused", f"{url}: HTTP {exc.status_code} {body}".rstrip()) from exc
    except (HandshakeError, OSError) as exc:
        cause = exc.__cause__ or exc.__context__ or exc
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        if isinstance(cause, trio.TooSlowError):
            reason = no_handshake(url, timeout_s)
        raise RpcError("Unreachable", f"{url}: {reason}") from exc
