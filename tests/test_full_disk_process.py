"""A real full disk under a real agent process: the capture dir on a small tmpfs that fills up while
the cloud is unreachable. The agent keeps running, applies the disk-full rule (docs/disk-governor.md),
and loses nothing it did not decide to delete and log; once the cloud is back the rest syncs.
Needs root (to mount the tmpfs); skipped with the reason otherwise."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from capsync.runtime.capture_file import CaptureFormatError, read_capture
from tests.helpers import fake_component, free_port, robot_config, write_config
from tests.processkit import (
    PART, CloudReader, ProcessKit, add_part, created_ns, local_capture_files, log_lines, wait_for,
)
from tests.test_governor_acceptance import mounted_tmpfs

Key = tuple[str, int]
DELETED = "capture file deleted by the disk-full rule"
PASS = "disk nearly full: deleted every Nth capture file"


class Watcher:
    """Reads every capture file under a dir every `interval_s`, remembering each path's keys."""

    def __init__(self, capture_dir: Path, interval_s: float = 0.1) -> None:
        self.capture_dir = capture_dir
        self.by_path: dict[Path, set[Key]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._interval = interval_s

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.scan()

    def scan(self) -> None:
        """Read every capture file now."""
        for path in local_capture_files(self.capture_dir):
            try:
                c = read_capture(path)
            except (CaptureFormatError, FileNotFoundError, OSError):
                continue
            self.by_path.setdefault(path, set()).update((c.header.file_id, i) for i in range(len(c.records)))

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.scan()

    def keys(self) -> set[Key]:
        """Every key ever seen."""
        return set().union(set(), *self.by_path.values())

    def keys_of(self, path: Path) -> set[Key]:
        """The keys seen in the capture file at `path`, under its finished or its `.prog` name."""
        return self.by_path.get(path, set()) | self.by_path.get(path.with_suffix(".prog"), set())


def test_a_real_full_disk_loses_nothing_the_agent_did_not_delete_and_log(tmp_path):
    try:
        mount = mounted_tmpfs(tmp_path / "capture", size_mb=12)
        capture = mount.__enter__()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        with ProcessKit(tmp_path) as kit:
            port = free_port()
            secret = add_part(tmp_path / "cloud")
            comps = [
                fake_component("cam", "camera", [{"method": "ReadImage", "capture_frequency_hz": 10,
                                                  "additional_params": {"mime_type": "image/jpeg"}}],
                               width=2048, height=1536, jpeg_quality=95, fps=10),  # ~2 MB/s of ~200 KB frames
                fake_component("env", "sensor", [{"method": "Readings", "capture_frequency_hz": 20}]),
            ]
            cfg = robot_config(capture, comps, sync_interval_mins=0.02)
            cfg["cloud"] = {"id": PART, "secret": secret, "app_address": f"http://127.0.0.1:{port}"}
            config = write_config(tmp_path / "robot.json", cfg)
            with Watcher(capture) as watcher:
                agent = kit.start_agent(config, args=["--log-level", "debug"])  # a line per deleted file
                # offline: the 12 MB disk fills in seconds; the governor checks every 5 s
                wait_for(lambda: sum(1 for r in log_lines(agent.log) if r.get("msg") == PASS) >= 2, 40,
                         "two deletion passes of the disk-full rule")
                assert agent.alive(), agent.text()[-3000:]
                cloud = kit.start_cloud(tmp_path / "cloud", port)
                with CloudReader(cloud.url, secret) as reader:
                    t0, online_ns = time.monotonic(), time.time_ns()
                    wait_for(lambda: not [p for p in local_capture_files(capture)
                                          if (created_ns(p) or online_ns) < online_ns], 60, "the backlog to drain",
                             interval=0.5)
                    kit.wait_between_passes(cloud)
                    stopped = agent.stop()
                    drain_s = time.monotonic() - t0
                    cloud_keys = {r.key for r in reader.records()}
            lines = log_lines(agent.log)
            deleted = [Path(r["path"]) for r in lines if r.get("msg") == DELETED]
            passes = [r for r in lines if r.get("msg") == PASS]
            full = [r for r in lines if "ENOSPC" in str(r.get("msg", "")) or "No space" in str(r.get("error", ""))]
            deleted_keys = set().union(set(), *(watcher.keys_of(p) for p in deleted))
            local_keys = set().union(set(), *(watcher.keys_of(p) for p in local_capture_files(capture)))
            seen = watcher.keys()
            lost = seen - cloud_keys - local_keys - deleted_keys
            print(f"\ncaptured {stopped} readings (agent's count), seen {len(seen)}, committed {len(cloud_keys)}, "
                  f"still local {len(local_keys)}, deleted by the disk rule {len(deleted_keys)} in {len(deleted)} "
                  f"files over {len(passes)} passes, ENOSPC lines {len(full)}, lost {len(lost)}, "
                  f"drain {drain_s:.1f} s")
            assert sum(int(r["files_deleted"]) for r in passes) == len(deleted) > 0
            assert not lost, sorted(lost)[:10]
            assert not (cloud_keys & deleted_keys), "a file the rule deleted reached the cloud"
            assert len(cloud_keys) > len(deleted_keys) > 0
    finally:
        mount.__exit__(None, None, None)
