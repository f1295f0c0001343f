"""The power-cut file system forgets exactly what POSIX lets a disk forget on power loss, and
nothing more: file bytes not fsynced, directory entries (creates, renames, unlinks) not made
durable by an fsync of their directory. Real FUSE mounts served by their own process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from capsync.runtime.capture_file import read_capture
from capsync.testing import fuse_unavailable

pytestmark = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, *, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` -> its bytes (None for a directory)."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


def test_unsynced_bytes_are_lost_and_fsynced_ones_kept(pcfs):
    m = pcfs.mountpoint
    write_file(m / "kept", b"durable", sync=True)
    write_file(m / "kept", b" + lost", sync=False)
    write_file(m / "never", b"never synced", sync=False)
    fd = os.open(m / "datasync", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"fdatasync counts too")
    os.fdatasync(fd)
    os.close(fd)
    fsync_dir(m)
    assert (m / "kept").read_bytes() == b"durable + lost"  # the live state has everything
    report = pcfs.cut()
    d = pcfs.backing
    assert (d / "kept").read_bytes() == b"durable"
    assert (d / "never").read_bytes() == b""  # its entry is durable, its bytes are not
    assert (d / "datasync").read_bytes() == b"fdatasync counts too"
    assert sorted(report.files_cut_back) == ["kept", "never"] and report.bytes_forgotten == 7 + 12


def test_overwritten_and_truncated_durable_bytes_come_back(pcfs):
    m = pcfs.mountpoint
    write_file(m / "f", bytes(range(200)), sync=True)
    fsync_dir(m)
    with open(m / "f", "r+b") as f:
        f.seek(50)
        f.write(b"x" * 100)
        f.truncate(120)
        f.seek(300)
        f.write(b"tail")
    pcfs.cut(torn=True, seed=1)  # a truncate since the last fsync: nothing torn, all reverts
    assert (pcfs.backing / "f").read_bytes() == bytes(range(200))


def test_a_new_file_fsynced_but_not_its_directory_is_absent(pcfs):
    m = pcfs.mountpoint
    (m / "sub").mkdir()
    fsync_dir(m)
    write_file(m / "sub" / "f", b"synced bytes", sync=True)
    write_file(m / "g", b"synced too", sync=True)
    report = pcfs.cut()
    assert tree(pcfs.backing) == {"sub": None}
    assert set(report.vanished) == {"sub/f", "g"}


def test_a_new_directory_is_empty_until_it_is_fsynced_itself(pcfs):
    m = pcfs.mountpoint
    (m / "a").mkdir()
    (m / "b").mkdir()
    write_file(m / "a" / "f", b"1", sync=True)
    write_file(m / "b" / "f", b"2", sync=True)
    fsync_dir(m / "b")
    fsync_dir(m)
    pcfs.cut()
    assert tree(pcfs.backing) == {"a": None, "b": None, "b/f": b"2"}


def test_a_rename_reverts_without_a_directory_fsync_and_stays_with_one(pcfs):
    m = pcfs.mountpoint
    for d in ("one", "two"):
        (m / d).mkdir()
        write_file(m / d / "x.prog", d.encode(), sync=True)
    fsync_dir(m / "one")
    fsync_dir(m / "two")
    fsync_dir(m)
    os.rename(m / "one" / "x.prog", m / "one" / "x.capture")
    os.rename(m / "two" / "x.prog", m / "two" / "x.capture")
    fsync_dir(m / "two")
    pcfs.cut()
    assert tree(pcfs.backing) == {"one": None, "one/x.prog": b"one", "two": None, "two/x.capture": b"two"}


def test_a_rename_over_a_file_reverts_to_both_old_files(pcfs):
    m = pcfs.mountpoint
    write_file(m / "db", b"old db", sync=True)
    write_file(m / "db.tmp", b"new db", sync=True)
    fsync_dir(m)
    os.replace(m / "db.tmp", m / "db")
    assert tree(m) == {"db": b"new db"}
    pcfs.cut()
    assert tree(pcfs.backing) == {"db": b"old db", "db.tmp": b"new db"}


def test_an_unlink_reverts_without_a_directory_fsync(pcfs):
    m = pcfs.mountpoint
    for name in ("a", "b"):
        write_file(m / name, name.encode() * 3, sync=True)
    fsync_dir(m)
    os.unlink(m / "a")
    os.unlink(m / "b")
    write_file(m / "c", b"c", sync=True)
    fsync_dir(m)  # now b's unlink and c are durable
    write_file(m / "d", b"d", sync=True)
    os.unlink(m / "c")
    report = pcfs.cut()
    assert tree(pcfs.backing) == {"c": b"c"}
    assert set(report.appeared) == {"c"} and set(report.vanished) == {"d"}


def test_an_unlinked_file_still_open_keeps_its_durable_bytes(pcfs):
    m = pcfs.mountpoint
    write_file(m / "f", b"durable", sync=True)
    fsync_dir(m)
    fd = os.open(m / "f", os.O_WRONLY | os.O_APPEND)
    os.unlink(m / "f")
    os.write(fd, b" more")
    os.fsync(fd)  # durable bytes of a file whose unlink is not durable
    os.close(fd)
    pcfs.cut()
    assert tree(pcfs.backing) == {"f": b"durable more"}


def test_a_torn_write_keeps_a_prefix_of_the_unsynced_bytes(pcfs, tmp_path):
    durable, unsynced = b"D" * 100, bytes(random.Random(1).randbytes(5000))
    kept = set()
    for seed in range(8):
        m = pcfs.mountpoint
        write_file(m / "f", durable, sync=True)
        fsync_dir(m)
        for i in range(0, len(unsynced), 700):  # several writes, in order
            write_file(m / "f", unsynced[i:i + 700], sync=False)
        report = pcfs.cut(torn=True, seed=seed)
        data = (pcfs.backing / "f").read_bytes()
        assert data.startswith(durable) and unsynced.startswith(data[len(durable):])
        (torn,) = report.torn
        assert (torn.path, torn.unsynced, torn.kept) == ("f", len(unsynced), len(data) - len(durable))
        kept.add(torn.kept)
        (pcfs.backing / "f").unlink()
        pcfs.mount()
    assert len(kept) >= 6  # the length is random


def test_the_next_mount_starts_from_the_durable_state(pcfs):
    m = pcfs.mountpoint
    write_file(m / "f", b"one", sync=True)
    fsync_dir(m)
    write_file(m / "f", b" lost", sync=False)
    pcfs.cut()
    pcfs.mount()
    assert (m / "f").read_bytes() == b"one"
    write_file(m / "f", b" two", sync=True)
    write_file(m / "f", b" lost again", sync=False)
    pcfs.cut()
    assert tree(pcfs.backing) == {"f": b"one two"}


def test_what_was_made_durable_is_all_kept(pcfs):
    """Nothing more is forgotten: after random work where every file and directory was fsynced,
    the durable state is exactly the live state."""
    rng = random.Random(7)
    m = pcfs.mountpoint
    names = [f"d{i}" for i in range(3)]
    for d in names:
        (m / d).mkdir()
    for step in range(150):
        d = m / rng.choice(names)
        f = d / f"f{rng.randrange(6)}"
        op = rng.random()
        if op < 0.5:
            write_file(f, rng.randbytes(rng.randrange(1, 3000)), sync=True)
        elif op < 0.65 and f.exists():
            os.replace(f, m / rng.choice(names) / f"f{rng.randrange(6)}")
        elif op < 0.8 and f.exists():
            f.unlink()
        elif f.exists():
            with open(f, "r+b") as fh:
                fh.seek(rng.randrange(0, 3000))
                fh.write(rng.randbytes(100))
                fh.truncate(rng.randrange(0, 3000))
                fh.flush()
                os.fsync(fh.fileno())
    for d in names:
        fsync_dir(m / d)
    fsync_dir(m)
    live = tree(m)
    report = pcfs.cut(torn=True, seed=3)
    assert tree(pcfs.backing) == live
    assert report.vanished == report.appeared == report.files_cut_back == () and report.bytes_forgotten == 0


def test_a_capture_file_the_writer_finished_survives_a_cut(pcfs):
    """The agent's own writer, in a process SIGKILLed before the cut: a finished `.capture` keeps
    every record; a `.prog` keeps what its last fsync covered."""
    m = pcfs.mountpoint
    code = f"""
