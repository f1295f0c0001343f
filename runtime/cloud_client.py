"""The agent's HTTP client for the sync protocol (docs/sync-protocol.md), over httpx.

Errors are sorted by what the uploader should do about them:
`CloudUnavailable` (network down, timeouts, 5xx, bad credentials): back off and retry later;
`StaleOffset`: resume from the offset the cloud gave; `ChecksumMismatch`: start the file over;
`UploadRejected`: the cloud will never take this file (malformed): set it aside.
The transport is injectable (an `httpx.ASGITransport` around the cloud app, in tests).
"""

from __future__ import annotations

import base64
import logging

import httpx
from pydantic import ValidationError

from capsync.runtime.rpc import warn_plain_text_secret
from capsync.runtime.sync_protocol import (
    MAX_CHUNK_BYTES,
    MTIME_HEADER,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    ErrorBody,
    FileStatus,
    UploadStart,
    file_route,
)


log = logging.getLogger("capsync.cloud_client")


class CloudError(Exception):
    """Base of everything the cloud client raises."""


class CloudUnavailable(CloudError):
    """The cloud could not be reached or could not serve the request now; retry later."""


class CloudRefusedCredentials(CloudUnavailable):
    """The cloud refused this part's id and secret (401/403): nothing syncs until the config or the
    cloud's part is fixed. Retried like an outage, since the fix (a new secret) needs no restart."""


class UploadRejected(CloudError):
    """The cloud refused this file for good (4xx): retrying the same bytes will not help."""

    def __init__(self, reason: str, status_code: int = 400) -> None:
        super().__init__(reason)
        self.status_code = status_code


class StaleOffset(CloudError):
    """The cloud holds a different number of bytes than we assumed; `status.offset` is right."""

    def __init__(self, status: FileStatus) -> None:
        super().__init__(f"cloud holds {status.offset} bytes of {status.file_id}")
        self.status = status


class ChecksumMismatch(CloudError):
    """The bytes the cloud received do not match the declared sha256; it discarded them."""


class OneRequestUnsupported(CloudError):
    """The cloud does not take this file in one request (a cloud older than the route, or a file
    above its one-request limit): use the resumable upload."""


class CloudClient:
    """Talks the sync protocol to one cloud as one part (HTTP Basic auth: part id + secret)."""

    def __init__(
        self,
        base_url: str,
        part_id: str,
        secret: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = (part_id, secret)
        if secret and (transport is None or isinstance(transport, httpx.AsyncHTTPTransport)):
            warn_plain_text_secret(log, "cloud sync", self.base_url, "use an https:// cloud.app_address")
        self._transport = transport
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self._http: httpx.AsyncClient | None = None
        #: Bytes of file data sent (chunk bodies), for accounting and benchmarks.
        self.bytes_sent = 0
        #: False once the cloud answered that it has no one-request upload route (an older cloud).
        self.one_request = True
        #: The biggest chunk worth sending: lowered when something in between (a proxy's body limit)
        #: refused a bigger one with 413 (actors/uploader.py ChunkSizes).
        self.max_chunk_bytes = MAX_CHUNK_BYTES

    async def aclose(self) -> None:
        """Close the connection pool; the next call opens a new one (a restarted scheduler reuses us)."""
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    async def status(self, file_id: str) -> FileStatus:
        """What the cloud knows of `file_id`."""
        return await self._call("GET", file_route(file_id))

    async def start(self, file_id: str, start: UploadStart) -> FileStatus:
        """Declare an upload (idempotent); the answer says where to resume, or that it is committed."""
        return await self._call("POST", file_route(file_id), json=start.model_dump(mode="json"))

    async def send(self, file_id: str, offset: int, data: bytes) -> FileStatus:
        """Send `data` to be stored at `offset`; raises StaleOffset if the cloud holds another offset."""
        status = await self._call(
            "PUT", file_route(file_id) + "/data", params={"offset": offset}, content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        self.bytes_sent += len(data)
        return status

    async def put_whole(self, file_id: str, start: UploadStart, data: bytes, mtime_ns: int | None = None) -> FileStatus:
        """Upload a small file in one request (declaration, bytes and commit); raises
        OneRequestUnsupported when this cloud cannot (and, for an older cloud, remembers it).
        `mtime_ns`: a plain file's modification time, for the cloud to keep."""
        params = {k: str(v) for k, v in start.model_dump(mode="json").items() if v != ""}
        try:
            status = await self._call("PUT", file_route(file_id), params=params, content=data,
                                      headers={"Content-Type": "application/octet-stream", **_mtime(mtime_ns)})
        except UploadRejected as exc:
            if exc.status_code in (404, 405):
                self.one_request = False
                log.info("the cloud has no one-request upload; using the resumable upload for every file",
                         extra={"cloud": self.base_url})
            if exc.status_code in (404, 405, 413):
                raise OneRequestUnsupported(str(exc)) from None
            raise
        self.bytes_sent += len(data)
        return status

    async def commit(self, file_id: str, mtime_ns: int | None = None) -> FileStatus:
        """Ask the cloud to verify and commit the file; raises ChecksumMismatch if the bytes are wrong.
        `mtime_ns`: a plain file's modification time, for the cloud to keep."""
        return await self._call("POST", file_route(file_id) + "/commit", headers=_mtime(mtime_ns))

    async def _call(self, method: str, url: str, **kw) -> FileStatus:
        if self._http is None:
            # The Basic credentials as a default header rather than `auth=`: the same header on every
            # request, without httpx's per-request auth flow (a generator round per request).
            authorization = "Basic " + base64.b64encode(":".join(self._auth).encode()).decode("ascii")
            self._http = httpx.AsyncClient(base_url=self.base_url, transport=self._transport, timeout=self._timeout,
                                           headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION),
                                                    "Authorization": authorization})
        try:
            resp = await self._http.request(method, url, **kw)
        except httpx.HTTPError as exc:  # connect errors, timeouts, resets mid-body
            raise CloudUnavailable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        if resp.status_code == 200:
            try:
                return FileStatus.model_validate_json(resp.content)
            except ValidationError as exc:  # not our cloud, or a broken one: like an outage, retry later
                raise CloudUnavailable(f"the cloud's answer to {method} {url} is not a file status: "
                                       f"{exc.errors()[0]['msg'] if exc.errors() else exc}") from None
        error = _error_body(resp)
        if resp.status_code == 409 and error and error.status:
            raise StaleOffset(error.status)
        if resp.status_code == 422 and error and error.error == "checksum mismatch":
            raise ChecksumMismatch(error.detail or error.error)
        reason = f"HTTP {resp.status_code}: {error.error if error else resp.text[:200]}"
        if error and error.detail:
            reason += f" ({error.detail})"
        if resp.status_code in (401, 403):
            raise CloudRefusedCredentials(f"the cloud refused part {self._auth[0]!r}'s credentials ({reason}); "
                                          "check cloud.id and cloud.secret in the config against the cloud's part")
        if resp.status_code in (408, 429) or resp.status_code >= 500:
            raise CloudUnavailable(reason)
        raise UploadRejected(reason, resp.status_code)


def _mtime(mtime_ns: int | None) -> dict[str, str]:
    """The header stating a plain file's modification time (none for a capture file); clouds that
    do not know it ignore it."""
    return {} if mtime_ns is None else {MTIME_HEADER: str(mtime_ns)}


def _error_body(resp: httpx.Response) -> ErrorBody | None:
    try:
        return ErrorBody.model_validate_json(resp.content)
    except ValueError:
        return None
