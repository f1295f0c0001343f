"""The sync protocol's shared vocabulary: routes, limits and the JSON bodies agent and cloud exchange.

Both the agent's uploader and the cloud import this module, so the two sides cannot drift.
The protocol itself is written down in docs/sync-protocol.md. In short, for one file:

    GET  /v1/files/{file_id}                 -> FileStatus (unknown | partial + offset | committed)
    POST /v1/files/{file_id}   UploadStart   -> FileStatus   (declare size + sha256; idempotent)
    PUT  /v1/files/{file_id}/data?offset=N   raw bytes -> FileStatus; 409 + FileStatus if N is stale
    POST /v1/files/{file_id}/commit          -> FileStatus committed (size + sha256); 422 on checksum mismatch

Every request authenticates with HTTP Basic auth: user = part id, password = part secret.
"""

from __future__ import annotations

import re
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

API_PREFIX = "/v1"
#: Largest body of one data request; the agent sends chunks of at most this size.
MAX_CHUNK_BYTES = 8 * 1024 * 1024
#: Default chunk the agent sends.
DEFAULT_CHUNK_BYTES = 1024 * 1024
#: Largest file the cloud accepts.
MAX_FILE_BYTES = 16 * 1024**3
#: Largest JSON request body.
MAX_JSON_BYTES = 64 * 1024
#: File ids: what `new_file_id()` and `stable_file_id()` produce, and nothing that could escape a path.
FILE_ID_RE = re.compile(r"\A[A-Za-z0-9_-]{8,64}\Z")  # \Z, not $: "$" lets a trailing newline in


class FileKind(str, Enum):
    """What the uploaded bytes are: a capture file (parsed by the cloud) or any other file (stored as is)."""

    CAPTURE = "capture"
    FILE = "file"


class FileState(str, Enum):
    """Where the cloud is with one file."""

    UNKNOWN = "unknown"
    PARTIAL = "partial"
    COMMITTED = "committed"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UploadStart(_Strict):
    """Body of `POST /v1/files/{file_id}`: what the agent is about to send."""

    kind: FileKind
    size: int = Field(ge=0, le=MAX_FILE_BYTES)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: For kind=file: the file's path relative to its sync root (shown in the cloud, used for its name).
    name: str = Field(default="", max_length=1024)
    mime_type: str = Field(default="", max_length=255)


#: The request header in which an agent states the protocol revision it speaks. Revision 2 added
#: `FileStatus.sha256`; agents that send no header (0.1.0) get answers without it, because their
#: strict models refuse any field they do not know.
PROTOCOL_HEADER = "Capsync-Protocol"
PROTOCOL_VERSION = 2
#: FileStatus fields and the revision that added them.
_ADDED_IN = {"sha256": 2}


#: The request header in which an agent states a plain file's modification time (ns since the
#: epoch) on its commit and one-request upload. Optional: a cloud that does not know it ignores it,
#: and an agent that does not send it leaves the cloud without the time; see docs/sync-protocol.md.
MTIME_HEADER = "Capsync-File-Mtime"
#: A folder of an additional sync path named `tag=<name>` tags every file under it with `<name>`
#: (a valid tag: the same characters as the config's tags).
TAG_FOLDER_PREFIX = "tag="
_FOLDER_TAG_RE = re.compile(r"\A[A-Za-z0-9_-]{1,256}\Z")


def folder_tags(name: str) -> tuple[str, ...]:
    """The tags of a plain file's folders: `tag=a/x/tag=b/f.jpg` -> ("a", "b"), each once, in order."""
    tags: list[str] = []
    for folder in name.split("/")[:-1]:
        if folder.startswith(TAG_FOLDER_PREFIX):
            tag = folder[len(TAG_FOLDER_PREFIX):]
            if _FOLDER_TAG_RE.match(tag) and tag not in tags:
                tags.append(tag)
    return tuple(tags)


def protocol_version(value: str | None) -> int:
    """The revision a request's `Capsync-Protocol` header states (1 when absent or not a number)."""
    try:
        return max(1, int(value or "1"))
    except ValueError:
        return 1


class FileStatus(_Strict):
    """The cloud's answer about one file: its state and how many bytes it holds."""

    file_id: str
    state: FileState
    offset: int = 0
    size: int | None = None
    records: int | None = None  # after commit: records stored from a capture file
    #: After commit: the sha256 of the committed bytes. The agent deletes its copy only when this
    #: and `size` state exactly the bytes it holds; None (an older cloud) never lets it delete.
    sha256: str | None = None

    def for_revision(self, version: int, **dump: object) -> dict:
        """This answer as JSON data for an agent speaking `version`: fields added later are left out."""
        newer = {name for name, added in _ADDED_IN.items() if added > version}
        return self.model_dump(mode="json", exclude=newer or None, **dump)


class ErrorBody(_Strict):
    """Body of every 4xx answer: a reason a person can act on."""

    error: str
    detail: str = ""
    status: FileStatus | None = None  # on 409 (stale offset) and 422 (checksum mismatch)


def file_route(file_id: str) -> str:
    """Path of one file's resource."""
    return f"{API_PREFIX}/files/{file_id}"
