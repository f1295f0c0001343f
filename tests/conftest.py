"""Session-wide test plumbing: the S3 stand-in (tests/s3_standin.py) is stopped when the session ends;
`pcfs`, a mounted power-cut file system for the tests that need one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _stop_s3_standin() -> Iterator[None]:
    yield
    from tests.s3_standin import stop_shared

    stop_shared()


@pytest.fixture
def pcfs(tmp_path):
    """A PowerCutFS mounted at tmp_path/mnt over tmp_path/disk, closed after the test; the test is
    skipped with the reason when FUSE cannot mount here."""
    from capsync.testing import PowerCutError, PowerCutFS

    fs = PowerCutFS(tmp_path / "disk", tmp_path / "mnt", log=tmp_path / "fs.log")
    try:
        fs.mount()
    except PowerCutError as exc:
        pytest.skip(f"FUSE cannot be mounted here: {exc}")
    yield fs
    fs.close()
