"""A fault-injecting TCP proxy under Trio, for tests and the simulation harness.

`FaultProxy` listens on a local port (0 picks a free one) and forwards every connection to a
target host:port, byte for byte, in both directions. While it runs it can be told to:

- `cut()`: end every open connection now, with a TCP reset (default) or a clean close;
- `partition(seconds)`: refuse new connections (they are accepted and reset at once, so the
  client fails fast) and, by default, cut the open ones; `heal()` ends it early;
- `stall(seconds)`: stop forwarding without closing anything (a hung link); `resume()`;
- `throttle(bytes_per_s)`: pace forwarding to a rate shared by all connections, per direction;
- `reset_after_upstream(n)`: forward exactly `n` more bytes towards the target (over all
  connections), then reset the connection that carried the last of them: the way to cut an
  upload in the middle of its body.

It counts connections and the bytes it forwarded each way (`statistics()`). Control methods
are plain synchronous calls made from the proxy's own Trio loop; `ProxyThread` runs a proxy on
its own loop in a thread, for synchronous code such as tests that drive subprocesses.

A reset is an RST sent to both sides (SO_LINGER 0): data still queued in the kernel towards the
target may be dropped, so after `reset_after_upstream(n)` the target receives at most `n` bytes.
"""

from __future__ import annotations

import functools
import math
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import trio

__all__ = ["FaultProxy", "ProxyStats", "ProxyThread", "UP", "DOWN"]

#: Direction names: UP is client -> target, DOWN is target -> client.
UP, DOWN = "up", "down"
_DIRECTIONS = {"up": (UP,), "down": (DOWN,), "both": (UP, DOWN)}
#: While throttled, data is forwarded in pieces of at most this many seconds' worth, so a
#: change of rate (or the end of throttling) takes effect within about this long.
_PACE_SLICE_S = 0.05

T = TypeVar("T")


@dataclass(frozen=True)
class ProxyStats:
    """A snapshot of one FaultProxy: where it listens, what it forwarded, which faults are on."""

    port: int  # 0 until the proxy listens
    target: str  # "host:port"
    connections_accepted: int
    connections_open: int
    connections_refused: int  # accepted and reset at once while partitioned
    connections_cut: int  # ended by cut(), partition() or a fired reset_after_upstream()
    upstream_failures: int  # connections whose target could not be reached (then reset)
    bytes_upstream: int  # forwarded client -> target
    bytes_downstream: int  # forwarded target -> client
    partitioned: bool
    stalled: bool
    throttle_up_bps: float | None
    throttle_down_bps: float | None
    reset_armed_bytes: int | None  # bytes upstream left before the armed reset fires; None if none armed
    resets_fired: int


class _Conn:
    """One proxied connection: the client side, the target side once open, and how to end it."""

    def __init__(self, client: trio.SocketStream) -> None:
        self.client = client
        self.upstream: trio.SocketStream | None = None
        self.scope = trio.CancelScope()
        self.rst = False

    def abort(self, *, rst: bool) -> None:
        """End the connection now: an RST to both sides when `rst`, else a clean close."""
        self.rst = self.rst or rst
        self.scope.cancel()

    async def close(self) -> None:
        """Close both sides (RST when `self.rst`), never raising."""
        for stream in (self.client, self.upstream):
            if stream is None:
                continue
            if self.rst:
                try:
                    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            await trio.aclose_forcefully(stream)


