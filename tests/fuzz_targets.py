"""Fuzz targets for every decoder that faces the network, shared by tests/test_fuzz_decoders.py
(Hypothesis, in the suite) and scripts/fuzz.py (atheris, coverage-guided, longer runs).

Each target is `check(data: bytes) -> None`: it feeds `data` to the real public function and
returns when the answer is a value or the documented refusal. Anything else (another exception,
an answer of the wrong shape) escapes as that exception or an AssertionError: a finding. Time is
bounded by the callers (a Hypothesis deadline; the fuzz script's per-input timer).

Targets (NAME: what it feeds, what counts as a refusal):

- rpc_decode: `capsync.runtime.rpc.decode` (+ `call_id`, `reply_outcome` on what it returns); BadMessage.
- resource_dispatch: `ResourceServer.dispatch` on a registry with a fake sensor and camera; it
  must always answer a reply map whose error type is one of the documented ones, and the reply
  must encode.
- remote_reply: a reply as the remote client reads it: `RpcClient.call` over a stand-in socket,
  then `capsync.runtime.remote.decode_result` on the result; RpcError / RemotePartError.
- sync_protocol: the cloud's answer as the agent's `CloudClient` parses it (any status code,
  any body, through an httpx MockTransport), and the JSON models `UploadStart`, `FileStatus`,
  `ErrorBody`; pydantic's ValidationError from the models, only CloudError subclasses from the client.
- capture_reader: a capture file through `read_capture` and the cloud's `ingest.capture_file`;
  CaptureFormatError (unreadable header) / a reported Damage / ingest.Rejected.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import cbor2
import httpx
import pydantic
import trio

from capsync.actors.resource_server import ResourceServer
from capsync.cloud import ingest
from capsync.cloud.store import Upload
from capsync.runtime import remote, rpc
from capsync.runtime.capture_file import CaptureHeader, CaptureRecord, CaptureWriter
from capsync.runtime.capture_reader import CaptureContents, CaptureFormatError, read_capture
from capsync.runtime.cloud_client import CloudClient, CloudError
from capsync.runtime.resources.registry import ResourceRegistry
from capsync.runtime.resources.resource import Binary
from capsync.runtime.sync_protocol import ErrorBody, FileKind, FileStatus, UploadStart

#: Error types ResourceServer documents; any other type means an exception escaped a handler.
DOCUMENTED_SERVER_ERRORS = {"UnknownResource", "UnknownMethod", "WrongType", "ResourceError", "Timeout",
                            "BadMessage"}
SECRET = "fuzz-secret"


# --- rpc.decode --------------------------------------------------------------------------------


def check_rpc_decode(data: bytes) -> None:
    """rpc.decode and the checks a server and a client run on a decoded message."""
    try:
        msg = rpc.decode(data, max_bytes=rpc.MAX_CALL_BYTES)
    except rpc.BadMessage:
        return
    assert isinstance(msg, dict)
    for check in (rpc.call_id, rpc.reply_outcome):
        try:
            check(msg)
        except rpc.BadMessage:
            pass


# --- ResourceServer.dispatch -------------------------------------------------------------------

_server: ResourceServer | None = None


def _resource_server() -> ResourceServer:
    global _server
    if _server is None:
        registry = ResourceRegistry()
        registry.build_all([SimpleNamespace(type="sensor", name="s1", model="fake", attributes={}),
                            SimpleNamespace(type="camera", name="cam", model="fake", attributes={})])
        _server = ResourceServer(registry, SECRET, call_timeout_s=1.0)
    return _server


def check_resource_dispatch(data: bytes) -> None:
    """One message to the resource server: always one well-formed, encodable reply."""
    reply = trio.run(_resource_server().dispatch, data)
    assert isinstance(reply, dict) and "id" in reply, reply
    assert ("result" in reply) != ("error" in reply), reply
    if "error" in reply:
        err = reply["error"]
        assert err["type"] in DOCUMENTED_SERVER_ERRORS, f"undocumented error reply {err!r}"
        assert isinstance(err["message"], str)
    encoded = rpc.encode_reply(reply)
    back = rpc.decode(encoded)  # what the client will read must pass the client's own decoder
    assert back.get("id") == reply["id"]


# --- the remote client's replies ---------------------------------------------------------------


class _OneReplySocket:
    """Stands in for a WebSocketConnection: takes the call, answers with the fuzzed bytes."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply

    async def send_message(self, message: bytes) -> None:
        assert rpc.decode(message)["id"] == 1

    async def get_message(self) -> bytes:
        return self.reply


def check_remote_reply(data: bytes) -> None:
    """A reply read by RpcClient.call, then the capture result read by remote.decode_result."""

    async def main() -> None:
        client = rpc.RpcClient(_OneReplySocket(data))  # type: ignore[arg-type]
        try:
            result = await client.call("resource.list")
        except rpc.RpcError:
            return
        try:
            value = remote.decode_result(result)
        except remote.RemotePartError:
            return
        assert isinstance(value, dict) or isinstance(value, Binary) or (
            isinstance(value, list) and all(isinstance(b, Binary) for b in value)), type(value)

    trio.run(main)


