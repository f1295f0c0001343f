"""The shared fsync rounds (runtime/fsync_rounds.py): every open capture file is fsynced once per
interval, all of them in one round, and a file a round holds is finished only after it. Virtual clock."""

from __future__ import annotations

import threading

import trio

from capsync.actors.collector import Collector
from capsync.runtime import fsync_rounds
from capsync.runtime.capture_file import read_capture
from capsync.runtime.fsync_rounds import FsyncRounds
from capsync.runtime.metronome import Metronome
from tests.helpers import capture_files, leftover_progs
from tests.test_collector import _blocking_inline, _collector  # noqa: F401 (the fixture is autouse)


def _shared(tmp_path, n: int, hz: float, rounds: FsyncRounds, metronome: Metronome) -> list[Collector]:
    """`n` collectors of one fake sensor at `hz`, fsynced every second by `rounds`."""
    base = _collector(tmp_path, "sensor", "Readings", hz, fsync_interval_s=1.0, max_file_bytes=1 << 20)
    return [Collector(base.plan, base._resource, base._settings, base._wall, metronome=metronome,
                      fsync_rounds=rounds) for _ in range(n)]


async def test_one_round_fsyncs_every_collectors_open_file_within_the_interval(tmp_path, autojump_clock):
    rounds, metronome = FsyncRounds(), Metronome()
    async with trio.open_nursery() as n:
        await n.start(rounds.run)
        await n.start(metronome.run)
        collectors = _shared(tmp_path, 5, 10.0, rounds, metronome)
        for c in collectors:
            await n.start(c.run)
        history: list[tuple[float, list[int]]] = []  # (time, bytes appended to each open file)
        for step in range(1, 100):  # every 50 ms for 5 s: nothing appended a second ago is unsynced
            await trio.sleep_until(step * 0.05 + 0.001)
            writers = [c._files.writer for c in collectors]
            now = trio.current_time()
            history.append((now, [w.size_bytes for w in writers]))
            then = [sizes for t, sizes in history if t <= now - 1.0]
            if then:
                assert all(w.synced_bytes >= b for w, b in zip(writers, then[-1])), now
        assert any(w.synced_bytes < w.size_bytes for w in writers)  # appends do not fsync by themselves
        assert rounds.rounds == 5  # at 0.9, 1.8, 2.7, 3.6 and 4.5 s, each for all five files at once
        n.cancel_scope.cancel()
    assert not leftover_progs(tmp_path) and len(capture_files(tmp_path)) == 5


async def test_a_file_with_nothing_new_is_not_fsynced_again(tmp_path, autojump_clock):
    rounds, metronome = FsyncRounds(), Metronome()
    async with trio.open_nursery() as n:
        await n.start(rounds.run)
        await n.start(metronome.run)
        (c,) = _shared(tmp_path, 1, 0.2, rounds, metronome)  # a reading at 0 s and at 5 s
        await n.start(c.run)
        await trio.sleep_until(9.5)
        assert rounds.rounds == 2  # at 1 s and 6 s; the other seven rounds found nothing to fsync
        assert c._files.writer.synced_bytes == c._files.writer.size_bytes
        n.cancel_scope.cancel()


async def test_a_file_held_by_a_round_is_finished_only_after_it(tmp_path, autojump_clock, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    real = fsync_rounds._sync_all

    def slow_sync_all(writers):
        entered.set()
        release.wait(10)
        return real(writers)

    threads = []

    async def first_round_in_a_thread(fn, *args):
        """Later rounds inline: a real thread at shutdown would let the virtual clock run past its timeout."""
        if threads:
            return fn(*args)
        threads.append(fn)
        return await trio.to_thread.run_sync(fn, *args)

    monkeypatch.setattr(fsync_rounds, "_sync_all", slow_sync_all)
    monkeypatch.setattr(fsync_rounds, "run_blocking", first_round_in_a_thread)
    rounds, metronome = FsyncRounds(), Metronome()
    async with trio.open_nursery() as n:
        await n.start(rounds.run)
        await n.start(metronome.run)
        (c,) = _shared(tmp_path, 1, 10.0, rounds, metronome)
        await n.start(c.run)
        while not entered.is_set():  # the round at 1 s holds the open file in its thread
            await trio.sleep(0.01)
        held = c._files._claimed
        finished = trio.Event()

        async def finish() -> None:
            await c.finish_open_file()
            finished.set()

        n.start_soon(finish)
        await trio.sleep(0.5)
        assert not finished.is_set() and held.path.exists() and not held.finished  # waits for the round
        release.set()
        await finished.wait()
        assert held.finished
        n.cancel_scope.cancel()
    done = read_capture(held.path.with_suffix(".capture"))
    assert done.damage is None and len(done.records) >= 10  # the readings of the first second at least
    assert not leftover_progs(tmp_path)
