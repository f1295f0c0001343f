"""Session-wide test plumbing: the S3 stand-in (tests/s3_standin.py) is stopped when the session ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _stop_s3_standin() -> Iterator[None]:
    yield
    from tests.s3_standin import stop_shared

    stop_shared()
