"""A STAND-IN for MongoDB, for tests only: a tiny MongoDB wire-protocol server. It is not MongoDB.

No MongoDB server can be installed on the machines these tests run on, so this speaks just enough
of the wire protocol (OP_MSG, and OP_QUERY/OP_REPLY for old-style handshakes) for pymongo 4.x:
hello/isMaster, buildInfo, ping, insert, find (equality filters on top-level fields), getMore,
killCursors, endSessions, drop and dropDatabase. Documents are kept in memory per database and
collection. It runs in threads (one per connection), so it serves pymongo's monitor and its
connection pool at once, can be stopped mid-test (every connection is cut, new ones refused), and
can be told to answer each insert slowly (`insert_delay_s`) or with an error (`fail_inserts`).

When CAPSYNC_TEST_MONGODB_URI is set, tests run against that real server as well (see the
`mongo_target` fixture in tests/test_mongo_capture.py).
"""

from __future__ import annotations

import os
import socket
import socketserver
import struct
import threading
import time
from datetime import datetime, timezone
from typing import Any

import bson
import pytest
from pymongo import MongoClient

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
_HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode
_MORE_TO_COME, _CHECKSUM = 1 << 1, 1 << 0


class MongoStandIn:
    """The stand-in server. `start()` binds a free port on 127.0.0.1; `uri` is what pymongo connects to."""

    def __init__(self, *, insert_delay_s: float = 0.0) -> None:
        self.insert_delay_s = insert_delay_s
        self.fail_inserts: str | None = None  # when set, every insert is refused with this message
        self.data: dict[tuple[str, str], list[dict]] = {}
        self.commands: list[str] = []  # every command name received, in order
        self.lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._conns: set[socket.socket] = set()
        self._request_id = 0
        self.port = 0

    @property
    def uri(self) -> str:
        """A URI for pymongo: direct connection, short server selection so outages show quickly."""
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true&serverSelectionTimeoutMS=1000"

    @property
    def open_connections(self) -> int:
        """Client connections currently open."""
        with self.lock:
            return len(self._conns)

    def documents(self, database: str, collection: str) -> list[dict]:
        """A copy of the stored documents of one collection, in insertion order."""
        with self.lock:
            return list(self.data.get((database, collection), []))

    def start(self) -> MongoStandIn:
        """Listen (on the same port again after stop(), if it is still free) and serve in threads."""
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler, bind_and_activate=True)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (clients see the server vanish)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self.lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- wire protocol ----------------------------------------------------------------------

    def _serve(self, sock: socket.socket) -> None:
        with self.lock:
            self._conns.add(sock)
        try:
            while True:
                head = _recv_exact(sock, _HEADER.size)
                if head is None:
                    return
                length, request_id, _, opcode = _HEADER.unpack(head)
                body = _recv_exact(sock, length - _HEADER.size)
                if body is None:
                    return
                if opcode == OP_MSG:
                    flags, cmd = _parse_msg(body)
                    reply = self._command(cmd)
                    if not flags & _MORE_TO_COME:
                        sock.sendall(self._frame(request_id, OP_MSG, struct.pack("<I", 0) + b"\x00" + bson.encode(reply)))
                elif opcode == OP_QUERY:
                    cmd = _parse_query(body)
                    reply = self._command(cmd)
                    payload = struct.pack("<iqii", 0, 0, 0, 1) + bson.encode(reply)
                    sock.sendall(self._frame(request_id, OP_REPLY, payload))
                else:
                    return  # unsupported opcode: hang up, as a confused server would
        except OSError:
            return
        finally:
            with self.lock:
                self._conns.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    def _frame(self, response_to: int, opcode: int, payload: bytes) -> bytes:
        with self.lock:
            self._request_id += 1
            rid = self._request_id
        return _HEADER.pack(_HEADER.size + len(payload), rid, response_to, opcode) + payload

    def _command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = next(iter(cmd), "")
        with self.lock:
            self.commands.append(name)
        db = cmd.get("$db", "admin")
        if name in ("hello", "isMaster", "ismaster"):
            return {
                "ismaster": True, "isWritablePrimary": True, "helloOk": True,
                "maxBsonObjectSize": 16 * 1024 * 1024, "maxMessageSizeBytes": 48_000_000,
                "maxWriteBatchSize": 100_000, "localTime": datetime.now(timezone.utc),
                "logicalSessionTimeoutMinutes": 30, "connectionId": 1,
                "minWireVersion": 0, "maxWireVersion": 21, "readOnly": False, "ok": 1.0,
            }
        if name == "buildInfo" or name == "buildinfo":
            return {"version": "7.0.0-standin", "versionArray": [7, 0, 0, 0], "ok": 1.0}
        if name in ("ping", "endSessions", "killCursors", "saslStart"):
            return {"ok": 1.0, "cursorsKilled": cmd.get("cursors", [])} if name == "killCursors" else {"ok": 1.0}
        if name == "insert":
            if self.insert_delay_s:
                time.sleep(self.insert_delay_s)
            if self.fail_inserts:
                return {"ok": 0.0, "errmsg": self.fail_inserts, "code": 8000, "codeName": "AtlasError"}
            docs = cmd.get("documents", [])
            with self.lock:
                self.data.setdefault((db, cmd["insert"]), []).extend(docs)
            return {"n": len(docs), "ok": 1.0}
        if name == "find":
            flt = cmd.get("filter") or {}
            docs = [d for d in self.documents(db, cmd["find"]) if all(d.get(k) == v for k, v in flt.items())]
            if cmd.get("limit"):
                docs = docs[: int(cmd["limit"])]
            return {"cursor": {"id": bson.Int64(0), "ns": f"{db}.{cmd['find']}", "firstBatch": docs}, "ok": 1.0}
        if name == "getMore":
            return {"cursor": {"id": bson.Int64(0), "ns": f"{db}.{cmd.get('collection')}", "nextBatch": []}, "ok": 1.0}
        if name in ("drop", "dropDatabase"):
            with self.lock:
                for key in [k for k in self.data if k[0] == db and (name == "dropDatabase" or k[1] == cmd[name])]:
                    del self.data[key]
            return {"ok": 1.0}
        return {"ok": 0.0, "errmsg": f"no such command: '{name}' (MongoDB stand-in)", "code": 59,
                "codeName": "CommandNotFound"}


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _parse_msg(body: bytes) -> tuple[int, dict[str, Any]]:
    """An OP_MSG body as (flags, command): the kind-0 document plus each kind-1 sequence as a list field."""
    (flags,) = struct.unpack_from("<I", body)
    end = len(body) - (4 if flags & _CHECKSUM else 0)
    pos, cmd, sequences = 4, {}, {}
    while pos < end:
        kind = body[pos]
        pos += 1
        (size,) = struct.unpack_from("<i", body, pos)
        if kind == 0:
            cmd = bson.decode(body[pos:pos + size])
        else:
            name_end = body.index(b"\x00", pos + 4)
            ident = body[pos + 4:name_end].decode()
            sequences[ident] = bson.decode_all(body[name_end + 1:pos + size])
        pos += size
    cmd.update(sequences)
    return flags, cmd


