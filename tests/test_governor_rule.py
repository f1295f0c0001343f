"""The disk-full rule, branch by branch, with an injected disk-usage function (no root needed)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from capsync.actors.agent import Agent
from capsync.actors.governor import DiskGovernor
from capsync.runtime.config import parse_config
from capsync.runtime.disk_usage import DiskUsage, Verdict, every_nth, finished_capture_files, is_inside, verdict
from tests.helpers import fake_component, robot_config

GB = 1 << 30


def _usage(percent: float, total: int = 100 * GB) -> DiskUsage:
    used = int(total * percent / 100)
    return DiskUsage(total=total, used=used, free=total - used)


def _files(root: Path, names: list[str], size: int = 100) -> list[Path]:
    """Create files with strictly increasing mtimes, in the order given (oldest first)."""
    out = []
    for i, name in enumerate(names):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * size)
        os.utime(p, ns=(1_700_000_000_000_000_000 + i * 1_000_000_000,) * 2)
        out.append(p)
    return out


class Disk:
    """A fake file system: usage percent and the capture dir's share of used bytes are set by the test."""

    def __init__(self, percent: float, share: float) -> None:
        self.percent, self.share = percent, share
        self.walks = 0
        self.fail: OSError | None = None

    def usage_of(self, path: Path) -> DiskUsage:
        if self.fail is not None:
            raise self.fail
        return _usage(self.percent)

    def capture_bytes_of(self, path: Path) -> int:
        self.walks += 1
        return int(_usage(self.percent).used * self.share)


def _governor(capture_dir: Path, disk: Disk, **kw) -> DiskGovernor:
    return DiskGovernor(capture_dir, usage_of=disk.usage_of, capture_bytes_of=disk.capture_bytes_of, **kw)


@pytest.mark.parametrize("enabled, percent, share, expected", [
    (True, 89.99, 0.9, Verdict.OK),
    (True, 90.0, 0.5, Verdict.DELETE),  # both thresholds are inclusive
    (True, 99.0, 0.49, Verdict.NOT_OURS),
    (True, 95.0, 1.0, Verdict.DELETE),
    (False, 99.0, 1.0, Verdict.CAPTURE_OFF),
])
def test_verdict_table(enabled, percent, share, expected):
    u = _usage(percent)
    assert verdict(enabled, u, int(u.used * share)) is expected


async def test_below_threshold_deletes_nothing_and_does_not_walk(tmp_path):
    paths = _files(tmp_path, [f"s/r/m/{i}.capture" for i in range(10)])
    disk = Disk(89.9, 1.0)
    g = _governor(tmp_path, disk, every_nth=1)
    assert await g.check_once() is Verdict.OK
    assert all(p.exists() for p in paths) and disk.walks == 0
    assert g.statistics().state == "ok" and g.statistics().files_deleted == 0


async def test_full_of_capture_data_deletes_every_nth_oldest_first_and_logs(tmp_path, caplog):
    # spread over several method dirs: the order is by age across the whole capture dir
    names = [f"{'ab'[i % 2]}/r/m/{i:02d}.capture" for i in range(12)]
    paths = _files(tmp_path, names)
    sizes = {f.path: f.size for f in finished_capture_files(tmp_path)}
    g = _governor(tmp_path, Disk(95.0, 0.6), every_nth=5)
    with caplog.at_level(logging.INFO, logger="capsync.governor"):
        assert await g.check_once() is Verdict.DELETE
    gone = [i for i, p in enumerate(paths) if not p.exists()]
    assert gone == [0, 5, 10]
    s = g.statistics()
    assert (s.passes, s.files_deleted) == (1, 3)
    assert s.bytes_deleted == sum(sizes[paths[i]] for i in gone)
    (rec,) = [r for r in caplog.records if "deleted every Nth" in r.getMessage()]
    assert (rec.files_deleted, rec.bytes_deleted) == (3, s.bytes_deleted)


async def test_full_of_other_data_warns_once_per_state_change_and_deletes_nothing(tmp_path, caplog):
    paths = _files(tmp_path, [f"s/r/m/{i}.capture" for i in range(6)])
    disk = Disk(95.0, 0.3)
    g = _governor(tmp_path, disk, every_nth=1)
    with caplog.at_level(logging.INFO, logger="capsync.governor"):
        for _ in range(3):
            assert await g.check_once() is Verdict.NOT_OURS
        disk.percent = 50.0
        await g.check_once()
        disk.percent = 96.0
        await g.check_once()
        await g.check_once()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("outside the capture dir" in r.getMessage() for r in warnings)
    assert all(p.exists() for p in paths)
    s = g.statistics()
    assert (s.warnings, s.files_deleted, s.state) == (2, 0, "not_ours")
    assert s.capture_share == pytest.approx(0.3, abs=0.01)


async def test_capture_disabled_means_the_rule_does_not_apply(tmp_path):
    paths = _files(tmp_path, [f"s/r/m/{i}.capture" for i in range(5)])
    g = _governor(tmp_path, Disk(99.0, 1.0), every_nth=1, capture_enabled=False)
    assert await g.check_once() is Verdict.CAPTURE_OFF
    assert all(p.exists() for p in paths) and g.statistics().state == "capture_off"


