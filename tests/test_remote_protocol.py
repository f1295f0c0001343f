"""The resource-serving protocol on a real socket: auth, typed errors, bytes, concurrency, keepalive."""

from __future__ import annotations

import json

import pytest
import trio

from capsync.actors.agent import Agent
from capsync.runtime import rpc
from capsync.runtime.config import RemoteConfig, parse_config
from capsync.runtime.remote import (RESOURCES_PATH, RemoteConnection, RemotePartError, decode_result, encode_result,
                            resources_url)
from capsync.runtime.resources.resource import Binary
from tests.helpers import free_port
from tests.test_remote import B_SECRET, part_b_config, until


@pytest.fixture
async def part_b(nursery):
    """Part B running in-process on a free loopback port."""
    agent = Agent(parse_config(json.dumps(part_b_config(free_port()))))
    await nursery.start(agent.run)
    await until(lambda: agent.control.bound_port is not None, 5, "part B to listen")
    return agent


def address(agent: Agent) -> str:
    """`host:port` of an agent's control endpoint."""
    return f"127.0.0.1:{agent.control.bound_port}"


def test_result_codec_and_urls():
    readings = {"value": 7, "nested": {"a": [1.5, None]}}
    assert decode_result(encode_result(readings)) == readings
    img = Binary(b"\xff\xd8jpeg", "image/jpeg", {"detections": []})
    assert decode_result(encode_result(img)) == img
    many = [Binary(b"a", "image/png", {"source": "color"}), Binary(b"b", "image/png", None)]
    assert decode_result(encode_result(many)) == many
    with pytest.raises(RemotePartError, match="unexpected"):
        decode_result(["nope"])
    assert resources_url("10.0.0.5:8080") == "ws://10.0.0.5:8080/resources"
    assert resources_url("pi-test-main.vw3iu72d8n.viam.cloud") == "ws://pi-test-main.vw3iu72d8n.viam.cloud:8791/resources"
    assert resources_url("ws://h:1") == "ws://h:1/resources" and resources_url("wss://h/x") == "wss://h/x"


async def test_calls_need_the_part_secret_even_on_loopback(part_b):
    for secret in (None, "wrong"):
        with pytest.raises(rpc.RpcError, match="Refused.*401"):
            async with rpc.connect(address(part_b), secret=secret, path=RESOURCES_PATH):
                pass
    async with rpc.connect(address(part_b), path="/control") as control:  # the control API is unchanged
        assert (await control.call("status"))["served"]["refused"] == 2


async def test_capture_results_and_typed_errors(part_b, nursery):
    conn = RemoteConnection(RemoteConfig("part-b", address(part_b), B_SECRET))
    nursery.start_soon(conn.run)
    listed = await conn.call("resource.list", {})
    assert {(r["type"], r["name"]) for r in listed} >= {("board", "my-esp32"), ("camera", "cam")}
    analog = await conn.call("resource.capture", {"resource": "my-esp32", "type": "board", "method": "Analogs",
                                                  "params": {"reader_name": "A1"}})
    assert set(analog["readings"]) == {"value", "min_range", "max_range", "step_size"}
    image = await conn.call("resource.capture", {"resource": "cam", "type": "camera", "method": "ReadImage",
                                                 "params": {"mime_type": "image/png"}})
    item = image["binary"][0]
    assert isinstance(item["data"], bytes) and item["data"][:4] == b"\x89PNG" and item["mime_type"] == "image/png"
    cases = [
        ({"resource": "nope", "method": "Analogs"}, "UnknownResource"),
        ({"resource": "my-esp32", "type": "camera", "method": "ReadImage"}, "WrongType"),
        ({"resource": "my-esp32", "method": "ReadImage"}, "UnknownMethod"),
        ({"resource": "my-esp32", "method": "Analogs", "params": {"reader_name": "A9"}}, "ResourceError"),
        ({"resource": 5, "method": "Analogs"}, "BadMessage"),
    ]
    for params, kind in cases:
        with pytest.raises(RemotePartError) as info:
            await conn.call("resource.capture", params)
        assert info.value.kind == kind, (params, info.value)
    with pytest.raises(RemotePartError, match="A9"):
        await conn.call("resource.capture", cases[3][0])
    with pytest.raises(RemotePartError, match="UnknownMethod"):
        await conn.call("status", {})  # the control API is not reachable on this path
    assert conn.statistics().failed_calls == 7 and conn.statistics().calls == 10


async def test_a_slow_resource_does_not_hold_up_others_on_the_same_connection(part_b, nursery):
    conn = RemoteConnection(RemoteConfig("part-b", address(part_b), B_SECRET))
    nursery.start_soon(conn.run)
    slow_done = trio.Event()

    async def slow() -> None:
        await conn.call("resource.capture", {"resource": "slow", "method": "Readings", "params": {}})
        slow_done.set()

    nursery.start_soon(slow)
    await trio.sleep(0.1)
    t0 = trio.current_time()
    for _ in range(20):
        wire = await conn.call("resource.capture", {"resource": "my-esp32", "method": "Gpios",
                                                    "params": {"pin_name": "27"}})
        assert set(wire["readings"]) == {"high"}
    assert trio.current_time() - t0 < 0.4 and not slow_done.is_set()  # the 600 ms call is still running
    await slow_done.wait()
    with pytest.raises(RemotePartError) as info:
        await conn.call("resource.capture", {"resource": "nope", "method": "Readings", "params": {}})
    assert info.value.kind == "UnknownResource" and "part-b" in str(info.value)


async def _forward(src: trio.SocketStream, dst: trio.SocketStream, frozen: trio.Event) -> None:
    try:
        async for chunk in src:
            if frozen.is_set():
                await trio.sleep_forever()  # a partition: bytes vanish, no FIN, no RST
            await dst.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def test_a_silent_partition_is_noticed_by_keepalive_and_healed(part_b, nursery):
    frozen = trio.Event()
    target = part_b.control.bound_port

    async def handle(client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", target) as server:
            async with trio.open_nursery() as n:
                n.start_soon(_forward, client, server, frozen)
                n.start_soon(_forward, server, client, frozen)

    listeners = await nursery.start(trio.serve_tcp, handle, 0)
    port = listeners[0].socket.getsockname()[1]
    conn = RemoteConnection(RemoteConfig("part-b", f"127.0.0.1:{port}", B_SECRET),
                            ping_interval_s=0.2, ping_timeout_s=1.0)
    nursery.start_soon(conn.run)
    await until(lambda: conn.statistics().state == "connected", 5, "the link")
    frozen.set()
    await until(lambda: conn.statistics().state != "connected", 6, "keepalive to notice the partition")
    with pytest.raises(RemotePartError, match="part-b"):
        await conn.call("resource.capture", {"resource": "my-esp32", "method": "Gpios", "params": {"pin_name": "27"}})
    frozen = trio.Event()  # heal: new connections through the proxy flow again
    await until(lambda: conn.statistics().state == "connected", 8, "the link to come back")
    assert conn.statistics().connects >= 2