def _parse_query(body: bytes) -> dict[str, Any]:
    """The query document of an OP_QUERY body (flags, collection name, skip, return, query)."""
    name_end = body.index(b"\x00", 4)
    pos = name_end + 1 + 8
    (size,) = struct.unpack_from("<i", body, pos)
    return bson.decode(body[pos:pos + size])


# -- the test fixture: the stand-in, or a real server when CAPSYNC_TEST_MONGODB_URI is set ---------

REAL_URI_ENV = "CAPSYNC_TEST_MONGODB_URI"


class MongoTarget:
    """Where a test writes: a URI and database, the stand-in when it is one, and a way to read back."""

    def __init__(self, uri: str, database: str, standin: MongoStandIn | None) -> None:
        self.uri, self.database, self.standin = uri, database, standin

    def documents(self, collection: str, **flt: Any) -> list[dict]:
        """Every document of `collection` (matching the equality filter), read back with pymongo."""
        with MongoClient(self.uri, serverSelectionTimeoutMS=3000) as client:
            return list(client[self.database][collection].find(flt))

    def require_standin(self) -> MongoStandIn:
        """The stand-in; skips the test on a real server (it cannot be stopped or slowed from here)."""
        if self.standin is None:
            pytest.skip("needs the MongoDB stand-in (stops it or slows it down)")
        return self.standin


@pytest.fixture(params=["standin", "real"])
def mongo_target(request: pytest.FixtureRequest):
    """A MongoDB to write to: the stand-in on a free port, or the real server at CAPSYNC_TEST_MONGODB_URI
    (skipped when that is not set). The database is unique to the test and dropped afterwards."""
    database = f"capsync_test_{os.getpid()}_{threading.get_ident() % 10000}_{time.monotonic_ns() % 10**9}"
    if request.param == "real":
        uri = os.environ.get(REAL_URI_ENV)
        if not uri:
            pytest.skip(f"set {REAL_URI_ENV} to run against a real MongoDB")
        yield MongoTarget(uri, database, None)
        with MongoClient(uri, serverSelectionTimeoutMS=3000) as client:
            client.drop_database(database)
        return
    standin = MongoStandIn().start()
    try:
        yield MongoTarget(standin.uri, database, standin)
    finally:
        standin.stop()
