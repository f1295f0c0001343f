"""The cloud's per-part upload limits and their defaults (enforced by capsync.cloud.quotas)."""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3


@dataclass(frozen=True)
class UploadLimits:
    """The cloud's per-part upload limits; 0 switches a limit off."""

    #: Bytes one part may have declared in uploads not yet committed (`--max-inflight-bytes`).
    max_inflight_bytes: int = 64 * GiB
    #: Uploads one part may have declared and not yet committed (`--max-inflight-uploads`).
    max_inflight_uploads: int = 1000
    #: Bytes one part may store: committed and unexpired, plus in flight (`--max-stored-bytes`).
    max_stored_bytes: int = 1024 * GiB
    #: Free bytes a declaration must leave on the data dir's disk (`--min-free-bytes`).
    min_free_bytes: int = 1 * GiB
    #: An upload with no byte received for this long is expired, its bytes removed (`--upload-expiry-days`).
    upload_expiry_s: float = 7 * 86_400.0

    def __post_init__(self) -> None:
        for name in ("max_inflight_bytes", "max_inflight_uploads", "max_stored_bytes", "min_free_bytes", "upload_expiry_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (no limit) or more, got {getattr(self, name)}")
