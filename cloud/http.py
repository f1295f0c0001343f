"""HTTP plumbing shared by the cloud's routes: errors as ErrorBody JSON, auth, bounded body reads.

Every endpoint is wrapped by `endpoint`, which turns an `ApiError` into its 4xx answer and any
unexpected exception into a logged 500, so a malformed request can only ever get a 4xx.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from capsync.cloud.auth import CredentialCache, RejectionLog, SignInThrottled, parse_basic
from capsync.cloud.blobs import Blobs, BlobsUnavailable
from capsync.cloud.group_commit import GroupCommitter
from capsync.cloud.limits import UploadLimits
from capsync.cloud.metrics import CloudMetrics
from capsync.cloud.store import Store, StoreUnavailable
from capsync.cloud.usage_cache import UsageCache
from capsync.runtime.sync_protocol import FILE_ID_RE, MTIME_HEADER, ErrorBody, FileStatus

log = logging.getLogger("capsync.cloud")

REALM_HEADER = {"WWW-Authenticate": 'Basic realm="capsync", charset="UTF-8"'}
#: A request carrying this header (the data browser's fetches) gets its 401 without WWW-Authenticate.
BROWSER_HEADER = "x-capsync-browser"


class ApiError(Exception):
    """A request the cloud refuses: HTTP status, a short error, a detail, and maybe the file's status."""

    def __init__(
        self,
        status_code: int,
        error: str,
        detail: str = "",
        *,
        status: FileStatus | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status_code} {error}: {detail}")
        self.status_code = status_code
        self.body = ErrorBody(error=error, detail=detail, status=status)
        self.headers = headers

    def response(self) -> Response:
        """The answer to send: ErrorBody JSON with this status code."""
        return error_response(self.status_code, self.body, self.headers)


def error_response(status_code: int, body: ErrorBody, headers: dict[str, str] | None = None) -> Response:
    """An ErrorBody as a JSON response."""
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=status_code, headers=headers)


class KeyedLocks:
    """One trio.Lock per key, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[Any, list] = {}  # key -> [lock, users]

    @asynccontextmanager
    async def hold(self, key: Any) -> AsyncIterator[None]:
        """Hold the lock of `key` for the duration of the block."""
        entry = self._locks.setdefault(key, [trio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


@dataclass
class Cloud:
    """What every request handler needs: the store, the bytes on disk, credentials, file locks, and
    the group committer."""

    store: Store
    blobs: Blobs
    credentials: CredentialCache
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    limits: UploadLimits = field(default_factory=UploadLimits)
    rejections: RejectionLog = field(default_factory=lambda: RejectionLog(log))
    #: Part records for sign-in (capsync.cloud.part_admin.PartAdmin); None checks secrets only.
    parts: Any = None
    #: Addresses of the reverse proxies in front of this process (`serve --trusted-proxy`): for a
    #: request from one of them, the client is the one X-Forwarded-For names (see `client_address`).
    trusted_proxies: frozenset[str] = frozenset()
    #: The Prometheus metrics this process serves at /metrics (capsync.cloud.metrics).
    metrics: CloudMetrics = field(default_factory=CloudMetrics)
    #: Every commit goes through it, so that commits arriving together share one transaction.
    committer: GroupCommitter = field(init=False)
    #: Recent part usage, for the quotas of one-request uploads.
    usage: UsageCache = field(init=False)

    def __post_init__(self) -> None:
        self.committer = GroupCommitter(self.store, metrics=self.metrics)
        self.usage = UsageCache(self.store, self.blobs)

    async def authenticate(self, request: Request) -> str:
        """The part id of a request with valid Basic credentials; 401 otherwise."""
        # The data browser page asks for no challenge, so the browser shows its own login form, not a prompt.
        challenge = None if BROWSER_HEADER in request.headers else REALM_HEADER
        creds = parse_basic(request.headers.get("authorization"))
        if creds is None:
            raise ApiError(401, "unauthorized", "send HTTP Basic auth: user = part id, password = part secret",
                           headers=challenge)
        address = client_address(request, self.trusted_proxies)
        # A cheap read on every request, so a disable or a rotation by the CLI holds at once.
        record = await self.parts.lookup(creds.part_id) if self.parts is not None else None
        version = record.version(time.time_ns()) if record is not None else ""
        try:
            ok = await self.credentials.check(creds, address, version)
        except SignInThrottled as exc:
            self.rejections.rejected("throttled", creds.part_id, _client(request))
            raise ApiError(429, "too many failed sign-ins", str(exc),
                           headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}) from None
        if not ok:
            self.rejections.rejected("wrong secret or unknown part", creds.part_id, _client(request))
            raise ApiError(401, "unauthorized", "unknown part or wrong secret", headers=challenge)
        if record is not None and record.disabled_reason is not None:
            raise ApiError(403, "part disabled", f"the cloud's operator disabled this part: {record.disabled_reason}"[:500])
        return creds.part_id


def cloud_of(request: Request) -> Cloud:
    """The Cloud object of the app serving `request`."""
    return request.app.state.cloud


def client_address(request: Request, trusted_proxies: frozenset[str]) -> str:
    """The address a request comes from: its peer, or, when the peer is a trusted proxy, the last
    address in X-Forwarded-For that is not one (each proxy appends the address it saw). Sign-in
    budgets are kept per address, so behind a proxy without this every robot would share the
    proxy's. A peer that is not trusted cannot set its address with the header."""
    peer = request.client.host if request.client else ""
    if peer not in trusted_proxies:
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if hop not in trusted_proxies:
            return hop[:64]
    return peer


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else ""


