"""A stand-in for S3 in the tests: moto's server mode, a real HTTP endpoint on 127.0.0.1 that speaks
the S3 API (buckets, conditional PUTs, multipart uploads, copies) from memory.

It is NOT Amazon S3 or MinIO: it checks no real permissions and keeps nothing. Tests that need the
object store call `shared()` (or use the `s3_standin` fixture): one server for the whole session,
started on a free port on first use and stopped at the session's end (tests/conftest.py). Each
test works in a fresh bucket (`new_bucket`), so tests never see each other's objects.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

REGION = "us-east-1"
#: Any key works with the stand-in; these are what the tests' clients and CLI runs present.
KEY_ID, SECRET = "capsync-test", "capsync-test-secret"


class S3StandIn:
    """moto's ThreadedMotoServer on a free loopback port, with helpers for buckets and clients."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint = ""
        self._client: Any = None

    def start(self) -> S3StandIn:
        """Start serving; `endpoint` is its URL."""
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        """Stop serving (everything it held is gone)."""
        self._server.stop()

    def settings(self, **overrides: Any) -> Any:
        """S3Settings for this endpoint with test credentials (nothing read from the environment)."""
        from capsync.cloud.s3_client import S3Settings

        fields = dict(endpoint_url=self.endpoint, region_name=REGION, access_key_id=KEY_ID, secret_access_key=SECRET,
                      connect_timeout_s=2.0, read_timeout_s=10.0, max_attempts=2)
        return S3Settings(**{**fields, **overrides})

    def client(self) -> Any:
        """A boto3 client of the stand-in, for a test's own checks (one, made on first use)."""
        if self._client is None:
            self._client = self.settings().client()
        return self._client

    def new_bucket(self) -> str:
        """Create a bucket of a fresh name and return the name."""
        name = f"capsync-test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def drop_bucket(self, name: str) -> None:
        """Delete a bucket and every object in it (so the stand-in's memory does not grow test after test)."""
        c = self.client()
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                c.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        for mpu in c.list_multipart_uploads(Bucket=name).get("Uploads", []):
            c.abort_multipart_upload(Bucket=name, Key=mpu["Key"], UploadId=mpu["UploadId"])
        c.delete_bucket(Bucket=name)

    def blobs(self, bucket: str, scratch_dir: Path, prefix: str = "cloud", **settings: Any) -> Any:
        """An S3Blobs on `bucket`/`prefix` of the stand-in."""
        from capsync.cloud.s3_blobs import S3Blobs

        return S3Blobs(bucket, prefix, self.settings(**settings), scratch_dir=scratch_dir)

    def env(self) -> dict[str, str | None]:
        """The standard AWS variables pointing at the stand-in, for a child process (tests/processkit.py's
        `env=`); None marks the variables to unset, which would point it elsewhere."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_REGION": REGION, "AWS_PROFILE": None, "AWS_SESSION_TOKEN": None, "AWS_ENDPOINT_URL_S3": None}

    @contextmanager
    def environ(self) -> Iterator[None]:
        """The standard AWS variables pointing at the stand-in, as a `capsync cloud` run would have them."""
        env = self.env()
        with mock.patch.dict(os.environ, {k: v for k, v in env.items() if v is not None}):
            for name in (k for k, v in env.items() if v is None):
                os.environ.pop(name, None)
            yield


_shared: S3StandIn | None = None


def shared() -> S3StandIn:
    """The session's stand-in, started on first use; skips the test when moto is not installed."""
    global _shared
    if _shared is None:
        try:
            import moto.server  # noqa: F401
        except ImportError as exc:
            pytest.skip(f"moto[server] (the S3 stand-in, a test dependency) is not installed: {exc}")
        _shared = S3StandIn().start()
    return _shared


def stop_shared() -> None:
    """Stop the session's stand-in if it was started."""
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None


@pytest.fixture(scope="session")
def s3_standin() -> S3StandIn:
    """The S3 stand-in (moto's server mode) for this session."""
    return shared()


@pytest.fixture
def s3_bucket(s3_standin: S3StandIn) -> Iterator[str]:
    """A fresh, empty bucket on the stand-in, deleted after the test."""
    name = s3_standin.new_bucket()
    yield name
    s3_standin.drop_bucket(name)