import os, signal
from pathlib import Path
from capsync.runtime.capture_file import CaptureHeader, CaptureRecord, CaptureWriter, DataKind, new_file_id
def header():
    return CaptureHeader(new_file_id(), "p", "sensor", "s", "Readings", {{}}, (), DataKind.TABULAR)
w = CaptureWriter.create(Path({str(m / "capture")!r}), header(), fsync_interval_s=0)
for i in range(50):
    w.append(CaptureRecord(1_000 + i, 2_000 + i, {{"i": i}}))
print(w.finish(), flush=True)
clock = iter(range(10**6)).__next__
w = CaptureWriter.create(Path({str(m / "capture")!r}), header(), fsync_interval_s=2, clock=clock)
for i in range(7):  # the clock ticks once per append: fsyncs after records 2, 4 and 6
    w.append(CaptureRecord(1_000 + i, 2_000 + i, {{"i": i}}))
print(w.path, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr
    final, prog = (Path(line) for line in out.stdout.split())
    assert len(read_capture(prog).records) == 7  # live: every record
    pcfs.cut()
    d = pcfs.backing / final.relative_to(m)
    assert [r.payload["i"] for r in read_capture(d).records] == list(range(50))
    kept = read_capture(pcfs.backing / prog.relative_to(m)).records
    assert [r.payload["i"] for r in kept] == list(range(6))
