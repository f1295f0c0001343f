"""Hostile but decodable capture files and declarations: every one is a 4xx with a reason, nothing
half-stored, and what the agent's writer accepts is exactly what the cloud ingests."""

from __future__ import annotations

import zlib
from datetime import datetime, timezone
from pathlib import Path

import cbor2
import trio
import pytest

from capsync.runtime import capture_reader
from capsync.runtime.capture_file import (
    FRAME,
    HEADER_MARK,
    MAX_RECORD_BYTES,
    PREAMBLE,
    RECORD_MARK,
    CaptureHeader,
    CaptureRecord,
    CaptureWriter,
    new_file_id,
)
from capsync.runtime.capture_writer import RecordRefused
from tests.test_cloud_support import PART_A, CloudEnv, declaration, env, upload  # noqa: F401


def _frame(marker: bytes, body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return FRAME.pack(marker, n, n ^ 0xFFFFFFFF, zlib.crc32(body)) + body


def _file(file_id: str, records: list[bytes], *, kind: str = "tabular", mime: str = "", created_ns: int = 1) -> bytes:
    """A capture file written by hand (not by our writer, which refuses all of these)."""
    header = CaptureHeader(file_id, PART_A, "sensor", "s1", "Readings", {}, (), kind, mime_type=mime,
                           created_ns=created_ns).to_dict()
    return PREAMBLE + _frame(HEADER_MARK, cbor2.dumps(header)) + b"".join(_frame(RECORD_MARK, r) for r in records)


def _shared_ref_bomb(levels: int) -> bytes:
    """A flat list whose item i is an array holding item i-1 twice, by reference: 2^levels leaves if expanded."""
    items = b"\xd8\x1c\x81\x61x"  # shareable(["x"])
    for i in range(levels):
        ref = b"\xd8\x1d" + cbor2.dumps(i)
        items += b"\xd8\x1c\x82" + ref + ref  # shareable([sharedref(i), sharedref(i)])
    assert levels + 1 < 24
    return b"\x84\x01\x01\xa1\x61x" + bytes([0x80 + levels + 1]) + items + b"\xf6"


HOSTILE_RECORDS = {
    "shared references": _shared_ref_bomb(20),
    "bignum of 5000 digits": cbor2.dumps([1, 1, {"x": 10**5000}, None]),
    "bignum of 33 bytes": cbor2.dumps([1, 1, {"x": 2**264}, None]),
    "time at 2^63": cbor2.dumps([2**63, 1, {"x": 1}, None]),
    "negative time": cbor2.dumps([-1, 1, {"x": 1}, None]),
    "date tag": cbor2.dumps([1, 1, {"x": datetime(2026, 1, 1, tzinfo=timezone.utc)}, None]),
    "nested 100 deep": cbor2.dumps([1, 1, {"x": eval("[" * 100 + "]" * 100)}, None]),
}


def _leftover_bytes(env: CloudEnv) -> list[Path]:
    return [p for d in ("uploads", "files") for p in (env.data_dir / d).rglob("*") if p.is_file()]


@pytest.mark.parametrize("what", sorted(HOSTILE_RECORDS))
async def test_a_hostile_record_is_a_422_with_a_reason_and_leaves_nothing(env: CloudEnv, what: str) -> None:
    fid = new_file_id()
    data = _file(fid, [cbor2.dumps([1, 1, {"ok": 1}, None]), HOSTILE_RECORDS[what]])
    async with env.client() as c:
        r = await upload(c, fid, data, chunk=4096)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "capture file rejected"
        assert "damaged" in r.json()["detail"]
        assert (await c.get(f"/v1/files/{fid}")).json()["state"] == "unknown"  # can be sent again
        assert (await c.get("/v1/tabular")).json()["items"] == []
    assert _leftover_bytes(env) == []


async def test_a_shared_reference_bomb_is_refused_without_expanding(env: CloudEnv) -> None:
    fid = new_file_id()
    data = _file(fid, [_shared_ref_bomb(22)])  # 2^60 copies if expanded
    async with env.client() as c:
        r = await upload(c, fid, data, chunk=4096)
    assert r.status_code == 422 and "shared references" in r.json()["detail"], r.text


async def test_a_header_time_beyond_64_bits_is_refused(env: CloudEnv) -> None:
    fid = new_file_id()
    async with env.client() as c:
        r = await upload(c, fid, _file(fid, [], created_ns=2**64), chunk=4096)
    assert r.status_code == 422 and "created_ns" in r.json()["detail"], r.text
    assert _leftover_bytes(env) == []


async def test_a_frame_longer_than_the_record_limit_is_refused_before_it_is_read(env: CloudEnv) -> None:
    fid = new_file_id()
    data = _file(fid, []) + _frame(RECORD_MARK, b"\x80", length=MAX_RECORD_BYTES + 1)
    async with env.client() as c:
        r = await upload(c, fid, data, chunk=4096)
    assert r.status_code == 422, r.text
    assert f"larger than the {MAX_RECORD_BYTES} bytes" in r.json()["detail"]


async def test_a_file_with_too_many_records_is_refused(env: CloudEnv, monkeypatch) -> None:
    monkeypatch.setattr(capture_reader, "MAX_RECORDS_PER_FILE", 10)
    fid = new_file_id()
    data = _file(fid, [cbor2.dumps([i, i, {"i": i}, None]) for i in range(11)])
    async with env.client() as c:
        r = await upload(c, fid, data, chunk=4096)
    assert r.status_code == 422 and "more than 10 records" in r.json()["detail"], r.text


@pytest.mark.parametrize("mime", ["text/plain\r\nX-Evil: 1", "image/png\n", "a\x00b"])
async def test_a_declared_mime_type_with_control_characters_is_a_400(env: CloudEnv, mime: str) -> None:
    async with env.client() as c:
        r = await c.post("/v1/files/plainfile01", json=declaration(b"abc", "file", mime_type=mime))
        assert r.status_code == 400 and "mime_type" in r.json()["detail"], r.text
        r = await c.post("/v1/files/plainfile02", json=declaration(b"abc", "file", name="a\nb.txt"))
        assert r.status_code == 400 and "name" in r.json()["detail"], r.text
    assert _leftover_bytes(env) == []


async def test_a_capture_header_mime_type_with_cr_lf_is_served_as_octet_stream(env: CloudEnv) -> None:
    fid = new_file_id()
    data = _file(fid, [cbor2.dumps([1, 1, b"\x89PNG", {"mime_type": "image/png\r\nSet-Cookie: x"}])],
                 kind="binary", mime="image/jpeg\r\nX-Evil: 1")
    async with env.client() as c:
        r = await upload(c, fid, data, chunk=4096)
        assert r.status_code == 200, r.text
        item = (await c.get("/v1/binary")).json()["items"][0]
        assert item["mime_type"] == "application/octet-stream"
        got = await c.get(f"/v1/binary/{item['id'] if 'id' in item else item['item_id']}")
        assert got.status_code == 200 and got.content == b"\x89PNG"


@pytest.mark.parametrize("path", ["/v1/files/AAAAAAAAAA%0A", "/v1/files/AAAAAAAAAA%0A/data?offset=0",
                                  "/v1/files/AAAAAAAAAA%0A/commit"])
async def test_an_id_with_a_trailing_newline_is_a_400(env: CloudEnv, path: str) -> None:
    async with env.client() as c:
        method = "PUT" if "/data" in path else "POST"
        kw = {"content": b"x"} if method == "PUT" else {"json": declaration(b"x")}
        r = await c.request(method, path, **kw)
        assert r.status_code == 400 and r.json()["error"] == "invalid file id", r.text
        assert (await c.get("/v1/files/AAAAAAAAAA%0A")).status_code == 400
    assert _leftover_bytes(env) == []


@pytest.mark.parametrize("payload", [
    {"x": 2**300}, {"x": datetime(2026, 1, 1, tzinfo=timezone.utc)}, {"x": {1, 2}}, {"x": eval("[" * 70 + "]" * 70)},
])
def test_the_writer_refuses_what_the_cloud_would_refuse(tmp_path: Path, payload: dict) -> None:
    header = CaptureHeader(new_file_id(), PART_A, "sensor", "s1", "Readings", {}, (), "tabular")
    w = CaptureWriter.create(tmp_path, header)
    w.append(CaptureRecord(1, 2, {"fine": [1, 2.5, "s", None, True, {"k": b"\x00"}]}))
    with pytest.raises(RecordRefused):
        w.append(CaptureRecord(1, 2, payload))
    with pytest.raises(RecordRefused):
        w.append(CaptureRecord(2**63, 2, {"x": 1}))
    assert w.record_count == 1
    path = w.finish()
    assert len(capture_reader.read_capture(path).records) == 1  # the file stayed readable


async def test_what_the_writer_accepts_the_cloud_ingests(env: CloudEnv, tmp_path: Path) -> None:
    header = CaptureHeader(new_file_id(), PART_A, "sensor", "s1", "Readings", {"n": 2**63 - 1}, ("t",), "tabular")
    w = CaptureWriter.create(tmp_path, header)
    edge = {"max": 2**256 - 1, "min": -(2**63), "nan": float("nan"), "b": b"\xff", "deep": eval("[" * 60 + "]" * 60),
            "u": "\u2603\x00", "keys": {"": 0}}
    w.append(CaptureRecord(0, 2**63 - 1, edge, {"m": 1}))
    data = w.finish().read_bytes()
    async with env.client() as c:
        r = await upload(c, header.file_id, data, chunk=4096)
        assert r.status_code == 200, r.text
        row = (await c.get("/v1/tabular")).json()["items"][0]
    assert row["payload"]["max"] == 2**256 - 1 and row["payload"]["min"] == -(2**63)


class _OddReadings:
    """A resource whose every other reading is a value no reader accepts (a 300-bit integer)."""

    def __init__(self, real) -> None:
        self._real, self._n = real, 0

    def __getattr__(self, name):
        return getattr(self._real, name)

    async def capture(self, method, params):
        self._n += 1
        return {"n": self._n} if self._n % 2 else {"n": 2**300}


async def test_a_reading_the_cloud_would_refuse_is_a_failed_capture_and_the_file_syncs(
        env: CloudEnv, tmp_path: Path, autojump_clock) -> None:
    from capsync.actors.collector import Collector
    from capsync.runtime.blocking import inline_blocking
    from tests.test_collector import _collector

    caps = tmp_path / "caps"
    c = _collector(caps, "sensor", "Readings", 2, part_id=PART_A)
    c = Collector(c.plan, _OddReadings(c._resource), c._settings, c._wall)
    with inline_blocking():
        async with trio.open_nursery() as n:
            await n.start(c.run)
            await trio.sleep(2.999)
            n.cancel_scope.cancel()
    stats = c.statistics()
    assert (stats.captured, stats.failed) == (3, 3), stats
    assert "bignum" in stats.last_error
    (path,) = [p for p in caps.rglob("*.capture")]
    fid = capture_reader.read_capture(path).header.file_id
    async with env.client() as cl:
        r = await upload(cl, fid, path.read_bytes(), chunk=4096)
    assert r.status_code == 200 and r.json()["records"] == 3, r.text


async def test_a_header_beyond_the_header_limit_is_refused_and_the_writer_refuses_it_too(
        env: CloudEnv, tmp_path: Path) -> None:
    from capsync.runtime.capture_file import MAX_HEADER_BYTES

    fid = new_file_id()
    big = {"p": "x" * MAX_HEADER_BYTES}
    header = CaptureHeader(fid, PART_A, "sensor", "s1", "Readings", big, (), "tabular", created_ns=1)
    data = PREAMBLE + _frame(HEADER_MARK, cbor2.dumps(header.to_dict()))
    async with env.client() as c:
        r = await upload(c, fid, data, chunk=1 << 20)
    assert r.status_code == 422 and f"larger than the {MAX_HEADER_BYTES} bytes" in r.json()["detail"], r.text
    with pytest.raises(ValueError, match="header of"):
        CaptureWriter.create(tmp_path, header)
