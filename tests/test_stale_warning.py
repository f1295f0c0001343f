"""The stale-data warning: the age of the oldest unsynced file in the sync statistics and status,
and a warning once it passes max(10 x sync interval, 3 min), at most every 5 minutes, quieter
while the selective syncer deliberately pauses sync. All under the virtual clock."""

from __future__ import annotations

import logging
import os

import pytest
import trio

from capsync.actors.status_report import plain, render_status
from capsync.actors.sync_scheduler import SyncScheduler
from capsync.runtime.blocking import inline_blocking
from capsync.runtime.cloud_client import CloudUnavailable

WALL0 = 1_800_000_000.0


class _DownCloud:
    """Stands in for the cloud client of an unreachable cloud."""

    base_url = "http://cloud.test"

    async def aclose(self) -> None:
        pass


async def _unreachable(client, f, *, faults=None):
    raise CloudUnavailable("connection refused")


async def _run(tmp_path, seconds: float, should_sync=None) -> tuple[SyncScheduler, list[tuple[float, float]]]:
    """A scheduler (6 s interval: stale after 180 s) with one file 100 s old, its cloud down, run for `seconds`;
    returns it and (virtual time, age) samples taken every 30 s."""
    paths = tmp_path / "extra"
    paths.mkdir()
    old = paths / "notes.txt"
    old.write_text("x")
    t0 = trio.current_time()
    wall = lambda: WALL0 + trio.current_time() - t0  # noqa: E731 - the wall clock follows the virtual one
    os.utime(old, (WALL0 - 100, WALL0 - 100))
    sched = SyncScheduler(_DownCloud(), capture_dirs=lambda: [], sync_paths=[paths], interval_s=6.0, max_uploads=1,
                          should_sync=should_sync, wall_time=wall)
    sched.upload = _unreachable
    samples = []
    with inline_blocking():
        async with trio.open_nursery() as n:
            await n.start(sched.run)
            for _ in range(int(seconds // 30)):
                await trio.sleep(30)
                samples.append((trio.current_time() - t0, sched.statistics().oldest_unsynced_age_s))
            n.cancel_scope.cancel()
    return sched, samples


async def test_the_oldest_unsynced_age_grows_and_warns_every_five_minutes(tmp_path, autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="capsync.sync")
    sched, samples = await _run(tmp_path, 20 * 60)
    for t, age in samples:
        assert age == pytest.approx(100 + t, abs=0.01)
    stale = [r for r in caplog.records if "getting old" in r.getMessage()]
    assert [r.levelno for r in stale] == [logging.WARNING] * 4  # at about 80 s, 380 s, 680 s and 980 s
    assert all(r.oldest_unsynced_age_s > 180 and r.stale_after_s == 180 for r in stale)
    status = render_status({"part_id": "p", "capture_dir": "/c", "collectors": [], "sync": plain(sched.statistics())})
    assert "oldest unsynced file waiting 21 min  (stale: waiting longer than 3 min)" in status


async def test_a_deliberate_pause_is_logged_quietly_and_a_synced_backlog_has_no_age(tmp_path, autojump_clock, caplog):
    async def paused() -> bool:
        return False

    caplog.set_level(logging.INFO, logger="capsync.sync")
    sched, samples = await _run(tmp_path, 10 * 60, should_sync=paused)
    lines = [r for r in caplog.records if "old" in r.getMessage()]
    assert len(lines) == 2 and all(r.levelno == logging.INFO and "pauses" in r.getMessage() for r in lines)
    assert sched.statistics().skipped_by_selective_syncer > 50
    (tmp_path / "extra" / "notes.txt").unlink()
    sched._index.refresh([], [tmp_path / "extra"], WALL0)
    assert sched.statistics().oldest_unsynced_age_s is None
