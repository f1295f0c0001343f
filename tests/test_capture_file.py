"""The capture file format: round trips, damage detection at every byte, recovery, paths, writer.

Byte-level tests build a small file with CaptureWriter, remember where each frame ends, and then
cut, flip or extend the bytes; the reader must keep exactly the complete, intact frames before
the first bad one.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import capsync.runtime.capture_writer as capture_writer
from capsync.runtime.capture_file import (
    CAPTURE_SUFFIX,
    FORMAT_VERSION,
    FRAME,
    PREAMBLE,
    PROG_SUFFIX,
    RECORD_MARK,
    CaptureContents,
    CaptureFormatError,
    CaptureHeader,
    CaptureRecord,
    CaptureWriter,
    Damage,
    DataKind,
    capture_path,
    contents_as_json_lines,
    encode_frame,
    iter_capture,
    new_file_id,
    read_capture,
    recover_dir,
    recover_prog,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers(-(2**256), 2**256 - 1) | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
ns = st.integers(min_value=0, max_value=2**63 - 1)
metadata = st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=3)
tabular_records = st.builds(
    CaptureRecord, ns, ns, st.dictionaries(st.text(max_size=10), json_values, max_size=6), metadata
)
binary_records = st.builds(CaptureRecord, ns, ns, st.binary(max_size=300), metadata)


def header(kind: DataKind = DataKind.TABULAR, **kw) -> CaptureHeader:
    fields = dict(
        file_id=new_file_id(), part_id="part-1", resource_type="sensor", resource_name="s1",
        method="Readings", params={"a": 1}, tags=("x", "y"), kind=kind,
        mime_type="image/jpeg" if kind is DataKind.BINARY else "",
    )
    fields.update(kw)
    return CaptureHeader(**fields)


def write(directory: Path, records: list[CaptureRecord], kind: DataKind = DataKind.TABULAR,
          finish: bool = True) -> tuple[Path, bytes, list[int]]:
    """A capture file holding `records`: its path, its bytes, and the offset where each frame ends
    (ends[0] is the end of the header; ends[i] the end of record i-1)."""
    w = CaptureWriter.create(directory, header(kind))
    ends = [w.size_bytes]
    for r in records:
        w.append(r)
        ends.append(w.size_bytes)
    path = w.finish() if finish else w.path
    if not finish:
        w.close_unfinished()
    data = path.read_bytes()
    assert len(data) == ends[-1]
    return path, data, ends


def frame_index(ends: list[int], offset: int) -> int:
    """Index of the record whose frame holds byte `offset` (which lies past the header)."""
    return next(i for i in range(len(ends) - 1) if ends[i] <= offset < ends[i + 1])


@pytest.fixture(scope="session")
def scratch(tmp_path_factory):
    """A directory usable inside @given (unlike the function-scoped tmp_path). It is shared by all
    examples, which is safe because every file name holds a fresh file id, and fast because the
    writer's directory fsyncs happen once."""
    d = tmp_path_factory.mktemp("ex")
    return lambda: d


def overwrite(path: Path, data: bytes) -> None:
    """Make `path` hold `data`. Unlike write_bytes it does not truncate to zero first, which on
    ext4 forces a flush on close and makes byte-by-byte tests a hundred times slower."""
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.write(data)
        f.truncate()


def put_byte(path: Path, offset: int, value: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes([value]), offset)
    finally:
        os.close(fd)


SMALL = [
    CaptureRecord(1, 2, {"temp": 21.5, "ok": True}),
    CaptureRecord(3, 4, {"temp": None, "tags": ["a", "é"]}, {"note": "x"}),
    CaptureRecord(5, 6, {}),
]


# --- round trips ---------------------------------------------------------------------------------


@FAST
@given(records=st.lists(tabular_records, max_size=5))
def test_tabular_records_round_trip(scratch, records):
    path, _, ends = write(scratch(), records)
    c = read_capture(path)
    assert c.records == records
    assert c.damage is None and c.good_length == ends[-1]
    assert c.header.kind is DataKind.TABULAR


