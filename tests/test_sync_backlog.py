"""Big backlogs: discovery costs what changed, memory stays a small entry per file, and the
backlog figure follows every file that syncs (runtime/ready_index.py, actors/sync_scheduler.py)."""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import trio

from capsync.actors.sync_scheduler import SyncScheduler
from capsync.actors.uploader import UploadResult
from capsync.runtime import capture_reader
from capsync.runtime.blocking import inline_blocking
from capsync.runtime.cloud_client import UploadRejected
from capsync.runtime.ready_index import RELIST_S, ReadyIndex, lstat_of
from capsync.runtime.sync_files import FAILED_DIR

HOUR_AGO = time.time() - 3600


def _tree(root: Path, dirs: int, per_dir: int, size: int = 10) -> list[Path]:
    """`dirs` method dirs of `per_dir` finished capture files each (contents do not matter to the
    index), with every mtime an hour old, as a backlog left by a week offline would be."""
    made = []
    for i in range(dirs):
        d = root / "sensor" / f"s{i}" / "Readings"
        d.mkdir(parents=True)
        for k in range(per_dir):
            p = d / f"20250101T0000{k:02d}.000000Z_{i:03d}{k:05d}.capture"
            p.write_bytes(b"x" * size)
            os.utime(p, (HOUR_AGO + k, HOUR_AGO + k))
            made.append(p)
    for d in sorted({p.parent for p in made} | {p.parent.parent for p in made} | {root / "sensor", root},
                    key=lambda p: -len(p.parts)):
        os.utime(d, (HOUR_AGO, HOUR_AGO))
    return made


class _CountingScandir:
    """os.scandir, counting the directories it reads."""

    def __init__(self, real):
        self.real, self.calls = real, 0

    def __call__(self, path):
        self.calls += 1
        return self.real(path)


def test_a_second_refresh_reads_only_the_directory_that_changed(tmp_path, monkeypatch):
    root = tmp_path / "capture"
    _tree(root, dirs=20, per_dir=50)
    scandir = _CountingScandir(os.scandir)
    monkeypatch.setattr(os, "scandir", scandir)
    index = ReadyIndex()
    first = index.refresh([root], [], time.time())
    assert (first.dirs_listed, first.files_statted, index.files) == (42, 1000, 1000)  # root, sensor, 20 x 2
    assert scandir.calls == 42

    scandir.calls = 0
    again = index.refresh([root], [], time.time())
    assert (again.dirs_listed, again.files_statted, scandir.calls) == (0, 0, 0)
    assert again.dirs_checked == 42  # one stat per directory, none per file

    new = root / "sensor" / "s7" / "Readings" / "20250101T010000.000000Z_new.capture"
    new.write_bytes(b"y" * 7)
    after = index.refresh([root], [], time.time())
    assert (after.dirs_listed, after.files_statted, scandir.calls) == (1, 1, 1)
    assert (index.files, index.bytes) == (1001, 1000 * 10 + 7)

    # listed within a tick of its mtime, that dir is read once more; known names are not stat'd again
    scandir.calls = 0
    settle = index.refresh([root], [], time.time())
    assert (settle.dirs_listed, settle.files_statted, scandir.calls) == (1, 0, 1)


def test_a_file_finished_in_the_same_mtime_tick_as_a_listing_is_not_missed(tmp_path):
    d = tmp_path / "capture" / "sensor" / "env" / "Readings"
    d.mkdir(parents=True)
    (d / "a.capture").write_bytes(b"a")
    tick_ns = time.time_ns() - 300_000_000
    os.utime(d, ns=(tick_ns, tick_ns))
    for parent in (d.parent, d.parent.parent, d.parent.parent.parent):  # settled long ago
        os.utime(parent, (HOUR_AGO, HOUR_AGO))
    clock = [tick_ns / 1e9 + 0.2]  # the listing happens 0.2 s into the dir's mtime tick
    index = ReadyIndex(fs_time=lambda: clock[0])
    index.refresh([tmp_path / "capture"], [], time.time())
    assert index.files == 1
    (d / "b.capture").write_bytes(b"bb")
    os.utime(d, ns=(tick_ns, tick_ns))  # a coarse clock gives the dir the same mtime as before
    clock[0] += 0.5
    index.refresh([tmp_path / "capture"], [], time.time())
    assert (index.files, index.bytes) == (2, 3)

    # once a listing is well past the mtime, an unchanged dir is no longer read
    clock[0] += 10
    assert index.refresh([tmp_path / "capture"], [], time.time()).dirs_listed == 1
    assert index.refresh([tmp_path / "capture"], [], time.time()).dirs_listed == 0
    # ... until the safety net: every dir is read again every RELIST_S, for file systems without dir mtimes
    (d / "c.capture").write_bytes(b"ccc")
    os.utime(d, ns=(tick_ns, tick_ns))
    assert index.refresh([tmp_path / "capture"], [], time.time()).dirs_listed == 0
    clock[0] += RELIST_S
    assert index.refresh([tmp_path / "capture"], [], time.time()).dirs_listed == 4
    assert (index.files, index.bytes) == (3, 6)