class _Pacer:
    """A rate shared by every connection in one direction: hands out send times `n / rate` apart."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self.next_free = 0.0

    async def wait(self, n: int) -> None:
        """Wait for the moment `n` bytes may be sent at the current rate (no wait when unthrottled)."""
        if not self.rate:
            return
        now = trio.current_time()
        start = max(now, self.next_free)
        self.next_free = start + n / self.rate
        await trio.sleep_until(self.next_free)


class FaultProxy:
    """Forwards TCP connections from 127.0.0.1:`port` to `target_host`:`target_port`, with faults on demand.

    Run it with `await nursery.start(proxy.run)` (which returns the bound port); cancel to stop,
    which closes every connection. Control methods may be called at any time from the proxy's
    Trio loop, before or while it runs; faults with `seconds` end by themselves after that long.
    """

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0,
                 chunk_bytes: int = 64 * 1024) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self._want_port = port
        self._chunk = chunk_bytes
        self.port = 0
        self._conns: set[_Conn] = set()
        self._partition_until = -math.inf
        self._stall_until = -math.inf
        self._changed = trio.Event()  # set (and replaced) whenever stall ends early or faults change
        self._pacers = {UP: _Pacer(), DOWN: _Pacer()}
        self._reset_left: int | None = None
        self._reset_rst = True
        self._bytes = {UP: 0, DOWN: 0}
        self._accepted = self._refused = self._cut = self._upstream_failures = self._resets_fired = 0

    # --- running ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """`http://host:port` of the proxy, for pointing an HTTP client through it."""
        return f"http://{self.host}:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report the bound port through `task_status`, and forward until cancelled."""
        listeners = await trio.open_tcp_listeners(self._want_port, host=self.host)
        try:
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(trio.serve_listeners, self._handle, listeners,
                                                     handler_nursery=nursery))
                task_status.started(self.port)
        finally:
            for conn in list(self._conns):
                conn.abort(rst=False)
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    # --- faults -----------------------------------------------------------------------------------

    def cut(self, *, rst: bool = True) -> int:
        """End every open connection now (RST by default, else a clean close); returns how many."""
        conns = list(self._conns)
        for conn in conns:
            conn.abort(rst=rst)
        self._cut += len(conns)
        return len(conns)

    def partition(self, seconds: float | None = None, *, cut_existing: bool = True) -> None:
        """Refuse new connections for `seconds` (None: until `heal()`); cut the open ones unless told not to."""
        self._partition_until = math.inf if seconds is None else trio.current_time() + seconds
        if cut_existing:
            self.cut(rst=True)

    def heal(self) -> None:
        """End a partition now."""
        self._partition_until = -math.inf

    def stall(self, seconds: float | None = None) -> None:
        """Stop forwarding in both directions for `seconds` (None: until `resume()`); nothing is closed."""
        self._stall_until = math.inf if seconds is None else trio.current_time() + seconds
        self._wake()

    def resume(self) -> None:
        """End a stall now; held data flows on."""
        self._stall_until = -math.inf
        self._wake()

    def throttle(self, bytes_per_s: float | None, *, direction: str = "both") -> None:
        """Pace forwarding to `bytes_per_s` per direction, shared by all connections; None lifts it.

        `direction` is "up" (client -> target), "down" or "both".
        """
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {sorted(_DIRECTIONS)}, not {direction!r}")
        if bytes_per_s is not None and not (bytes_per_s > 0 and math.isfinite(bytes_per_s)):
            raise ValueError(f"bytes_per_s must be a positive number or None, not {bytes_per_s!r}")
        for d in _DIRECTIONS[direction]:
            pacer = self._pacers[d]
            pacer.rate = bytes_per_s
            pacer.next_free = 0.0
        self._wake()

    def reset_after_upstream(self, n_bytes: int, *, rst: bool = True) -> None:
        """Forward `n_bytes` more towards the target (all connections together), then reset the
        connection that carried the last of them (a clean close when `rst` is false). One shot."""
        if n_bytes < 0:
            raise ValueError("n_bytes must be >= 0")
        self._reset_left = n_bytes
        self._reset_rst = rst

    def clear(self) -> None:
        """Lift every fault: heal, resume, unthrottle, disarm any pending reset."""
        self._reset_left = None
        self.heal()
        self.throttle(None)
        self.resume()

    def statistics(self) -> ProxyStats:
        """Counters since start and the faults in force now."""
        now = trio.current_time()
        return ProxyStats(
            port=self.port,
            target=f"{self.target_host}:{self.target_port}",
            connections_accepted=self._accepted,
            connections_open=len(self._conns),
            connections_refused=self._refused,
            connections_cut=self._cut,
            upstream_failures=self._upstream_failures,
            bytes_upstream=self._bytes[UP],
            bytes_downstream=self._bytes[DOWN],
            partitioned=now < self._partition_until,
            stalled=now < self._stall_until,
            throttle_up_bps=self._pacers[UP].rate,
            throttle_down_bps=self._pacers[DOWN].rate,
            reset_armed_bytes=self._reset_left,
            resets_fired=self._resets_fired,
        )

    # --- forwarding -------------------------------------------------------------------------------

    def _wake(self) -> None:
        """Wake every pump waiting on a fault change (a stall ended, a rate changed)."""
        self._changed.set()
        self._changed = trio.Event()

    async def _handle(self, client: trio.SocketStream) -> None:
        """Serve one accepted connection: refuse it, or connect to the target and pump both ways."""
        conn = _Conn(client)
        self._accepted += 1
        self._conns.add(conn)
        try:
            with conn.scope:
                if trio.current_time() < self._partition_until:
                    self._refused += 1
                    conn.rst = True
                    return
                try:
                    conn.upstream = await trio.open_tcp_stream(self.target_host, self.target_port)
                except OSError:
                    self._upstream_failures += 1
                    conn.rst = True
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, conn, client, conn.upstream, UP)
                    nursery.start_soon(self._pump, conn, conn.upstream, client, DOWN)
        finally:
            self._conns.discard(conn)
            with trio.CancelScope(shield=True):
                await conn.close()

    async def _gate(self) -> None:
        """Wait while stalled."""
        while trio.current_time() < self._stall_until:
            with trio.move_on_at(self._stall_until):
                await self._changed.wait()

    async def _pump(self, conn: _Conn, src: trio.SocketStream, dst: trio.SocketStream, direction: str) -> None:
        """Copy src -> dst until EOF (then half-close dst); a broken side resets the whole connection."""
        pacer = self._pacers[direction]
        try:
            while True:
                data = await src.receive_some(self._chunk)
                if not data:
                    await dst.send_eof()
                    return
                view = memoryview(data)
                while view:
                    await self._gate()
                    n = len(view)
                    if pacer.rate:
                        n = min(n, max(1, int(pacer.rate * _PACE_SLICE_S)))
                    if direction == UP and self._reset_left is not None:
                        n = min(n, self._reset_left)
                        if n == 0:
                            self._fire_reset(conn)
                            return
                    await pacer.wait(n)
                    await dst.send_all(view[:n])
                    self._bytes[direction] += n
                    view = view[n:]
                    if direction == UP and self._reset_left is not None:
                        self._reset_left -= n
                        if self._reset_left <= 0:
                            self._fire_reset(conn)
                            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.abort(rst=True)  # one side went away abruptly: the other sees it the same way

    def _fire_reset(self, conn: _Conn) -> None:
        """The armed reset_after_upstream() is due: disarm it and end `conn`."""
        self._reset_left = None
        self._resets_fired += 1
        self._cut += 1
        conn.abort(rst=self._reset_rst)