async def test_never_prog_failed_symlinks_or_anything_outside(tmp_path):
    cap, outside = tmp_path / "capture", tmp_path / "outside"
    keep = _files(cap, ["s/r/m/0.prog", "failed/s/r/m/1.capture", "s/r/m/2.txt"])
    victims = _files(cap, [f"s/r/m/{i}.capture" for i in range(3, 7)])
    ext = _files(outside, ["a.capture", "d/b.capture"])
    (cap / "s" / "link.capture").symlink_to(ext[0])
    (cap / "s" / "linkdir").symlink_to(outside / "d", target_is_directory=True)
    g = _governor(cap, Disk(99.0, 1.0), every_nth=1)
    assert await g.check_once() is Verdict.DELETE
    assert not any(p.exists() for p in victims)
    assert all(p.exists() for p in keep + ext)
    assert (cap / "s" / "link.capture").is_symlink() and (cap / "s" / "linkdir").is_symlink()
    assert g.statistics().files_deleted == 4
    assert is_inside(victims[0], cap) and not is_inside(cap / "s" / "linkdir" / "b.capture", cap)


async def test_a_file_being_uploaded_is_skipped_and_the_next_takes_its_turn(tmp_path):
    paths = _files(tmp_path, [f"s/r/m/{i}.capture" for i in range(6)])
    g = _governor(tmp_path, Disk(95.0, 0.9), every_nth=2, is_busy=lambda p: p == paths[0])
    await g.check_once()
    assert [p.exists() for p in paths] == [True, False, True, False, True, False]


async def _wait_for(pred, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)


# Real time below: the checks cross a worker thread, and an autojumping clock would race past them.

async def test_a_disk_that_cannot_be_measured_is_logged_once_and_the_governor_keeps_going(tmp_path, caplog):
    disk = Disk(50.0, 0.0)
    disk.fail = PermissionError(13, "Permission denied")
    g = _governor(tmp_path, disk, interval_s=0.02)
    with caplog.at_level(logging.WARNING, logger="capsync.governor"):
        async with trio.open_nursery() as n:
            await n.start(g.run)
            await _wait_for(lambda: g.statistics().checks >= 5)
            assert g.statistics().state == "error"
            disk.fail = None
            await _wait_for(lambda: g.statistics().state == "ok")
            n.cancel_scope.cancel()
    assert len([r for r in caplog.records if "cannot measure" in r.getMessage()]) == 1
    assert "Permission denied" in g.statistics().last_error


async def test_reconfigure_applies_at_once(tmp_path):
    paths = _files(tmp_path, [f"s/r/m/{i}.capture" for i in range(4)])
    g = _governor(tmp_path, Disk(99.0, 1.0), every_nth=1, capture_enabled=False, interval_s=3600)
    async with trio.open_nursery() as n:
        await n.start(g.run)
        await _wait_for(lambda: g.statistics().checks == 1)
        assert all(p.exists() for p in paths) and g.statistics().state == "capture_off"
        g.reconfigure(tmp_path, every_nth=2, capture_enabled=True)
        await _wait_for(lambda: g.statistics().passes == 1, timeout=2.0)  # far sooner than the interval
        n.cancel_scope.cancel()
    assert [p.exists() for p in paths] == [False, True, False, True]
    assert g.statistics().every_nth == 2


@given(st.integers(0, 60), st.integers(1, 9), st.sets(st.integers(0, 59)))
def test_every_nth_takes_the_first_and_every_nth_after_and_never_a_busy_file(length, n, busy):
    files = [Path(f"/c/{i}") for i in range(length)]

    class F:
        def __init__(self, p: Path) -> None:
            self.path = p

    chosen = [f.path for f in every_nth([F(p) for p in files], n, lambda p: int(p.name) in busy)]
    assert not any(int(p.name) in busy for p in chosen)
    free = [p for p in files if int(p.name) not in busy]
    if not busy:
        assert chosen == files[::n]
    assert len(chosen) <= len(free) and (not free or chosen)


def test_every_nth_rejects_zero():
    with pytest.raises(ValueError):
        list(every_nth([], 0))


async def test_agent_runs_a_governor_child_and_reports_it(tmp_path):
    comp = fake_component("env", "sensor", [{"method": "Readings", "capture_frequency_hz": 1}])
    cfg = parse_config(json.dumps(robot_config(tmp_path, [comp], sync_disabled=True,
                                               delete_every_nth_when_disk_full=7)))
    agent = Agent(cfg, governor_interval_s=0.5)
    assert agent.governor is not None and agent.governor.every_nth == 7 and agent.governor.interval_s == 0.5
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        assert "governor" in agent._root.child_names()
        await trio.sleep(0.2)
        n.cancel_scope.cancel()
    stats = agent.statistics()
    assert stats.governor.checks >= 1
    assert stats.governor is not None and stats.governor.files_deleted == 0 and stats.mongo is None
