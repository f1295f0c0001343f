"""What a resource is to the agent: the `Resource` protocol, what a capture returns or raises,
and how a collector calls a capture method (awaited, or as a plain function that never waits).

Models are found and built by capsync.runtime.resources.registry; this module is what both a
model and the agent's collectors rely on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Binary:
    """One binary capture result: the file's bytes, its MIME type, and optional JSON-like metadata.

    `age_s` is how long before the capture returned this datum was taken (0: just now). A result
    that hands over frames taken earlier (a filtered camera's window) sets it, and the record's
    requested and received times are moved back by that much.
    """

    data: bytes
    mime_type: str
    metadata: dict | None = None
    age_s: float = 0.0


#: The oldest a Binary may say it is (`age_s`); a larger age is ignored (a window is seconds long).
MAX_AGE_S = 3600.0


#: What ``Resource.capture`` returns: a dict of JSON-like values for tabular methods, a
#: :class:`Binary` for binary methods, or a list of them for ``GetImages``.
CaptureResult = dict | Binary | list[Binary]


class ResourceError(Exception):
    """A resource call (or building a resource) failed; the message is the user-facing reason."""


class NoCapture(Exception):
    """Raised by ``capture`` to say "nothing to capture this time" (e.g. a filter declined the
    frame). Not a failure: the collector writes nothing, counts it as skipped, logs nothing and
    keeps its schedule."""


@runtime_checkable
class Resource(Protocol):
    type: str
    name: str
    model: str

    async def capture(self, method: str, params: dict) -> CaptureResult: ...

    async def close(self) -> None: ...

    # Optional: `async def do_command(self, command: dict) -> dict`, for DoCommand capture.
    # Optional: `def sync_capture(self, method: str) -> Callable[[str, dict], CaptureResult] | None`,
    # see sync_capture_call.


#: The capture method every resource type has: its `additional_params` are the command sent to
#: the resource's `do_command`, and the answer is a tabular reading.
DO_COMMAND = "DoCommand"


def capture_call(resource: Resource, method: str) -> Callable[[str, dict], Awaitable[CaptureResult]]:
    """What a collector awaits as `call(method, params)` for `method` of `resource`: its `capture`,
    or for DoCommand its `do_command` (a ResourceError when the model has none)."""
    if method != DO_COMMAND:
        return resource.capture
    do_command = getattr(resource, "do_command", None)

    async def call(method: str, params: dict) -> CaptureResult:
        if do_command is None:
            raise ResourceError(f"{resource.type} {resource.name!r} (model {getattr(resource, 'model', '?')!r}) has "
                                "no do_command, so it cannot capture DoCommand")
        return await do_command(dict(params))

    return call


def sync_capture_call(resource: Resource, method: str) -> Callable[[str, dict], CaptureResult] | None:
    """A plain function that captures `method` of `resource` at once, if the model offers one.

    A model may define `sync_capture(method)` returning a function `(method, params) -> result`
    that never waits (pure computation, no I/O that can block: a fake, a value a driver already
    holds), or None. A collector then takes its on-time ticks right in the shared timer's task,
    which saves a task switch per reading; the resource timeout cannot apply to such a call.
    Every other model, DoCommand and remote resources are captured through `capture_call`."""
    offer = getattr(resource, "sync_capture", None)
    if method == DO_COMMAND or offer is None or not _offers_sync_capture(resource):
        return None
    try:
        fn = offer(method)
    except Exception as exc:  # a bug in the model's offer: capture it the usual way, and say so
        log.warning("sync_capture failed; capturing through capture() instead",
                    extra={"resource": f"{resource.type}/{resource.name}", "method": method, "error": repr(exc)})
        return None
    return fn if callable(fn) else None


def _offers_sync_capture(resource: Resource) -> bool:
    """Whether `sync_capture` belongs to the same code as `capture`: a wrapper that forwards
    attributes (__getattr__), a subclass that overrides `capture` but not `sync_capture`, or a
    `capture` replaced on the instance would otherwise be bypassed by the plain function."""
    if "capture" in getattr(resource, "__dict__", {}):
        return False
    mro = type(resource).__mro__
    sync_owner = next((i for i, k in enumerate(mro) if "sync_capture" in k.__dict__), None)
    capture_owner = next((i for i, k in enumerate(mro) if "capture" in k.__dict__), None)
    return sync_owner is not None and (capture_owner is None or sync_owner <= capture_owner)
