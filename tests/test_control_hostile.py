"""Hostile clients of a running agent's control endpoint and `/resources`, on real sockets and the
real clock: bad CBOR closes only its own connection, nothing freezes capture, a vanished client
does not take the listener down."""

from __future__ import annotations

import json
import time

import cbor2
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from capsync.actors.agent import Agent
from capsync.runtime import rpc
from capsync.runtime.config import parse_config
from capsync.runtime.remote import RESOURCES_PATH
from tests.helpers import fake_component, robot_config

SECRET = "s3cret"  # robot_config's cloud.secret
# {"id": 28([29(0)])}: an id that is a list holding itself (CBOR shared references), 10 bytes
SELF_REFERENCE = bytes.fromhex("a1") + cbor2.dumps("id") + bytes.fromhex("d81c81d81d00")


def expansion_bomb(levels: int = 23) -> bytes:
    """A ~150-byte call whose id expands to 2**levels copies of 0 through shared references."""
    value: list = [0]
    for _ in range(levels):
        value = [value, value]
    return cbor2.dumps({"id": value, "method": "status", "params": {}}, value_sharing=True)


HOSTILE = {
    "self-reference": SELF_REFERENCE,
    "expansion bomb": expansion_bomb(),
    "list id": cbor2.dumps({"id": [1, 2], "method": "status"}),
    "huge int id": cbor2.dumps({"id": 2 ** 200, "method": "status"}),
    "long str id": cbor2.dumps({"id": "x" * 5000, "method": "status"}),
    "not a map": cbor2.dumps([1, 2, 3]),
    "truncated": cbor2.dumps({"id": 1, "method": "status"})[:-3],
    "deep nesting": b"\x81" * 10_000 + b"\x00",
    "params not a map": cbor2.dumps({"id": 1, "method": "status", "params": [1]}),
}


async def _running_agent(nursery, tmp_path, hz: float = 0) -> tuple[Agent, str]:
    comps = [fake_component("env", "sensor", [{"method": "Readings", "capture_frequency_hz": hz}])] if hz else []
    cfg = robot_config(tmp_path / "cap", comps, sync_disabled=True)
    agent = Agent(parse_config(json.dumps(cfg)))
    await nursery.start(agent.run)
    with trio.fail_after(5):
        while agent.control.bound_port is None:
            await trio.sleep(0.02)
    return agent, f"127.0.0.1:{agent.control.bound_port}"


async def _send_hostile(url: str, data: bytes, secret: str | None = None) -> tuple[dict, int]:
    """Send one message; the decoded answer and the close code the server then used."""
    headers = rpc.auth_headers(secret)
    async with open_websocket_url(url, extra_headers=headers) as ws:
        await ws.send_message(data)
        reply = cbor2.loads(await ws.get_message())
        with trio.fail_after(5):
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
    return reply, closed.value.reason.code


@pytest.mark.parametrize("path", ["/control", RESOURCES_PATH])
async def test_bad_messages_close_only_their_connection(tmp_path, nursery, path):
    agent, address = await _running_agent(nursery, tmp_path)
    url = f"ws://{address}{path}"
    async with rpc.connect(address, secret=SECRET, path=path) as bystander:  # stays connected throughout
        for _ in range(2):  # more than the supervisor's restart budget, had each one crashed the endpoint
            for what, data in HOSTILE.items():
                reply, code = await _send_hostile(url, data, SECRET)
                assert reply["error"]["type"] == "BadMessage", what
                assert reply["id"] in (None, 1), what
                assert code == rpc.CLOSE_BAD_MESSAGE, what
        method = "status" if path == "/control" else "resource.list"
        assert await bystander.call(method) is not None
    async with rpc.connect(address) as client:  # a new client is served too
        assert (await client.call("status"))["part_id"] == "test-part"
    if path == "/control":
        assert agent.control.bad_messages == 2 * len(HOSTILE)