@FAST
@given(records=st.lists(binary_records, max_size=6))
def test_binary_records_round_trip_as_bytes(scratch, records):
    path, data, _ = write(scratch(), records, DataKind.BINARY)
    c = read_capture(path)
    assert c.records == records and c.damage is None
    assert all(type(r.payload) is bytes for r in c.records)
    for r in records:  # stored as raw CBOR byte strings, not base64 text
        if len(r.payload) > 8:
            assert r.payload in data


def test_header_round_trips_through_the_file(tmp_path):
    h = header(DataKind.BINARY, params={"camera_name": "c", "n": [1, 2]}, metadata={"retention_policy": {"days": 3}},
               created_ns=1_700_000_000_123_456_789)
    w = CaptureWriter.create(tmp_path, h)
    assert read_capture(w.finish()).header == h


def test_header_dict_round_trip_and_errors():
    h = header()
    d = h.to_dict()
    assert d["kind"] == "tabular" and d["tags"] == ["x", "y"] and d["version"] == FORMAT_VERSION
    assert CaptureHeader.from_dict(json.loads(json.dumps(d))) == h
    assert CaptureHeader.from_dict({**d, "added_by_a_newer_writer": 1}) == h
    for key in ("file_id", "kind", "tags", "version"):
        with pytest.raises(ValueError, match=key):
            CaptureHeader.from_dict({k: v for k, v in d.items() if k != key})
    with pytest.raises(ValueError, match="kind"):
        CaptureHeader.from_dict({**d, "kind": "video"})
    with pytest.raises(ValueError, match="created_ns"):
        CaptureHeader.from_dict({**d, "created_ns": "soon"})
    assert header(kind="binary", tags=["a"]).kind is DataKind.BINARY


# --- damage: truncation, bit flips, zeros, garbage -----------------------------------------------


@SLOW
@given(records=st.lists(tabular_records, min_size=1, max_size=3))
def test_truncation_at_every_offset_keeps_exactly_the_complete_records(scratch, records):
    path, data, ends = write(scratch(), records)
    for cut in range(len(data), -1, -1):  # cutting from the end keeps each step a cheap truncate
        os.truncate(path, cut)
        if cut < ends[0]:
            with pytest.raises(CaptureFormatError):
                read_capture(path)
            continue
        c = read_capture(path)
        complete = sum(1 for e in ends[1:] if e <= cut)
        assert c.records == records[:complete]
        assert c.good_length == ends[complete]
        if cut in ends:
            assert c.damage is None
        else:
            assert c.damage is not None and c.damage.offset == ends[complete]
            assert c.damage.reason.startswith("torn frame")


