"""The agent's RPC wire format over WebSocket: CBOR messages carrying calls, results and typed errors.

Used by the control endpoint (`capsync status`, `capsync sync`, the data manager's `Sync` and
`DoCommand`) and by parts serving their resources to other parts. One call is one message:

    call    {"id": 7, "method": "status", "params": {...}}
    result  {"id": 7, "result": ...}
    error   {"id": 7, "error": {"type": "UnknownMethod", "message": "..."}}

A client that is not on loopback must present the part secret in the WebSocket handshake:
`Authorization: Bearer <secret>`.
"""

from __future__ import annotations

import itertools
import ssl
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import cbor2
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, WebSocketConnection, open_websocket_url

#: Largest message either side accepts (an image from a remote camera fits comfortably).
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


class RpcError(Exception):
    """A call failed on the other side (`type` names the kind of error) or could not be made."""

    def __init__(self, type_: str, message: str) -> None:
        super().__init__(f"{type_}: {message}")
        self.type = type_
        self.message = message


def encode(message: dict[str, Any]) -> bytes:
    """One wire message."""
    return cbor2.dumps(message)


def decode(data: bytes | str) -> dict[str, Any]:
    """One wire message back; RpcError("BadMessage") for anything that is not a CBOR map."""
    if isinstance(data, str):
        raise RpcError("BadMessage", "expected a binary CBOR message, got text")
    try:
        msg = cbor2.loads(data)
    except Exception as exc:
        raise RpcError("BadMessage", f"not CBOR: {exc}") from exc
    if not isinstance(msg, dict):
        raise RpcError("BadMessage", "a message must be a CBOR map")
    return msg


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
            call_id = next(self._ids)
            try:
                await self._ws.send_message(encode({"id": call_id, "method": method, "params": params}))
                reply = decode(await self._ws.get_message())
            except ConnectionClosed as exc:
                raise RpcError("ConnectionClosed", str(exc.reason)) from exc
        if reply.get("id") != call_id:
            raise RpcError("BadMessage", f"reply for call {reply.get('id')!r}, expected {call_id}")
        if "error" in reply:
            err = reply["error"] or {}
            raise RpcError(str(err.get("type", "Error")), str(err.get("message", "")))
        return reply.get("result")


@asynccontextmanager
async def connect(address: str, *, secret: str | None = None, path: str = "/control",
                  ssl_context: ssl.SSLContext | None = None, timeout_s: float = 10.0) -> AsyncIterator[RpcClient]:
    """Open an RPC connection to `host:port` (or a ws:// URL); RpcError if it cannot be opened."""
    url = address if address.startswith(("ws://", "wss://")) else f"ws://{address}{path}"
    try:
        async with open_websocket_url(url, ssl_context, extra_headers=auth_headers(secret),
                                      max_message_size=MAX_MESSAGE_BYTES, connect_timeout=timeout_s,
                                      disconnect_timeout=2) as ws:
            yield RpcClient(ws)
    except ConnectionRejected as exc:
        body = (exc.body or b"").decode(errors="replace")
        raise RpcError("Refused", f"{url}: HTTP {exc.status_code} {body}".rstrip()) from exc
    except (HandshakeError, OSError) as exc:
        cause = exc.__cause__ or exc.__context__ or exc
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        raise RpcError("Unreachable", f"{url}: {reason}") from exc