def test_oldest_first_across_dirs_and_vanished_files_leave_the_backlog(tmp_path):
    root = tmp_path / "capture"
    files = _tree(root, dirs=3, per_dir=4)
    for n, p in enumerate(reversed(files)):  # the last written is now the oldest
        os.utime(p, (HOUR_AGO - 100 + n, HOUR_AGO - 100 + n))
    index = ReadyIndex()
    index.refresh([root], [], time.time())
    order = [index.path_of(e) for e in index.oldest_first()]
    assert order == [str(p) for p in reversed(files)]

    gone_one, gone_dir = files[-1], files[0].parent.parent  # one file, and a whole resource dir
    gone_one.unlink()
    for p in gone_dir.rglob("*.capture"):
        p.unlink()
    (gone_dir / "Readings").rmdir()
    gone_dir.rmdir()
    first = next(index.oldest_first())
    assert index.sync_file(first, lstat_of(index.path_of(first)), time.time()) is None  # noticed before upload
    assert index.files == 11
    index.refresh([root], [], time.time())
    assert (index.files, index.bytes) == (7, 70)
    assert str(gone_one) not in {index.path_of(e) for e in index.oldest_first()}


def test_additional_path_files_wait_ten_quiet_seconds_and_changes_are_seen_before_upload(tmp_path):
    extra = tmp_path / "extra"
    (extra / "logs").mkdir(parents=True)
    log = extra / "logs" / "run.log"
    log.write_text("started")
    (extra / ".hidden").write_text("never synced")
    now = time.time()
    index = ReadyIndex()
    index.refresh([], [extra], now)
    assert index.files == 0  # still being written
    later = index.refresh([], [extra], now + 10.5)
    assert index.files == 1 and later.files_statted == 1  # the waiting file, not the hidden one
    (entry,) = index.oldest_first()

    with log.open("a") as fh:  # appended in place: the dir's mtime does not change
        fh.write(" and more")
    assert index.sync_file(entry, lstat_of(str(log)), time.time()) is None  # not quiet any more
    assert index.files == 0
    index.refresh([], [extra], time.time() + 11)
    (entry,) = index.oldest_first()
    f = index.sync_file(entry, lstat_of(str(log)), time.time() + 11)
    assert f is not None and f.size == len("started and more") and f.name == "logs/run.log"


def test_the_index_holds_a_small_entry_per_file(tmp_path):
    root = tmp_path / "capture"
    _tree(root, dirs=4, per_dir=1500)
    index = ReadyIndex()
    tracemalloc.start()
    try:
        index.refresh([root], [], time.time())
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert index.files == 6000
    assert held / index.files < 300, f"{held / index.files:.0f} bytes per indexed file"


