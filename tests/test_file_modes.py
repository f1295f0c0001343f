"""Capture files and the dirs the agent creates for them are owner-only, whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from capsync.runtime.capture_file import CaptureHeader, CaptureRecord, CaptureWriter, new_file_id
from capsync.runtime.sync_files import find_ready_files, set_aside


@pytest.fixture(params=[0o022, 0o000])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_capture_files_and_their_dirs_are_owner_only(tmp_path, umask):
    root = tmp_path / "robot"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    capture_dir = root / "capture"
    header = CaptureHeader(new_file_id(), "p1", "sensor", "s1", "Readings", {}, (), "tabular")
    w = CaptureWriter.create(capture_dir, header)
    assert _mode(w.path) == 0o600  # the .prog, from its first byte
    w.append(CaptureRecord(1, 2, {"secret": 42}))
    final = w.finish()
    assert _mode(final) == 0o600
    created = [capture_dir, *[p for p in capture_dir.rglob("*") if p.is_dir()]]
    assert len(created) == 4  # capture/<type>/<name>/<method>
    assert {p: _mode(p) for p in created} == {p: 0o700 for p in created}
    assert _mode(root) == 0o755  # a dir the agent did not create is left as it is


def test_the_failed_folder_is_owner_only(tmp_path, umask):
    capture_dir = tmp_path / "capture"
    header = CaptureHeader(new_file_id(), "p1", "sensor", "s1", "Readings", {}, (), "tabular")
    w = CaptureWriter.create(capture_dir, header)
    w.append(CaptureRecord(1, 2, {"v": 1}))
    w.finish()
    (f,) = find_ready_files([capture_dir], [], now_s=0)
    dest = set_aside(f, capture_dir)
    assert _mode(dest) == 0o600
    made = [d for d in dest.parents if capture_dir in d.parents]
    assert made and {d: _mode(d) for d in made} == {d: 0o700 for d in made}
