"""Serving this part's resources to other parts: the `/resources` WebSocket path of the control endpoint.

Another part (the main part, with this one in its `remotes[]`) connects to
`ws://<network.bind_address>/resources` and calls `resource.capture` with
`{"resource", "type", "method", "params"}`; the answer is the capture result in the wire form of
runtime/remote.py (bytes travel as CBOR bytes) or a typed error: `UnknownResource`,
`UnknownMethod`, `WrongType`, `ResourceError`, `Timeout`, `BadMessage`. `resource.list` names what
is served.

The part secret (`cloud.secret`) is always required here, on loopback too: a client presents it
as `Authorization: Bearer <secret>` or is refused with HTTP 401 (403 when this part has no secret,
so it serves nothing). Refusals are logged once per client host and state change. Calls on one
connection run concurrently, so a slow resource never holds up another.

A message that is not bounded CBOR with a valid call id (runtime/rpc.py) is answered with
`BadMessage` and closes that connection; nothing a client does ends another connection.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from capsync.runtime.logs import StateChangeLog
from capsync.runtime.remote import encode_result
from capsync.runtime.resources.methods import METHODS, method_spec, methods_of
from capsync.runtime.resources.registry import ResourceLookup
from capsync.runtime.resources.resource import NoCapture, ResourceError, capture_call
from capsync.runtime.rpc import (MAX_CALL_BYTES, BadMessage, RpcError, bearer_secret, call_id, close_bad, decode,
                                 encode_reply, error_reply, peer_name)

log = logging.getLogger("capsync.resource_server")

#: At most this many calls of one client run at once; further messages wait to be read.
MAX_CONCURRENT_CALLS = 32


class _BadCall(Exception):
    """A message that must close its connection: the id to answer (None if unreadable) and why."""

    def __init__(self, cid: int | str | None, error: BadMessage) -> None:
        super().__init__(error.message)
        self.cid, self.error = cid, error


@dataclass(frozen=True)
class ResourceServerStats:
    """What the resource server has done since it started."""

    clients: int  # connected now
    accepted: int
    refused: int
    calls: int
    errors: int


class ResourceServer:
    """Answers resource calls from other parts with the resources `lookup` holds (the agent's registry)."""

    def __init__(self, lookup: ResourceLookup, secret: str, *, call_timeout_s: float = 30.0) -> None:
        self._lookup = lookup
        self._secret = secret
        self.call_timeout_s = call_timeout_s
        self._auth_log = StateChangeLog(log)
        self._bad_log = StateChangeLog(log)
        self._clients = self._accepted = self._refused = self._calls = self._errors = 0

    def statistics(self) -> ResourceServerStats:
        """Counters since start."""
        return ResourceServerStats(self._clients, self._accepted, self._refused, self._calls, self._errors)

    async def handle(self, request: WebSocketRequest) -> None:
        """Serve one client connection (the control endpoint routes `/resources` requests here)."""
        peer = peer_name(request)  # read once, while the socket is open (it may be gone when we log)
        host = peer.rpartition(":")[0] or peer
        if not self._secret:
            self._refuse_log(host, "resource client refused: this part has no cloud.secret, so it serves no resources")
            await request.reject(403, body=b"this part serves no resources: it has no cloud.secret")
            return
        given = bearer_secret(list(request.headers))
        if given is None or not hmac.compare_digest(given.encode(), self._secret.encode()):
            self._refuse_log(host, "resource client refused: missing or wrong part secret")
            await request.reject(401, body=b"wrong or missing part secret (Authorization: Bearer <secret>)")
            return
        self._auth_log.ok(f"auth {host}", "resource client authenticated again", client=host)
        ws = await request.accept()
        self._accepted += 1
        self._clients += 1
        log.info("resource client connected", extra={"client": peer})
        try:
            await self._serve(ws, peer)
        finally:
            self._clients -= 1
            log.info("resource client disconnected", extra={"client": peer})

    def _refuse_log(self, host: str, message: str) -> None:
        self._refused += 1
        self._auth_log.fail(f"auth {host}", message, client=host)

    async def _serve(self, ws: WebSocketConnection, peer: str) -> None:
        slots = trio.Semaphore(MAX_CONCURRENT_CALLS)
        async with trio.open_nursery() as nursery:
            try:
                while True:
                    data = await ws.get_message()
                    try:
                        msg, cid = self._read_call(data)
                    except _BadCall as bad:
                        self._errors += 1
                        self._bad_log.fail(f"bad {peer}", "resource client sent a bad message; connection closed",
                                           client=peer, error=bad.error.message)
                        await ws.send_message(encode_reply(error_reply(bad.cid, bad.error)))
                        await close_bad(ws, bad.error)
                        break
                    await slots.acquire()
                    nursery.start_soon(self._answer, ws, msg, cid, slots)
            except ConnectionClosed:
                pass
            nursery.cancel_scope.cancel()

    @staticmethod
    def _read_call(data: bytes | str) -> tuple[dict[str, Any], int | str]:
        cid = None
        try:
            msg = decode(data, max_bytes=MAX_CALL_BYTES)
            cid = call_id(msg)
            if not isinstance(msg.get("params") or {}, dict):
                raise BadMessage("params must be a map")
            return msg, cid
        except BadMessage as exc:
            raise _BadCall(cid, exc) from None

    async def _answer(self, ws: WebSocketConnection, msg: dict[str, Any], cid: int | str,
                      slots: trio.Semaphore) -> None:
        try:
            reply = await self._call(msg, cid)
            try:
                await ws.send_message(encode_reply(reply))
            except ConnectionClosed:
                pass
        finally:
            slots.release()

    async def dispatch(self, data: bytes | str) -> dict[str, Any]:
        """One call message in, one reply message out (never raises for a bad call)."""
        try:
            msg, cid = self._read_call(data)
        except _BadCall as bad:
            self._errors += 1
            return error_reply(bad.cid, bad.error)
        return await self._call(msg, cid)

    async def _call(self, msg: dict[str, Any], cid: int | str) -> dict[str, Any]:
        try:
            params = msg.get("params") or {}
            self._calls += 1
            method = msg.get("method")
            if method == "resource.capture":
                return {"id": cid, "result": await self._capture(params)}
            if method == "resource.list":
                return {"id": cid, "result": [{"type": r.type, "name": n, "model": getattr(r, "model", "")}
                                              for n, r in sorted(self._served().items())]}
            raise RpcError("UnknownMethod", f"no method {repr(method)[:80]}; "
                           "available: resource.capture, resource.list")
        except RpcError as exc:
            self._errors += 1
            return error_reply(cid, exc)
        except Exception as exc:  # a bug in a model answers with an error; the server stays up
            self._errors += 1
            log.exception("resource call failed", extra={"call_id": cid})
            return {"id": cid, "error": {"type": type(exc).__name__, "message": str(exc)}}

    def _served(self) -> dict[str, Any]:
        resources = getattr(self._lookup, "resources", None)
        return resources() if callable(resources) else {}

    async def _capture(self, params: dict[str, Any]) -> dict[str, Any]:
        name, method = params.get("resource"), params.get("method")
        call_params = params.get("params") or {}
        if not isinstance(name, str) or not isinstance(method, str) or not isinstance(call_params, dict):
            raise RpcError("BadMessage", "resource.capture takes {resource: str, method: str, params: map}")
        try:
            resource = self._lookup.get(name)
        except ResourceError as exc:
            raise RpcError("UnknownResource", str(exc)) from None
        wanted_type = params.get("type")
        if wanted_type and wanted_type != resource.type:
            raise RpcError("WrongType", f"resource {name!r} is a {resource.type}, not a {wanted_type}")
        if resource.type in METHODS and method_spec(resource.type, method) is None:
            raise RpcError("UnknownMethod", f"{resource.type} has no capture method {method!r}; "
                           f"valid: {', '.join(methods_of(resource.type))}")
        try:
            with trio.fail_after(self.call_timeout_s):
                result = await capture_call(resource, method)(method, call_params)
            return encode_result(result)
        except trio.TooSlowError:
            raise RpcError("Timeout", f"{resource.type} {name!r} {method} took more than "
                           f"{self.call_timeout_s:g} s") from None
        except NoCapture:
            raise RpcError("NoCapture", "nothing to capture this time") from None
        except ResourceError as exc:
            raise RpcError("ResourceError", str(exc)) from None
