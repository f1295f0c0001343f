"""A hostile remote part: the main part (a real agent) captures from a WebSocket server on loopback
that answers with malformed replies, one kind per connection, then behaves. Each bad reply drops
only that link and shows in the remote's status; the agent never restarts anything."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import cbor2
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from capsync.actors.agent import Agent
from capsync.runtime import rpc
from capsync.runtime.config import RemoteConfig, parse_config
from capsync.runtime.remote import RemoteConnection, RemotePartError
from tests.helpers import free_port
from tests.test_control_hostile import expansion_bomb
from tests.test_remote import until


def _hostile_replies(cid: int) -> list[bytes | str]:
    """Replies to call `cid` that break the wire rules, each in its own way."""
    return [
        cbor2.dumps({"id": [cid], "result": {"readings": {}}}),  # unhashable id: crashed the agent before
        bytes.fromhex("a2") + cbor2.dumps("id") + bytes.fromhex("d81c81d81d00") + cbor2.dumps("result") + b"\xf6",
        expansion_bomb(),
        cbor2.dumps({"id": float(cid), "result": {"readings": {}}}),
        cbor2.dumps({"id": cid, "error": ["not", "a", "map"]}),
        cbor2.dumps({"id": cid, "error": {"type": {"nested": 1}, "message": "x"}}),
        cbor2.dumps([cid, "not a map"]),
        b"\xff\x00garbage",
        "a text frame",
    ]


class HostileRemote:
    """A fake remote part: connection n answers its first call with hostile reply n, later ones behave."""

    def __init__(self) -> None:
        self.connections = 0
        self.kinds = len(_hostile_replies(0))
        self.good_replies = 0

    async def handle(self, request: WebSocketRequest) -> None:
        """Serve one connection of the main part."""
        n, self.connections = self.connections, self.connections + 1
        ws = await request.accept()
        try:
            while True:
                call = cbor2.loads(await ws.get_message())
                if n < self.kinds:
                    await ws.send_message(_hostile_replies(call["id"])[n])
                    continue
                self.good_replies += 1
                await ws.send_message(cbor2.dumps({"id": call["id"], "result": {"readings": {"v": self.good_replies}}}))
        except ConnectionClosed:
            pass


def _main_part(tmp_path: Path, port: int) -> dict:
    methods = [{"method": "Readings", "capture_frequency_hz": 10, "name": "rdk:component:sensor/s1"}]
    return {
        "cloud": {"id": "part-a", "secret": "", "app_address": "http://cloud.test"},
        "network": {"bind_address": f"127.0.0.1:{free_port()}"},
        "services": [{"name": "data_manager", "type": "data_manager",
                      "attributes": {"capture_dir": str(tmp_path / "cap"), "sync_disabled": True}}],
        "remotes": [{"name": "evil", "address": f"127.0.0.1:{port}", "secret": "x",
                     "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": methods}}]}],
    }


async def test_bad_replies_drop_only_the_link_and_are_reported(tmp_path, nursery):
    remote, port = HostileRemote(), free_port()
    await nursery.start(serve_websocket, remote.handle, "127.0.0.1", port, None)
    agent = Agent(parse_config(json.dumps(_main_part(tmp_path, port))))
    await nursery.start(agent.run)
    await until(lambda: remote.good_replies >= 5, 20, "the remote to be captured from after its bad replies")
    [stats] = agent.statistics().remotes
    assert stats.bad_replies == remote.kinds
    assert stats.state == "connected" and stats.connects == remote.kinds + 1
    assert agent._root.statistics().total_restarts == 0
    [collector] = agent.statistics().collectors
    assert collector.captured >= 5 and collector.failed >= remote.kinds
    async with rpc.connect(f"127.0.0.1:{agent.control.bound_port}") as control:  # what `capsync status` shows
        assert (await control.call("status"))["remotes"][0]["bad_replies"] == remote.kinds


async def test_a_bad_reply_is_the_remotes_last_error(tmp_path, nursery):
    remote, port = HostileRemote(), free_port()
    remote.kinds = 1  # only the unhashable id, then the remote behaves
    await nursery.start(serve_websocket, remote.handle, "127.0.0.1", port, None)
    agent = Agent(parse_config(json.dumps(_main_part(tmp_path, port))))
    await nursery.start(agent.run)
    seen: set[str | None] = set()

    def reported() -> bool:  # the link waits out a 0.25 s backoff before connecting again
        seen.add(agent.statistics().remotes[0].last_error)
        return any("sent a bad reply: a call id must be" in (e or "") for e in seen)

    await until(reported, 10, "the bad reply in the remote's status", step=0.01)
    await until(lambda: remote.good_replies >= 1, 10, "the link to come back")


async def _silent_server(nursery) -> int:
    """A TCP server that accepts connections and never says a word; returns its port."""
    async def handler(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    [listener] = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return listener.socket.getsockname()[1]


async def test_a_peer_that_accepts_and_never_answers_times_out(nursery):
    port = await _silent_server(nursery)
    with trio.fail_after(3):  # trio-websocket alone waited forever here
        with pytest.raises(rpc.RpcError, match="no WebSocket handshake within 0.5 s"):
            async with rpc.connect(f"127.0.0.1:{port}", timeout_s=0.5):
                pass
    conn = RemoteConnection(RemoteConfig("mute", f"127.0.0.1:{port}", "x"), connect_timeout_s=0.5)
    nursery.start_soon(conn.run)
    await until(lambda: conn.statistics().state == "unreachable", 3, "the silent remote to count as unreachable")
    assert "no WebSocket handshake" in conn.statistics().last_error
    with trio.fail_after(0.2), pytest.raises(RemotePartError, match="unreachable"):
        await conn.call("resource.list", {})