async def test_an_expansion_bomb_does_not_stop_capture_at_20_hz(tmp_path, nursery):
    agent, address = await _running_agent(nursery, tmp_path, hz=20)
    await trio.sleep(0.5)
    before = agent.statistics().collectors[0]
    bomb = expansion_bomb()
    for _ in range(5):
        started = time.perf_counter()
        reply, _ = await _send_hostile(f"ws://{address}/control", bomb)
        assert reply["error"]["type"] == "BadMessage" and "tag 28" in reply["error"]["message"]
        assert time.perf_counter() - started < 0.5  # the old decoder and encoder took ~3 s per bomb
    await trio.sleep(0.3)
    after = agent.statistics().collectors[0]
    assert after.missed_ticks == before.missed_ticks
    assert after.captured > before.captured


def test_refused_cbor_decodes_in_well_under_a_millisecond():
    for what, data in HOSTILE.items():
        started = time.perf_counter()
        try:
            rpc.call_id(rpc.decode(data, max_bytes=rpc.MAX_CALL_BYTES))
        except rpc.BadMessage:
            pass
        else:
            if what != "params not a map":
                pytest.fail(f"{what} was accepted")
        assert time.perf_counter() - started < 0.005, what


async def test_oversized_call_is_closed_with_1009(tmp_path, nursery):
    _, address = await _running_agent(nursery, tmp_path)
    async with open_websocket_url(f"ws://{address}/control") as ws:
        await ws.send_message(cbor2.dumps({"id": 1, "method": "status", "params": {"x": b"a" * rpc.MAX_CALL_BYTES}}))
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1009
    async with rpc.connect(address) as client:
        assert (await client.call("status"))["part_id"] == "test-part"


async def test_clients_leaving_resources_do_not_drop_other_connections(tmp_path, nursery):
    agent, address = await _running_agent(nursery, tmp_path)
    async with rpc.connect(address, path="/control") as control:
        for _ in range(5):
            async with rpc.connect(address, secret=SECRET, path=RESOURCES_PATH) as leaving:
                await leaving.call("resource.list")
            await trio.sleep(0.05)
            # the old listener crashed here (getpeername on the closed socket) and dropped this connection
            assert (await control.call("status"))["served"]["accepted"] >= 1
    assert agent.control.connection_errors == 0


async def _handshake(url: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """HTTP status (101 when upgraded) and body of a WebSocket handshake with `headers`."""
    try:
        async with open_websocket_url(url, extra_headers=headers) as ws:
            await ws.send_message(rpc.encode({"id": 1, "method": "status", "params": {}}))
            await ws.get_message()
            return 101, b""
    except ConnectionRejected as exc:
        return exc.status_code, exc.body or b""


async def test_browser_origins_are_refused_unless_allowed(tmp_path, nursery):
    cfg = robot_config(tmp_path / "cap", [], sync_disabled=True)
    cfg["network"]["allowed_origins"] = ["http://Dashboard.local:3000"]
    agent = Agent(parse_config(json.dumps(cfg)))
    await nursery.start(agent.run)
    with trio.fail_after(5):
        while agent.control.bound_port is None:
            await trio.sleep(0.02)
    base = f"ws://127.0.0.1:{agent.control.bound_port}"
    auth = rpc.auth_headers(SECRET)
    for origin in (b"http://evil.example", b"null", b"http://127.0.0.1:8000", b"http://dashboard.local:3001"):
        for path, headers in (("/control", []), (RESOURCES_PATH, auth)):
            status, body = await _handshake(base + path, [(b"Origin", origin), *headers])
            assert status == 403, (origin, path)
            assert b"network.allowed_origins" in body
    assert await _handshake(base + "/control", [(b"Origin", b"http://dashboard.local:3000")]) == (101, b"")
    assert await _handshake(base + "/control", []) == (101, b"")  # local tools send no Origin
    assert agent.control.refused_origins == 8
