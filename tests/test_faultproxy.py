"""The fault-injecting TCP proxy, with an echo server behind it, on real sockets and the real clock."""

from __future__ import annotations

import dataclasses
import functools
import socket
import threading
import time

import pytest
import trio

from capsync.runtime.faultproxy import FaultProxy, ProxyStats, ProxyThread


def _deadline(seconds: float):
    """Fail an async test that takes longer than `seconds` instead of hanging (a broken proxy often hangs)."""
    def wrap(fn):
        @functools.wraps(fn)
        async def run(*args, **kw):
            with trio.fail_after(seconds):
                return await fn(*args, **kw)
        return run
    return wrap


async def _echo(stream: trio.SocketStream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def _start_echo(nursery: trio.Nursery) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def _proxy(nursery: trio.Nursery, target_port: int) -> FaultProxy:
    proxy = FaultProxy("127.0.0.1", target_port)
    await nursery.start(proxy.run)
    return proxy


async def _receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = await stream.receive_some(n - len(out))
        if not data:
            break
        out += data
    return bytes(out)


async def _read_until_closed(stream: trio.SocketStream) -> tuple[bytes, str]:
    """Everything the stream yields, and how it ended: "eof" or "reset"."""
    out = bytearray()
    try:
        while data := await stream.receive_some(65536):
            out += data
    except trio.BrokenResourceError:
        return bytes(out), "reset"
    return bytes(out), "eof"


async def _wait_for(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


@_deadline(10)
async def test_forwards_both_ways_and_counts_bytes():
    async with trio.open_nursery() as n:
        proxy = await _proxy(n, await _start_echo(n))
        assert proxy.port > 0 and proxy.url == f"http://127.0.0.1:{proxy.port}"
        payload = bytes(range(256)) * 1000
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as s:
            await s.send_all(payload)
            assert await _receive_exactly(s, len(payload)) == payload
        await _wait_for(lambda: proxy.statistics().connections_open == 0)
        stats = proxy.statistics()
        assert isinstance(stats, ProxyStats)
        assert (stats.bytes_upstream, stats.bytes_downstream) == (len(payload), len(payload))
        assert stats.connections_accepted == 1 and stats.connections_cut == 0
        assert stats.target == f"127.0.0.1:{proxy.target_port}"
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.bytes_upstream = 0  # type: ignore[misc]
        n.cancel_scope.cancel()


@_deadline(10)
async def test_cut_resets_or_closes_open_connections():
    async with trio.open_nursery() as n:
        proxy = await _proxy(n, await _start_echo(n))
        for rst, expected in ((True, "reset"), (False, "eof")):
            s = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            await s.send_all(b"ping")
            assert await _receive_exactly(s, 4) == b"ping"
            assert proxy.cut(rst=rst) == 1
            assert await _read_until_closed(s) == (b"", expected)
            await s.aclose()
        assert proxy.statistics().connections_cut == 2
        # the proxy still serves new connections after a cut
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as s:
            await s.send_all(b"again")
            assert await _receive_exactly(s, 5) == b"again"
        n.cancel_scope.cancel()


@_deadline(10)
async def test_partition_refuses_new_connections_until_it_ends():
    async with trio.open_nursery() as n:
        proxy = await _proxy(n, await _start_echo(n))
        open_before = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await open_before.send_all(b"x")
        assert await _receive_exactly(open_before, 1) == b"x"
        proxy.partition(0.5)
        assert proxy.statistics().partitioned
        assert (await _read_until_closed(open_before))[1] == "reset"  # open connections are cut
        refused = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        assert await _read_until_closed(refused) == (b"", "reset")
        await _wait_for(lambda: not proxy.statistics().partitioned)
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as s:
            await s.send_all(b"healed")
            assert await _receive_exactly(s, 6) == b"healed"
        stats = proxy.statistics()
        assert stats.connections_refused == 1 and stats.connections_cut == 1
        # partition without a time ends only on heal(); cut_existing=False keeps open connections
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as keep:
            proxy.partition(cut_existing=False)
            await keep.send_all(b"still")
            assert await _receive_exactly(keep, 5) == b"still"
            refused = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            assert (await _read_until_closed(refused))[1] == "reset"
            proxy.heal()
            async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as s:
                await s.send_all(b"ok")
                assert await _receive_exactly(s, 2) == b"ok"
        n.cancel_scope.cancel()


@_deadline(10)
async def test_stall_holds_data_without_closing_then_resume_delivers_it():
    async with trio.open_nursery() as n:
        proxy = await _proxy(n, await _start_echo(n))
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as s:
            proxy.stall()
            assert proxy.statistics().stalled
            await s.send_all(b"held")
            with trio.move_on_after(0.3) as waited:
                await s.receive_some(10)
            assert waited.cancelled_caught, "data went through a stalled proxy"
            assert proxy.statistics().bytes_upstream == 0 and proxy.statistics().connections_open == 1
            proxy.resume()
            assert await _receive_exactly(s, 4) == b"held"
            # a timed stall ends by itself
            proxy.stall(0.3)
            t0 = trio.current_time()
            await s.send_all(b"later")
            assert await _receive_exactly(s, 5) == b"later"
            assert trio.current_time() - t0 >= 0.25
        n.cancel_scope.cancel()


@_deadline(10)
async def test_throttle_paces_forwarding_and_can_be_lifted():
    async with trio.open_nursery() as n:
        proxy = await _proxy(n, await _start_echo(n))
        payload = b"z" * 40_000
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as s:
            proxy.throttle(100_000, direction="up")
            t0 = trio.current_time()
            await s.send_all(payload)
            assert await _receive_exactly(s, len(payload)) == payload
            slow = trio.current_time() - t0
            assert 0.3 <= slow < 2.0, slow  # 40 kB at 100 kB/s
            assert proxy.statistics().throttle_up_bps == 100_000 and proxy.statistics().throttle_down_bps is None
            proxy.throttle(None)
            t0 = trio.current_time()
            await s.send_all(payload)
            assert await _receive_exactly(s, len(payload)) == payload
            assert trio.current_time() - t0 < 0.2
        with pytest.raises(ValueError):
            proxy.throttle(0)
        with pytest.raises(ValueError):
            proxy.throttle(10, direction="sideways")
        n.cancel_scope.cancel()


@_deadline(10)
async def test_reset_after_upstream_forwards_exactly_n_bytes_then_resets_once():
    async with trio.open_nursery() as n:
        proxy = await _proxy(n, await _start_echo(n))
        proxy.reset_after_upstream(1000)
        assert proxy.statistics().reset_armed_bytes == 1000
        s = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        try:
            await s.send_all(b"a" * 5000)
        except trio.BrokenResourceError:
            pass
        echoed, how = await _read_until_closed(s)
        await s.aclose()
        assert how == "reset" and len(echoed) <= 1000
        stats = proxy.statistics()
        assert stats.bytes_upstream == 1000 and stats.resets_fired == 1 and stats.reset_armed_bytes is None
        # one shot: the next connection is not reset
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as s:
            await s.send_all(b"b" * 5000)
            assert await _receive_exactly(s, 5000) == b"b" * 5000
        assert proxy.statistics().resets_fired == 1
        n.cancel_scope.cancel()


@_deadline(10)
async def test_unreachable_target_resets_the_client_and_is_counted():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    async with trio.open_nursery() as n:
        proxy = await _proxy(n, dead_port)
        s = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        assert await _read_until_closed(s) == (b"", "reset")
        await s.aclose()
        assert proxy.statistics().upstream_failures == 1
        n.cancel_scope.cancel()


def test_proxy_thread_is_driven_from_synchronous_code():
    # the echo server on its own loop in a thread, like a subprocess would be
    ports: list[int] = []
    ready, stop = threading.Event(), threading.Event()

    async def run_echo():
        async with trio.open_nursery() as n:
            ports.append(await _start_echo(n))
            ready.set()
            while not stop.is_set():
                await trio.sleep(0.02)
            n.cancel_scope.cancel()

    t = threading.Thread(target=trio.run, args=(run_echo,), daemon=True)
    t.start()
    assert ready.wait(5)
    try:
        with ProxyThread("127.0.0.1", ports[0]) as p:
            with socket.create_connection(("127.0.0.1", p.port), timeout=5) as c:
                c.sendall(b"hello")
                assert c.recv(5) == b"hello"
                p.reset_after_upstream(3)
                c.sendall(b"12345")
                deadline = time.monotonic() + 5
                with pytest.raises((ConnectionResetError, BrokenPipeError)):
                    while time.monotonic() < deadline:
                        if not c.recv(100):
                            break
                    raise AssertionError("connection was not reset")
            stats = p.statistics()
            assert stats.bytes_upstream == 8 and stats.resets_fired == 1
        assert not p._thread.is_alive()
    finally:
        stop.set()
        t.join(5)
