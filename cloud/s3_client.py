"""The S3 client behind `capsync.cloud.s3_blobs.S3Blobs`: its settings, and turning the client's
errors into `BlobsUnavailable` with a reason and a fix.

boto3 is a blocking client: S3Blobs' methods run in the app's worker threads. Where the store is
and who the cloud is come from boto3's standard sources unless `S3Settings` names them:
`AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`) for an S3-compatible server such as MinIO,
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (or `AWS_PROFILE` and ~/.aws/), `AWS_REGION`.
Every request has a connect and a read timeout and a bounded number of attempts, so an
unreachable store is an error within seconds, never a hang.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from capsync.cloud.blobs import BlobsUnavailable

T = TypeVar("T")

#: Permissions the cloud needs on the bucket (docs/cloud.md shows the IAM policy).
NEEDED = "s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject, s3:AbortMultipartUpload"


class Conflict(Exception):
    """A conditional write lost: the object exists already (HTTP 412 or 409)."""


@dataclass(frozen=True)
class S3Settings:
    """How the cloud talks to the object store; a None field is left to boto3's standard sources."""

    endpoint_url: str | None = None
    region_name: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    #: Attempts per request, the first included (botocore's "standard" retry mode, with backoff).
    max_attempts: int = 3

    def client(self) -> Any:
        """A boto3 S3 client with these settings (thread-safe: one serves every worker thread)."""
        config = Config(
            connect_timeout=self.connect_timeout_s, read_timeout=self.read_timeout_s,
            retries={"total_max_attempts": self.max_attempts, "mode": "standard"},
            # Trio's default thread limit is 40: let that many requests run at once.
            max_pool_connections=40,
        )
        try:
            return boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region_name,
                aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key, config=config,
            )
        except (ValueError, BotoCoreError) as exc:  # a malformed endpoint URL, a broken ~/.aws/config
            raise BlobsUnavailable(f"cannot set up the S3 client: {exc}; check AWS_ENDPOINT_URL and ~/.aws/config",
                                   "misconfigured") from None


def call(where: str, what: str, fn: Callable[..., T], /, **kwargs: Any) -> T:
    """`fn(**kwargs)`, with the client's errors turned into ours.

    NoSuchKey (and a HEAD's 404) becomes FileNotFoundError, a failed condition Conflict, anything
    else BlobsUnavailable naming `where` (the bucket and prefix), `what` was being done, and a fix.
    """
    try:
        return fn(**kwargs)
    except ClientError as exc:
        raise translate(where, what, exc) from None
    except (NoCredentialsError, PartialCredentialsError):
        raise BlobsUnavailable(f"{where}: no usable AWS credentials to {what}; set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)", "no credentials") from None
    except NoRegionError:
        raise BlobsUnavailable(f"{where}: no region to {what}; set AWS_REGION", "misconfigured") from None
    except (ConnectTimeoutError, ReadTimeoutError) as exc:
        raise BlobsUnavailable(f"{where}: timed out trying to {what}: {exc}", "timed out") from None
    except (EndpointConnectionError, ConnectionClosedError) as exc:
        raise BlobsUnavailable(f"{where}: cannot reach the object store to {what}: {exc}; check AWS_ENDPOINT_URL "
                               "and that the store is running", "unreachable") from None
    except BotoCoreError as exc:
        raise BlobsUnavailable(f"{where}: could not {what}: {exc}", "object store error") from None


def translate(where: str, what: str, exc: ClientError) -> Exception:
    """The exception that stands for an S3 error response (see `call`)."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("NoSuchKey", "NotFound", "404"):  # a HEAD's 404 has no body to say which: S3Blobs.check tells
        return FileNotFoundError(f"{where}: {what}: no such object")
    if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
        return Conflict(code)
    if code == "NoSuchBucket":
        return BlobsUnavailable(f"{where}: the bucket does not exist ({what}); create it or fix --blobs",
                                "no such bucket")
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
                "ExpiredToken", "InvalidToken", "403") or status == 403:
        return BlobsUnavailable(f"{where}: access denied to {what} ({code}); the cloud's credentials need "
                                f"{NEEDED} on the bucket", "access denied")
    if code == "NotImplemented" or status == 501:
        return BlobsUnavailable(f"{where}: the object store does not implement what the cloud needs to {what} "
                                f"({code}: {error.get('Message', '')})", "not supported")
    return BlobsUnavailable(f"{where}: the object store refused to {what}: {code or status} "
                            f"{error.get('Message', '')}".rstrip(), "object store error")