def test_every_single_bit_flip_in_the_records_is_detected(tmp_path):
    f, data, ends = write(tmp_path, SMALL)
    for bit in range(ends[0] * 8, len(data) * 8):
        put_byte(f, bit // 8, data[bit // 8] ^ 1 << (bit % 8))
        c = read_capture(f)
        put_byte(f, bit // 8, data[bit // 8])
        i = frame_index(ends, bit // 8)
        assert c.records == SMALL[:i], bit
        assert c.damage == Damage(ends[i], c.damage.reason) and c.good_length == ends[i], bit


@FAST
@given(records=st.lists(binary_records, min_size=1, max_size=4), where=st.floats(0, 1, exclude_max=True),
       bit=st.integers(0, 7))
def test_a_flipped_bit_drops_its_record_and_everything_after(scratch, records, where, bit):
    path, data, ends = write(scratch(), records, DataKind.BINARY)
    pos = ends[0] + int(where * (len(data) - ends[0]))
    put_byte(path, pos, data[pos] ^ 1 << bit)
    c = read_capture(path)
    i = frame_index(ends, pos)
    assert c.records == records[:i]
    assert c.damage is not None and c.damage.offset == ends[i]


def test_every_bit_flip_in_preamble_or_header_is_a_format_error(tmp_path):
    f, data, ends = write(tmp_path, SMALL[:1])
    for bit in range(ends[0] * 8):
        put_byte(f, bit // 8, data[bit // 8] ^ 1 << (bit % 8))
        with pytest.raises(CaptureFormatError):
            read_capture(f)
        put_byte(f, bit // 8, data[bit // 8])


@FAST
@given(zeros=st.integers(1, 5000))
def test_zero_filled_tail_is_detected(scratch, zeros):
    path, data, ends = write(scratch(), SMALL)
    overwrite(path, data + bytes(zeros))
    c = read_capture(path)
    assert c.records == SMALL and c.good_length == len(data)
    assert c.damage.offset == len(data) and c.damage.reason.startswith("zero-filled tail")


def test_zeros_over_the_last_records_are_detected(tmp_path):
    path, data, ends = write(tmp_path, SMALL)
    path.write_bytes(data[: ends[2]] + bytes(len(data) - ends[2]))  # power loss: size grew, data did not
    c = read_capture(path)
    assert c.records == SMALL[:2] and c.damage.offset == ends[2]
    assert c.damage.reason.startswith("zero-filled tail")


@FAST
@given(garbage=st.binary(min_size=1, max_size=200))
def test_garbage_after_the_last_record_is_detected(scratch, garbage):
    path, data, _ = write(scratch(), SMALL)
    overwrite(path, data + garbage)
    c = read_capture(path)
    assert c.records == SMALL and c.good_length == len(data)
    assert c.damage is not None and c.damage.offset == len(data)


@pytest.mark.parametrize("body, reason", [
    (cbor2.dumps([1, 2, "not a map", None]), "malformed record"),
    (cbor2.dumps([1.5, 2, {}, None]), "malformed record"),
    (cbor2.dumps({"requested_ns": 1}), "malformed record"),
    (cbor2.dumps([1, 2, {}, "meta"]), "malformed record"),
    (b"\xff", "undecodable record"),
    (cbor2.dumps([1, 2, {}, None]) + b"\x00", "undecodable record"),
])
def test_checksummed_but_malformed_record_is_damage(tmp_path, body, reason):
    path, data, _ = write(tmp_path, SMALL[:1])
    path.write_bytes(data + encode_frame(RECORD_MARK, body) + encode_frame(RECORD_MARK, cbor2.dumps([7, 8, {}, None])))
    c = read_capture(path)
    assert c.records == SMALL[:1] and c.damage.offset == len(data) and c.damage.reason.startswith(reason)


def test_a_huge_bogus_length_allocates_nothing_big(tmp_path):
    path, data, _ = write(tmp_path, SMALL)
    n = 64 << 20
    path.write_bytes(data + FRAME.pack(RECORD_MARK, n, n ^ 0xFFFFFFFF, 0) + b"x" * 100)
    tracemalloc.start()
    try:
        c = read_capture(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert c.records == SMALL and c.damage.reason.startswith("torn frame")
    assert peak < 4 << 20


@pytest.mark.parametrize("content, offset", [
    (b"", 0), (PREAMBLE[:5], 5), (b"GIF89a" + bytes(20), 0), (PREAMBLE[:8] + b"\x00\x00\x00\x09", 8),
    (PREAMBLE, 12), (PREAMBLE + bytes(40), 12),
])
def test_format_error_names_the_file_and_byte_offset(tmp_path, content, offset):
    path = tmp_path / "bad.capture"
    path.write_bytes(content)
    with pytest.raises(CaptureFormatError) as info:
        read_capture(path)
    assert info.value.path == path and info.value.offset == offset
    assert str(path) in str(info.value) and f"byte {offset}" in str(info.value)


# --- streaming and inspect -----------------------------------------------------------------------


def test_iter_capture_streams_header_records_then_damage(tmp_path):
    path, data, ends = write(tmp_path, SMALL)
    assert list(iter_capture(path)) == [read_capture(path).header, *SMALL]
    path.write_bytes(data[:-3])
    items = list(iter_capture(path))
    assert isinstance(items[0], CaptureHeader) and items[1:3] == SMALL[:2]
    assert items[3] == Damage(ends[2], items[3].reason) and len(items) == 4


def test_inspect_lines_for_tabular_file_with_damage(tmp_path):
    path, data, ends = write(tmp_path, SMALL)
    path.write_bytes(data + b"junk")
    lines = [json.loads(line) for line in contents_as_json_lines(path)]
    assert lines[0]["type"] == "header" and lines[0]["resource_name"] == "s1" and lines[0]["kind"] == "tabular"
    assert [ln["payload"] for ln in lines[1:4]] == [r.payload for r in SMALL]
    assert lines[2]["metadata"] == {"note": "x"} and lines[2]["offset"] == ends[1]
    assert lines[4]["type"] == "damage" and lines[4]["offset"] == len(data) and len(lines) == 5


def test_inspect_shows_binary_as_size_and_hash_unless_asked(tmp_path):
    blob = bytes(range(256)) * 3
    path, _, _ = write(tmp_path, [CaptureRecord(1, 2, blob, {"source": "left"})], DataKind.BINARY)
    (_, rec) = [json.loads(line) for line in contents_as_json_lines(path)]
    assert rec["payload"] == {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    assert rec["metadata"] == {"source": "left"}
    (_, rec) = [json.loads(line) for line in contents_as_json_lines(path, include_payload=True)]
    assert base64.b64decode(rec["payload"]["base64"]) == blob


def test_inspect_survives_values_json_cannot_hold(tmp_path):
    path, _, _ = write(tmp_path, [CaptureRecord(1, 2, {"raw": b"\x00\x01", (1, 2): "tuple key"})])
    (_, rec) = [json.loads(line) for line in contents_as_json_lines(path)]
    assert rec["payload"]["raw"]["size"] == 2 and rec["payload"]["[1, 2]"] == "tuple key"


# --- recovery ------------------------------------------------------------------------------------


@SLOW
@given(records=st.lists(tabular_records, min_size=1, max_size=4), cut=st.floats(0, 1), tail=st.binary(max_size=40))
def test_recover_prog_keeps_exactly_the_good_prefix(scratch, records, cut, tail):
    prog, data, ends = write(scratch(), records, finish=False)
    keep = ends[0] + int(cut * (len(data) - ends[0]))
    overwrite(prog, data[:keep] + tail)
    expected = read_capture(prog)
    r = recover_prog(prog)
    if not expected.records and expected.damage is None:  # a header and nothing else: holds nothing
        assert r.empty and r.result is None and not prog.exists() and not prog.with_suffix(CAPTURE_SUFFIX).exists()
        return
    assert not prog.exists() and r.result == prog.with_suffix(CAPTURE_SUFFIX)
    c = read_capture(r.result)
    assert c.damage is None and c.records == expected.records and r.records == len(expected.records)
    assert r.result.stat().st_size == expected.good_length
    assert r.damage == expected.damage
    assert r.result.read_bytes() == data[: expected.good_length]


def test_recover_removes_a_file_opened_ahead_that_got_no_record(tmp_path):
    prog, _, _ = write(tmp_path, [], finish=False)
    r = recover_prog(prog)
    assert r.empty and r.result is None and r.records == 0 and not list(prog.parent.iterdir())


def test_recover_clean_prog_keeps_every_byte(tmp_path):
    prog, data, _ = write(tmp_path, SMALL, finish=False)
    r = recover_prog(prog)
    assert r.damage is None and r.records == 3 and r.result.read_bytes() == data


@pytest.mark.parametrize("content", [b"", b"\x89CA", PREAMBLE, PREAMBLE + b"\x8fHDR\x00", b"not a capture file at all"])
def test_headerless_prog_is_set_aside_as_corrupt_not_deleted(tmp_path, content):
    prog = tmp_path / "x" / f"20260101T000000.000000Z_{new_file_id()}.prog"
    prog.parent.mkdir()
    prog.write_bytes(content)
    r = recover_prog(prog)
    corrupt = prog.with_suffix(".corrupt")
    assert r.result is None and r.records == 0 and r.damage is not None
    assert not prog.exists() and corrupt.read_bytes() == content
    prog.write_bytes(content)  # a second one with the same name does not overwrite the first
    assert recover_prog(prog).result is None and len(list(prog.parent.glob("*.corrupt"))) == 2


def test_recover_dir_finds_progs_recursively_and_leaves_finished_files(tmp_path):
    finished, finished_bytes, _ = write(tmp_path, SMALL)
    torn, data, ends = write(tmp_path, SMALL, finish=False)
    torn.write_bytes(data[:-1])
    deep = tmp_path / "a" / "b" / "c" / "d.prog"
    deep.parent.mkdir(parents=True)
    deep.write_bytes(b"")
    results = {r.original: r for r in recover_dir(tmp_path)}
    assert set(results) == {torn, deep}
    assert results[torn].records == 2 and read_capture(results[torn].result).records == SMALL[:2]
    assert results[deep].result is None and deep.with_suffix(".corrupt").exists()
    assert finished.read_bytes() == finished_bytes
    assert list(tmp_path.rglob("*.prog")) == [] and recover_dir(tmp_path) == []
    assert recover_dir(tmp_path / "missing") == []


def test_kill_9_loses_nothing_already_appended(tmp_path):
    prog = tmp_path / "k.prog"
    script = f"""
import math, os, signal, sys
from pathlib import Path
from capsync.runtime.capture_file import CaptureHeader, CaptureRecord, CaptureWriter, DataKind
h = CaptureHeader("id", "p", "sensor", "s", "Readings", {{}}, (), DataKind.TABULAR)
w = CaptureWriter(Path({str(prog)!r}), h, fsync_interval_s=math.inf)
for i in range(500):
    w.append(CaptureRecord(i, i, {{"i": i}}))
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    r = recover_prog(prog)
    assert r.damage is None and r.records == 500
    assert [rec.payload["i"] for rec in read_capture(r.result).records] == list(range(500))


# --- the writer ----------------------------------------------------------------------------------


def test_header_is_durable_once_the_constructor_returns(tmp_path):
    w = CaptureWriter.create(tmp_path, header())
    c = read_capture(w.path)  # read while still open: a complete file with no records
    assert c.records == [] and c.damage is None and c.header == w.header
    assert w.header.created_ns > 0 and w.size_bytes == c.good_length and w.record_count == 0
    with pytest.raises(FileExistsError):
        CaptureWriter(w.path, w.header)
    w.close_unfinished()


@pytest.mark.parametrize("bad", [dict(params="a=1"), dict(tags=("ok", 3)), dict(part_id=None), dict(version=2),
                                 dict(metadata={"x": object()})])
def test_a_header_the_reader_would_refuse_is_refused_before_any_file_exists(tmp_path, bad):
    with pytest.raises(ValueError):
        CaptureWriter.create(tmp_path, header(**bad))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_append_returns_its_size_and_counts(tmp_path):
    w = CaptureWriter.create(tmp_path, header())
    before = w.size_bytes
    n = w.append(SMALL[0])
    assert n == w.size_bytes - before == w.path.stat().st_size - before and w.record_count == 1
    w.finish()


def test_finish_leaves_no_prog_and_is_idempotent(tmp_path):
    w = CaptureWriter.create(tmp_path, header())
    w.append(SMALL[0])
    final = w.finish()
    assert final.suffix == CAPTURE_SUFFIX and final.exists() and not w.path.exists()
    assert list(tmp_path.rglob("*" + PROG_SUFFIX)) == []
    assert w.finish() == final and w.statistics().state == "finished"
    with pytest.raises(ValueError, match="finished"):
        w.append(SMALL[1])
    assert read_capture(final).records == SMALL[:1]


def test_closed_unfinished_writer_refuses_work_and_leaves_prog(tmp_path):
    w = CaptureWriter.create(tmp_path, header())
    w.append(SMALL[0])
    w.close_unfinished()
    w.close_unfinished()
    assert w.path.exists() and w.statistics().state == "closed"
    for call in (lambda: w.append(SMALL[1]), w.sync, w.finish):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_payload_of_the_wrong_kind_is_refused_and_nothing_written(tmp_path):
    tab = CaptureWriter.create(tmp_path, header())
    binw = CaptureWriter.create(tmp_path, header(DataKind.BINARY))
    sizes = tab.size_bytes, binw.size_bytes
    bad = [(tab, CaptureRecord(1, 2, b"bytes")), (binw, CaptureRecord(1, 2, {"a": 1})),
           (tab, CaptureRecord(1.0, 2, {})), (tab, CaptureRecord(1, 2, {}, ["not a map"])),
           (tab, CaptureRecord(1, 2, {"x": object()}))]
    for w, rec in bad:
        with pytest.raises(TypeError):
            w.append(rec)
    assert (tab.size_bytes, binw.size_bytes) == sizes
    binw.append(CaptureRecord(1, 2, bytearray(b"ok")))
    for w in (tab, binw):
        c = read_capture(w.finish())
        assert c.damage is None and w.path.with_suffix(CAPTURE_SUFFIX).stat().st_size == w.size_bytes
    assert read_capture(binw.path.with_suffix(CAPTURE_SUFFIX)).records[0].payload == b"ok"


def test_fsync_follows_the_interval_on_the_injected_clock(tmp_path, monkeypatch):
    syncs = []
    monkeypatch.setattr(capture_writer, "_fdatasync", lambda fd: syncs.append(fd))
    now = [100.0]
    w = CaptureWriter.create(tmp_path, header(), fsync_interval_s=1.0, clock=lambda: now[0])
    assert w.opened_at == 100.0
    for t in (100.5, 101.0, 101.5, 102.1, 102.2):
        now[0] = t
        w.append(SMALL[0])
    assert len(syncs) == 2 and w.statistics().synced_bytes < w.size_bytes
    w.sync()
    assert len(syncs) == 3 and w.statistics().synced_bytes == w.size_bytes
    every = CaptureWriter.create(tmp_path, header(), fsync_interval_s=0, clock=lambda: now[0])
    never = CaptureWriter.create(tmp_path, header(), fsync_interval_s=math.inf, clock=lambda: now[0])
    for _ in range(3):
        every.append(SMALL[0])
        never.append(SMALL[0])
    assert len(syncs) == 6
    for x in (w, every, never):
        x.finish()


def test_sync_from_another_thread_never_calls_the_clock(tmp_path):
    main = threading.get_ident()

    def clock() -> float:
        assert threading.get_ident() == main, "clock called off the owner's thread"
        return 0.0

    w = CaptureWriter.create(tmp_path, header(), fsync_interval_s=math.inf, clock=clock)
    w.append(SMALL[0])
    errors = []
    t = threading.Thread(target=lambda: _catch(errors, w.sync))
    t.start()
    t.join()
    assert errors == [] and w.statistics().synced_bytes == w.size_bytes
    w.finish()


def _catch(errors: list, fn) -> None:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - reported to the test thread
        errors.append(exc)


def test_a_write_that_fails_half_way_is_cut_back(tmp_path, monkeypatch):
    w = CaptureWriter.create(tmp_path, header())
    w.append(SMALL[0])
    size = w.size_bytes

    def half_then_full(fd, buffers):
        data = b"".join(buffers)
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", half_then_full)
    with pytest.raises(OSError):
        w.append(SMALL[1])
    monkeypatch.undo()
    assert w.path.stat().st_size == size == w.size_bytes and w.record_count == 1
    w.append(SMALL[2])
    c = read_capture(w.finish())
    assert c.records == [SMALL[0], SMALL[2]] and c.damage is None


def test_a_failed_fsync_breaks_the_writer_and_keeps_the_prog(tmp_path, monkeypatch):
    def eio(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(capture_writer, "_fdatasync", eio)
    w = CaptureWriter.create(tmp_path, header(), fsync_interval_s=0)
    with pytest.raises(OSError):
        w.append(SMALL[0])
    for call in (lambda: w.append(SMALL[1]), w.finish):
        with pytest.raises(ValueError, match="broken"):
            call()
    w.close_unfinished()
    assert w.path.exists() and w.statistics().state == "broken"
    assert recover_prog(w.path).records == 1


# --- ids and paths -------------------------------------------------------------------------------


def test_file_ids_are_unique_url_safe_and_sort_by_creation():
    ids = [new_file_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    assert all(re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", i) for i in ids)


@pytest.mark.parametrize("type_, name, method, expected", [
    ("rdk:component:board", "my-esp32", "Analogs", ("rdk_component_board", "my-esp32", "Analogs")),
    ("board", "rdk:component:board/my-esp32", "Gpios", ("board", "rdk_component_board_my-esp32", "Gpios")),
    ("sensor", ".hidden", "../../etc", ("sensor", "_hidden", "_._.._etc")),
    ("camera", "cam 1\\x", "", ("camera", "cam_1_x", "_")),
    ("..", ".", "カメラ", (r"_\.-[0-9a-f]{10}", r"_-[0-9a-f]{10}", r"___-[0-9a-f]{10}")),
    ("sensor", "n" * 300, "Readings", ("sensor", "n" * 69 + "-[0-9a-f]{10}", "Readings")),
])
def test_capture_path_makes_each_component_safe_and_readable(tmp_path, type_, name, method, expected):
    h = header(resource_type=type_, resource_name=name, method=method, created_ns=1_795_603_308_076_934_993)
    p = capture_path(tmp_path, h)
    parts = p.relative_to(tmp_path).parts
    assert len(parts) == 4
    for part, pattern in zip(parts, expected):
        assert re.fullmatch(pattern, part), (part, pattern)
    assert p.name == f"20261125T104148.076934Z_{h.file_id}.prog"


def test_names_that_lose_every_character_stay_apart(tmp_path):
    a = capture_path(tmp_path, header(resource_name="カメラ"))
    b = capture_path(tmp_path, header(resource_name="センサ"))
    assert a.parent.parent != b.parent.parent


@FAST
@given(type_=st.text(), name=st.text(), method=st.text())
def test_capture_path_never_escapes_or_nests(type_, name, method):
    base = Path("/capture")
    p = capture_path(base, header(resource_type=type_, resource_name=name, method=method, created_ns=1))
    parts = p.relative_to(base).parts
    assert len(parts) == 4
    for part in parts:
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,79}", part.removesuffix(".prog")), part
    assert parts[-1].startswith("19700101T000000.000000Z_")


def test_public_names_are_importable_from_capture_file():
    import capsync.runtime.capture_file as cf

    for name in cf.__all__:
        assert getattr(cf, name) is not None, name
    assert cf.CaptureContents is CaptureContents and cf.CaptureWriter is CaptureWriter


# --- the writer's fast check agrees with the reader -------------------------------------------------

_any_value = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=5) | st.binary(max_size=5)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.datetimes() | st.decimals(allow_nan=False) | st.frozensets(st.integers(0, 3), max_size=2),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=3) | st.integers(0, 5), inner, max_size=3),
    max_leaves=12,
)


@given(payload=st.dictionaries(st.text(max_size=4), _any_value, max_size=4), depth=st.integers(0, 80))
def test_what_the_fast_check_passes_the_reader_accepts(payload, depth):
    from capsync.runtime.capture_reader import record_problem

    for _ in range(depth):  # deep nesting, on both sides of the fast check's own depth limit
        payload = {"d": payload}
    try:
        body = cbor2.dumps((1, 2, payload, None))
    except (cbor2.CBOREncodeError, ValueError, TypeError, RecursionError):
        return  # the writer refuses what it cannot encode before either check
    if capture_writer._plain(payload, capture_writer._PLAIN_DEPTH):
        assert record_problem(body, False) is None
