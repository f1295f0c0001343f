"""`GET /v1/ready`: what a load balancer asks before sending a cloud process traffic, on every backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from capsync.cloud.blobs import BlobsUnavailable
from capsync.cloud.store import StoreUnavailable
from tests.test_cloud_support import BACKENDS, CloudEnv, open_env


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CloudEnv]:
    """Readiness holds on every backend."""
    with open_env(request.param, tmp_path) as e:
        yield e


async def test_ready_without_auth_when_store_and_bytes_can_be_reached(env: CloudEnv) -> None:
    async with env.client(anonymous=True) as c:
        r = await c.get("/v1/ready")
    assert (r.status_code, r.json()) == (200, {"ready": True, "store": "ok", "blobs": "ok"})


@pytest.mark.parametrize("broken", ["store", "blobs"])
async def test_not_ready_names_what_cannot_be_reached(env: CloudEnv, broken: str, monkeypatch, caplog) -> None:
    async def no_store(*args):
        raise StoreUnavailable("database down: password=hunter2")

    def no_blobs():
        raise BlobsUnavailable("bucket gone")

    cloud = env.app.state.cloud
    if broken == "store":
        monkeypatch.setattr(cloud.store, "get_file", no_store)
    else:
        monkeypatch.setattr(cloud.blobs, "check", no_blobs)
    monkeypatch.setattr("capsync.cloud.app._not_ready_logged", {})
    async with env.client(anonymous=True) as c:
        answers = [await c.get("/v1/ready") for _ in range(3)]
    r = answers[0]
    assert r.status_code == 503 and r.headers["retry-after"]
    body = r.json()
    assert body["ready"] is False and body[broken].startswith("unavailable")
    assert body["store" if broken == "blobs" else "blobs"] == "ok"
    assert "hunter2" not in r.text  # the reason's details go to the log, not to whoever asks
    assert len([rec for rec in caplog.records if "not ready" in rec.getMessage()]) == 1  # not once per probe