def file_id_param(request: Request) -> str:
    """The `{file_id}` path parameter, checked against FILE_ID_RE (400 otherwise)."""
    file_id = request.path_params.get("file_id", "")
    if not isinstance(file_id, str) or not FILE_ID_RE.fullmatch(file_id):
        raise ApiError(400, "invalid file id", "file ids are 8-64 characters of A-Z a-z 0-9 _ -")
    return file_id


def file_mtime(request: Request) -> int | None:
    """The plain file's modification time the agent states (MTIME_HEADER), None when absent; 400
    when it is not a whole number of nanoseconds 0..2^63-1."""
    raw = request.headers.get(MTIME_HEADER)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 19 or int(raw) >= 2**63:
        raise ApiError(400, f"invalid {MTIME_HEADER}", f"expected nanoseconds since the epoch, got {raw[:32]!r}")
    return int(raw)


def content_length(request: Request, limit: int) -> int | None:
    """The declared Content-Length, if any: 400 when it is not a number, 413 when above `limit`."""
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 20:
        raise ApiError(400, "invalid Content-Length", f"got {raw[:32]!r}")
    n = int(raw)
    if n > limit:
        raise ApiError(413, "body too large", f"at most {limit} bytes per request, Content-Length says {n}")
    return n


#: A request body must arrive within BODY_GRACE_S plus its size at MIN_BODY_RATE bytes/s (else 408).
BODY_GRACE_S = 30.0
MIN_BODY_RATE = 64 * 1024


def body_deadline_s(size: int) -> float:
    """How long a body of `size` bytes may take to arrive."""
    return BODY_GRACE_S + size / MIN_BODY_RATE


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, read while streaming and refused (413) as soon as it exceeds `limit` bytes.

    A body whose length differs from its Content-Length is refused with 400; one that takes longer
    than `body_deadline_s` of its Content-Length (or of `limit`) is refused with 408.
    """
    declared = content_length(request, limit)
    allowed_s = body_deadline_s(limit if declared is None else declared)
    chunks: list[bytes] = []
    total = 0
    try:
        with trio.fail_after(allowed_s):
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise ApiError(413, "body too large", f"at most {limit} bytes per request")
                chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client disconnected", "the request body ended early") from None
    except trio.TooSlowError:
        raise ApiError(408, "request body too slow", f"the body did not arrive within {allowed_s:.0f} s "
                       f"({MIN_BODY_RATE // 1024} KiB/s after {BODY_GRACE_S:.0f} s)", headers={"Connection": "close"}) from None
    if declared is not None and declared != total:
        raise ApiError(400, "wrong Content-Length", f"Content-Length says {declared}, body has {total} bytes")
    return b"".join(chunks)


def require_json(request: Request) -> None:
    """415 unless the request says `Content-Type: application/json`: a cross-site HTML form can only
    send text/plain or form types, so a JSON-only endpoint cannot be posted to by another site."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "unsupported media type",
                       f"send the body as Content-Type: application/json, not {media[:60] or 'no type'!r}")


async def read_json_body(request: Request, limit: int) -> bytes:
    """`read_body` for a JSON endpoint: 415 unless Content-Type is application/json."""
    require_json(request)
    return await read_body(request, limit)


def endpoint(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a route handler: ApiError -> its 4xx, a full disk -> 507, an unreachable store or object
    store -> 503, anything else -> logged 500."""

    @functools.wraps(fn)
    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except ApiError as exc:
            if exc.status_code >= 500:
                log.error("request failed", extra={"path": request.url.path, "error": exc.body.error})
            return exc.response()
        except BlobsUnavailable as exc:
            cloud_of(request).metrics.store_errors.labels("blobs").inc()
            log.error("object store unavailable", extra={"path": request.url.path, "error": str(exc)})
            return error_response(503, ErrorBody(error="object store unavailable", detail="the cloud's file store "
                                                 f"cannot be used ({exc.reason}); retry later"), {"Retry-After": "5"})
        except StoreUnavailable as exc:
            cloud_of(request).metrics.store_errors.labels("store").inc()
            log.error("store unavailable", extra={"path": request.url.path, "error": str(exc)})
            return error_response(503, ErrorBody(error="store unavailable", detail="the cloud's database cannot be "
                                                 "reached; retry later"), {"Retry-After": "5"})
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                log.error("disk full", extra={"path": request.url.path, "error": str(exc)})
                return error_response(507, ErrorBody(error="insufficient storage", detail="the cloud's disk is full"))
            log.exception("unexpected error", extra={"path": request.url.path, "method": request.method})
            return error_response(500, ErrorBody(error="internal error", detail="see the cloud's log"))
        except Exception:
            log.exception("unexpected error", extra={"path": request.url.path, "method": request.method})
            return error_response(500, ErrorBody(error="internal error", detail="see the cloud's log"))

    return wrapper