def test_recovery_at_start_reads_names_and_stats_no_finished_file(tmp_path, monkeypatch):
    root = tmp_path / "capture"
    _tree(root, dirs=5, per_dir=200)
    calls = []
    real = os.stat
    monkeypatch.setattr(os, "stat", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(os, "lstat", lambda *a, **k: calls.append(a[0]) or real(*a, follow_symlinks=False))
    assert capture_reader.recover_dir(root) == []
    assert len(calls) <= 2, calls[:5]


class _Cloud:
    """Stands in for the cloud client: the scheduler only needs its URL and aclose."""

    base_url = "http://cloud.test"

    async def aclose(self) -> None:
        pass


async def test_the_backlog_goes_down_as_files_sync_and_up_as_new_ones_finish(tmp_path, autojump_clock):
    root = tmp_path / "capture"
    files = _tree(root, dirs=2, per_dir=5)
    bogus = files[3]  # this one the cloud refuses for good
    uploaded = []

    async def slow_upload(client, f, *, faults=None):  # one second per file, as a slow link would
        await trio.sleep(1.0)
        if f.path == bogus:
            raise UploadRejected("not a capture file")
        f.path.unlink()
        uploaded.append((trio.current_time(), f.path))
        return UploadResult("id", f.path, f.size, f.size, 1)

    sched = SyncScheduler(_Cloud(), capture_dirs=lambda: [root], sync_paths=[], interval_s=3600.0, max_uploads=1)
    sched.upload = slow_upload
    seen = []
    with inline_blocking():
        async with trio.open_nursery() as n:
            t0 = trio.current_time()
            await n.start(sched.run)  # a pass at start: no waiting for the first interval
            await trio.sleep(0.5)  # samples fall between uploads: at 0.5 s, 1.5 s, ...
            for _ in range(6):
                seen.append(sched.statistics().backlog_files)
                await trio.sleep(1.0)
            late = root / "sensor" / "s0" / "Readings" / "20250102T000000.000000Z_late.capture"
            late.write_bytes(b"z" * 10)  # finished during the pass: counted from the next pass on
            await trio.sleep(5.0)  # the pass ends at 10 s
            seen.append(sched.statistics().backlog_files)
            result = await sched.sync_now()
            n.cancel_scope.cancel()
    assert uploaded[0][0] - t0 <= 1.5
    assert seen[:6] == [10, 9, 8, 7, 6, 5]  # down by one per file synced or set aside, within the pass
    assert seen[6] == 0
    assert result.uploaded == 1 and sched.statistics().backlog_files == 0
    stats = sched.statistics()
    assert (stats.files_synced, stats.set_aside, stats.backlog_bytes) == (10, 1, 0)
    assert (root / FAILED_DIR / bogus.relative_to(root)).exists()


async def test_a_long_pass_counts_files_finished_meanwhile_and_uploads_them_next(tmp_path, autojump_clock):
    root = tmp_path / "capture"
    _tree(root, dirs=1, per_dir=8)
    order = []

    async def slow_upload(client, f, *, faults=None):
        await trio.sleep(1.0)
        f.path.unlink()
        order.append(f.path.name)
        return UploadResult("id", f.path, f.size, f.size, 1)

    sched = SyncScheduler(_Cloud(), capture_dirs=lambda: [root], sync_paths=[], interval_s=2.0, max_uploads=1)
    sched.upload = slow_upload
    late = root / "sensor" / "s0" / "Readings" / "20250102T000000.000000Z_late.capture"
    with inline_blocking():
        async with trio.open_nursery() as n:
            await n.start(sched.run)
            await trio.sleep(2.5)
            before = sched.statistics().backlog_files  # 8 found, 2 synced
            late.write_bytes(b"z" * 10)
            await trio.sleep(2.0)  # the pass refreshes its index every interval (2 s) while it runs
            during = sched.statistics()
            await trio.sleep(10.0)
            n.cancel_scope.cancel()
    assert before == 6
    assert during.backlog_files == 6 - 2 + 1 and during.passes == 0  # counted within the same pass
    assert order[-1] == late.name and len(order) == 9  # and uploaded after the older ones, by the next pass


async def test_a_crash_during_a_pass_leaks_no_upload_slot(tmp_path, autojump_clock):
    root = tmp_path / "capture"
    _tree(root, dirs=1, per_dir=6)
    running, most = [0], [0]
    crash = [True]

    async def upload(client, f, *, faults=None):
        if crash[0]:  # an uploader bug: crashes the scheduler while it is starting the next upload
            crash[0] = False
            raise RuntimeError("uploader bug")
        running[0] += 1
        most[0] = max(most[0], running[0])
        await trio.sleep(1.0)
        running[0] -= 1
        f.path.unlink()
        return UploadResult("id", f.path, f.size, f.size, 1)

    sched = SyncScheduler(_Cloud(), capture_dirs=lambda: [root], sync_paths=[], interval_s=3600.0, max_uploads=2)
    sched.upload = upload
    crashed = False
    with inline_blocking():
        try:
            await sched.run()
        except* RuntimeError:
            crashed = True
        async with trio.open_nursery() as n:  # restarted, as its supervisor would
            await n.start(sched.run)
            await trio.sleep(10)
            after_restart = sched.statistics().files_synced  # a crash loop is not a tight one
            await sched.sync_now()
            n.cancel_scope.cancel()
    assert crashed and after_restart == 0
    assert most[0] == 2  # both slots are there after the crash
    assert sched.statistics().files_synced == 6 and not list(root.rglob("*.capture"))