# --- the sync protocol's JSON, as the agent and the cloud parse it ------------------------------


def check_sync_protocol(data: bytes) -> None:
    """The models, and CloudClient reading an answer with the status code from the first byte."""
    for model in (UploadStart, FileStatus, ErrorBody):
        try:
            model.model_validate_json(data)
        except pydantic.ValidationError:
            pass
    status_code = 200 if not data else (200, 409, 422, 400, 401, 404, 413, 500, 503)[data[0] % 9]
    body = data[1:]

    async def main() -> None:
        transport = httpx.MockTransport(lambda request: httpx.Response(status_code, content=body))
        client = CloudClient("http://fuzz.test", "p1", "s", transport=transport)
        try:
            for call in (lambda: client.status("f" * 32), lambda: client.commit("f" * 32)):
                try:
                    status = await call()
                except CloudError:  # an unparsable 200 included: CloudUnavailable
                    continue
                assert isinstance(status, FileStatus)
        finally:
            await client.aclose()

    trio.run(main)


# --- capture files, as the cloud's ingest reads them --------------------------------------------

_scratch: Path | None = None


def _scratch_file() -> Path:
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="capsync-fuzz-")) / "input.capture"
    return _scratch


def check_capture_reader(data: bytes) -> None:
    """A capture file: records and maybe a Damage, or CaptureFormatError; the cloud's ingest: rows or Rejected."""
    path = _scratch_file()
    path.write_bytes(data)
    try:
        contents = read_capture(path)
    except CaptureFormatError:
        contents = None
    if contents is not None:
        assert isinstance(contents, CaptureContents)
        assert contents.good_length <= len(data)
        assert (contents.damage is None) == (contents.good_length == len(data))
        file_id, part_id = contents.header.file_id, contents.header.part_id
    else:
        file_id, part_id = "fuzzfile01", "p1"
    upload = Upload(part_id, file_id, FileKind.CAPTURE, len(data), "0" * 64)
    try:
        ingest.capture_file(upload, path, len(data), 1)
    except ingest.Rejected:
        pass


# --- seeds: valid inputs to mutate --------------------------------------------------------------


def seed_capture_files() -> list[bytes]:
    """A few valid capture files (tabular and binary) for the capture_reader target to mutate."""
    out = []
    with tempfile.TemporaryDirectory() as d:
        for kind, payloads in (("tabular", [{"a": 1.5, "b": [1, 2, {"c": "x"}]}, {"n": -3, "s": "é"}]),
                               ("binary", [b"\xff\xd8jpeg", b""])):
            header = CaptureHeader(f"seedfile{kind}", "p1", "sensor", "s1", "Readings", {"p": 1}, ("t",), kind,
                                   mime_type="image/jpeg" if kind == "binary" else "")
            w = CaptureWriter.create(Path(d), header)
            for i, p in enumerate(payloads):
                w.append(CaptureRecord(1_000 + i, 1_001 + i, p, {"i": i} if kind == "binary" else None))
            out.append(w.finish().read_bytes())
    return out


def seed_messages() -> list[bytes]:
    """Valid calls and replies for the RPC targets."""
    calls = [
        {"id": 1, "method": "resource.capture", "params": {"resource": "s1", "type": "sensor", "method": "Readings",
                                                            "params": {}}},
        {"id": "a", "method": "resource.capture", "params": {"resource": "cam", "method": "GetImages", "params": {}}},
        {"id": 2, "method": "resource.list"},
        {"id": 1, "result": {"readings": {"a": 1.0}}},
        {"id": 1, "result": {"binary": [{"data": b"x", "mime_type": "image/png", "metadata": {}}], "many": True}},
        {"id": 1, "error": {"type": "ResourceError", "message": "boom"}},
    ]
    return [cbor2.dumps(c) for c in calls]


def seed_json() -> list[bytes]:
    """Valid sync protocol answers and declarations (first byte: the status code index)."""
    bodies = [
        b'{"file_id": "ffffffff", "state": "committed", "offset": 3, "size": 3, "records": 1, "sha256": null}',
        b'{"kind": "capture", "size": 3, "sha256": "' + b"a" * 64 + b'"}',
        b'{"error": "stale offset", "detail": "", "status": {"file_id": "ffffffff", "state": "partial", "offset": 1}}',
    ]
    return [bytes([i]) + b for i in (0, 1, 2) for b in bodies]


TARGETS: dict[str, tuple[Callable[[bytes], None], Callable[[], list[bytes]]]] = {
    "rpc_decode": (check_rpc_decode, seed_messages),
    "resource_dispatch": (check_resource_dispatch, seed_messages),
    "remote_reply": (check_remote_reply, seed_messages),
    "sync_protocol": (check_sync_protocol, seed_json),
    "capture_reader": (check_capture_reader, seed_capture_files),
}


def cleanup() -> None:
    """Remove the scratch dir of the capture_reader target."""
    if _scratch is not None:
        try:
            os.unlink(_scratch)
        except FileNotFoundError:
            pass
        os.rmdir(_scratch.parent)

