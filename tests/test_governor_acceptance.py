"""The disk governor on a real full file system: a 16 MB tmpfs, a fake camera writing ~200 KB images
at 20 Hz, sync off. Needs root (to mount the tmpfs); skipped with the reason otherwise.

The short runs here are the acceptance scenarios cut down to seconds; scripts/governor_soak.py runs
the full 2-minute version with the same harness (`run_disk_full`) and prints the figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import trio

from capsync.actors.agent import Agent
from capsync.actors.collector import Collector, CollectorSettings
from capsync.runtime.capture_file import read_capture
from capsync.runtime.config import parse_config
from capsync.runtime.disk_usage import disk_usage
from capsync.runtime.resources.registry import ResourceRegistry
from capsync.runtime.wallclock import WallClock
from tests.helpers import capture_files, fake_component, leftover_progs, robot_config

MB = 1 << 20


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size_mb: int = 16) -> Iterator[Path]:
    """Mount a tmpfs of `size_mb` at `path` (created) for the duration; RuntimeError when that is impossible."""
    if os.geteuid() != 0:
        raise RuntimeError("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"cannot mount a tmpfs: {r.stderr.strip() or r.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_up(path: Path) -> None:
    """Write zeros to `path` until the file system refuses more (ENOSPC)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size) == size:
                    pass
    finally:
        os.close(fd)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A fresh 16 MB tmpfs, unmounted after the test; the test is skipped when it cannot be mounted."""
    try:
        with mounted_tmpfs(tmp_path / "tmpfs") as mnt:
            yield mnt
    except RuntimeError as exc:
        pytest.skip(str(exc))


def camera_config(capture_dir: Path, hz: float = 20.0) -> dict:
    """A fake camera whose JPEG frames are about 200 KB (2048x1536 at quality 95), capturing at `hz`."""
    cam = fake_component("cam", "camera", [{"method": "ReadImage", "capture_frequency_hz": hz,
                                            "additional_params": {"mime_type": "image/jpeg"}}],
                         width=2048, height=1536, jpeg_quality=95, fps=hz)
    return robot_config(capture_dir, [cam], sync_disabled=True)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class DiskRun:
    """What one run saw: agent statistics, sampled usage, the files left and whether they read back."""

    stats: object
    seconds: float
    usage: list[float] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    records_in_files: int = 0
    logs: list[logging.LogRecord] = field(default_factory=list)
    ballast_intact: bool | None = None

    def messages(self, text: str) -> list[logging.LogRecord]:
        """Log records whose message contains `text`."""
        return [r for r in self.logs if text in r.getMessage()]

    def summary(self) -> str:
        """The figures, one line each."""
        s = self.stats
        g = s.governor
        tail = self.usage[len(self.usage) // 4:] or [0.0]
        return "\n".join([
            f"ran {self.seconds:.1f} s: captured {s.captured} images, dropped {s.dropped} (disk refused), "
            f"failed {s.failed}, mean image {s.bytes_written / max(1, s.captured) / 1024:.0f} KiB, "
            f"late ticks {sum(c.late_ticks for c in s.collectors)}, missed {sum(c.missed_ticks for c in s.collectors)}",
            f"usage after warm-up: mean {sum(tail) / len(tail):.1f} %, max {max(tail):.1f} %, "
            f"min {min(tail):.1f} % ({len(self.usage)} samples)",
            f"governor: {g.passes} deletion passes, {g.files_deleted} files / {g.bytes_deleted / MB:.1f} MiB deleted, "
            f"{g.warnings} warnings, state {g.state}",
            f"left: {len(self.files)} capture files, {self.records_in_files} records, damaged {len(self.damaged)}, "
            f"restarts {sum(x.total_restarts for x in s.supervisors)}",
        ])


async def run_disk_full(root: Path, seconds: float, *, governor_interval_s: float = 0.25,
                        ballast_fraction: float = 0.0, hz: float = 20.0) -> DiskRun:
    """Run the camera agent with its capture dir at `root`/capture for `seconds` (real time), sampling
    the file system's usage every 0.1 s; optionally fill `ballast_fraction` of it first with a file
    outside the capture dir. Then read back every file left."""
    ballast = root / "ballast.bin"
    digest = None
    if ballast_fraction:
        total = disk_usage(root).total
        data = os.urandom(int(total * ballast_fraction))
        ballast.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
    agent = Agent(parse_config(json.dumps(camera_config(root / "capture", hz))),
                  governor_interval_s=governor_interval_s)
    handler, logger = _Records(), logging.getLogger("capsync")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    usage: list[float] = []
    t0 = time.monotonic()
    try:
        async with trio.open_nursery() as n:
            await n.start(agent.run)
            deadline = trio.current_time() + seconds
            while trio.current_time() < deadline:
                usage.append(disk_usage(root).percent)
                await trio.sleep(0.1)
            n.cancel_scope.cancel()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    run = DiskRun(agent.statistics(), time.monotonic() - t0, usage, logs=handler.records)
    run.files = capture_files(root / "capture") + leftover_progs(root / "capture")
    for p in run.files:
        c = read_capture(p)
        run.records_in_files += len(c.records)
        if c.damage is not None or p.suffix != ".capture":
            run.damaged.append(f"{p}: {c.damage}")
    if digest is not None:
        run.ballast_intact = hashlib.sha256(ballast.read_bytes()).hexdigest() == digest
    return run


async def test_camera_on_a_16mb_tmpfs_keeps_running_and_usage_hovers_near_the_threshold(tmpfs):
    run = await run_disk_full(tmpfs, 12.0)
    print("\n" + run.summary())
    s, g = run.stats, run.stats.governor
    assert sum(x.total_restarts for x in s.supervisors) == 0  # nothing crashed
    assert s.captured > 0.85 * 20 * 12
    assert s.bytes_written / s.captured > 150 * 1024  # images of about 200 KB
    assert g.passes >= 3 and g.files_deleted > 0 and g.bytes_deleted > g.files_deleted * 150 * 1024
    assert run.messages("deleted every Nth")  # the deletions are in the logs ...
    assert sum(r.files_deleted for r in run.messages("deleted every Nth")) == g.files_deleted
    tail = run.usage[len(run.usage) // 4:]
    assert sum(tail) / len(tail) < 92.0 and max(tail) < 100.0  # ... and usage stays around the threshold
    assert s.dropped <= 0.02 * s.captured
    assert not run.damaged and run.records_in_files == len(run.files)  # one intact image per file
    assert s.captured == len(run.files) + g.files_deleted  # every image is either on disk or counted deleted


async def test_disk_full_of_other_data_only_warns_and_deletes_nothing(tmpfs):
    run = await run_disk_full(tmpfs, 4.0, ballast_fraction=0.8)
    print("\n" + run.summary())
    s, g = run.stats, run.stats.governor
    assert sum(x.total_restarts for x in s.supervisors) == 0
    assert (g.files_deleted, g.passes, g.warnings, g.state) == (0, 0, 1, "not_ours")
    assert len(run.messages("outside the capture dir")) == 1  # once per state change, not per check
    assert run.ballast_intact
    assert len(run.files) == s.files_finished == s.captured  # nothing inside was deleted either
    assert not run.damaged
    # the disk filled up: readings were dropped, logged once, and nothing crashed
    assert s.dropped > 0 and len(run.messages("capture file write failed (ENOSPC)")) == 1


async def test_a_collector_drops_readings_while_the_disk_is_full_and_resumes_when_space_returns(tmpfs, caplog):
    comp = fake_component("env", "sensor", [{"method": "Readings", "capture_frequency_hz": 50}],
                          readings={f"r{i}": i for i in range(40)})
    cfg = parse_config(json.dumps(robot_config(tmpfs / "capture", [comp])))
    (plan,) = cfg.capture_plan()
    registry = ResourceRegistry()
    registry.build_all(cfg.resources())
    c = Collector(plan, registry.get("env"), CollectorSettings(tmpfs / "capture", "p", max_file_bytes=256 * 1024),
                  WallClock())
    ballast = tmpfs / "ballast.bin"
    with caplog.at_level(logging.INFO, logger="capsync.collector"):
        async with trio.open_nursery() as n:
            await n.start(c.run)
            await trio.sleep(0.5)
            fill_up(ballast)
            await trio.sleep(1.0)
            full = c.statistics()
            ballast.unlink()
            await trio.sleep(1.0)
            n.cancel_scope.cancel()
    s = c.statistics()
    assert full.dropped > 20 and s.dropped == full.dropped  # dropped while full, none after
    assert s.captured > full.captured + 40  # and capture resumed
    assert len([r for r in caplog.records if "write failed (ENOSPC)" in r.getMessage()]) == 1
    assert len([r for r in caplog.records if r.getMessage() == "capture writes work again"]) == 1
    files = capture_files(tmpfs / "capture")
    assert not leftover_progs(tmpfs / "capture")
    contents = [read_capture(p) for p in files]
    assert all(x.damage is None for x in contents)
    assert sum(len(x.records) for x in contents) == s.captured