class ProxyThread:
    """A FaultProxy on its own Trio loop in a daemon thread, controlled from synchronous code.

    ``with ProxyThread("127.0.0.1", port) as p: ... p.cut() ... p.statistics()``. Every control
    method runs on the proxy's loop (trio.from_thread) and returns its result.
    """

    def __init__(self, target_host: str, target_port: int, **kw: Any) -> None:
        self.proxy = FaultProxy(target_host, target_port, **kw)
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="faultproxy", daemon=True)

    def start(self, timeout_s: float = 10.0) -> ProxyThread:
        """Start the thread; returns once the proxy listens. Raises what made it fail to start."""
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("fault proxy did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the proxy (closing every connection) and join the thread."""
        if self._scope is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(timeout_s)

    def __enter__(self) -> ProxyThread:
        """start() it."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """stop() it."""
        self.stop()

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        return self.proxy.port

    @property
    def url(self) -> str:
        """`http://host:port` of the proxy."""
        return self.proxy.url

    def call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run `fn(*args, **kw)` on the proxy's loop and return its result."""
        return trio.from_thread.run_sync(functools.partial(fn, *args, **kw), trio_token=self._token)

    def cut(self, **kw: Any) -> int:
        """FaultProxy.cut on the proxy's loop."""
        return self.call(self.proxy.cut, **kw)

    def partition(self, seconds: float | None = None, **kw: Any) -> None:
        """FaultProxy.partition on the proxy's loop."""
        self.call(self.proxy.partition, seconds, **kw)

    def heal(self) -> None:
        """FaultProxy.heal on the proxy's loop."""
        self.call(self.proxy.heal)

    def stall(self, seconds: float | None = None) -> None:
        """FaultProxy.stall on the proxy's loop."""
        self.call(self.proxy.stall, seconds)

    def resume(self) -> None:
        """FaultProxy.resume on the proxy's loop."""
        self.call(self.proxy.resume)

    def throttle(self, bytes_per_s: float | None, **kw: Any) -> None:
        """FaultProxy.throttle on the proxy's loop."""
        self.call(self.proxy.throttle, bytes_per_s, **kw)

    def reset_after_upstream(self, n_bytes: int, **kw: Any) -> None:
        """FaultProxy.reset_after_upstream on the proxy's loop."""
        self.call(self.proxy.reset_after_upstream, n_bytes, **kw)

    def clear(self) -> None:
        """FaultProxy.clear on the proxy's loop."""
        self.call(self.proxy.clear)

    def statistics(self) -> ProxyStats:
        """FaultProxy.statistics, taken on the proxy's loop."""
        return self.call(self.proxy.statistics)

    def _main(self) -> None:
        """The thread: run the proxy's Trio loop until stop()."""
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported by start() if it happened before the proxy listened
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        """Run the proxy under a cancel scope stop() can cancel; signal start() once it listens."""
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                await nursery.start(self.proxy.run)
                self._ready.set()
