"""The `filtered-camera` camera model: passes on only the frames a vision service finds interesting.

It wraps a camera and a vision service, both named in its attributes. Each `ReadImage` or
`GetImages` asks the vision service for the camera's frame with its detections and
classifications (`CaptureAllFromCamera` with `camera_name` = the wrapped camera, which any vision
model answers; the fake one works with any camera). The frame is captured when a detection
(`objects`) or a classification (`classifications`) names a configured label with at least that
label's confidence (`"*"`: any label); otherwise the capture answers NoCapture ("nothing to
capture this time"), which the collector counts as skipped, not failed. With `inverse` true it is
the other way round: only frames that do not match are captured.

With `window_seconds` > 0 the camera keeps the declined frames of the last `window_seconds` in a
ring buffer. On a match it returns those frames (each with its own time, through `Binary.age_s`)
followed by the matching frame, and passes every frame of the next `window_seconds` as well, so
what led up to the event and what followed it are captured too. Each frame is captured once.

Attributes: `camera` (required), `vision` (required; `vision_service` is accepted as its other
name), `objects` / `classifications` (`{label: min_confidence}`, confidences 0..1; at least one
of them non-empty), `inverse` (false), `window_seconds` (0; at most MAX_WINDOW_S).
"""

from __future__ import annotations

import math
from collections import deque

import trio

from .fake_base import as_float
from .registry import ResourceLookup, register_model
from .resource import Binary, NoCapture, ResourceError

MODEL = "filtered-camera"
#: The longest window a filtered camera keeps.
MAX_WINDOW_S = 60.0
#: The most frames the ring buffer holds, whatever the rate (memory stays bounded).
MAX_WINDOW_FRAMES = 1000
#: Frames on the edge of the window count as inside it (virtual-clock float arithmetic).
_EDGE_S = 1e-6


def _labels(attributes: dict, key: str) -> dict[str, float]:
    value = attributes.get(key) or {}
    if not isinstance(value, dict):
        raise ResourceError(f"attribute {key!r} must map labels to a minimum confidence, got {value!r}")
    out = {}
    for label, confidence in value.items():
        c = as_float(value, label, what=f"{key} confidence of")
        if not 0.0 <= c <= 1.0:
            raise ResourceError(f"attribute {key!r}: the confidence of {label!r} must be 0..1, got {confidence!r}")
        out[str(label)] = c
    return out


def _matches(found: object, wanted: dict[str, float]) -> bool:
    """Whether any of the vision answer's items (`{class_name, confidence}`) meets `wanted`."""
    if not wanted or not isinstance(found, list):
        return False
    anything = wanted.get("*")
    for item in found:
        if not isinstance(item, dict):
            continue
        confidence = item.get("confidence")
        if isinstance(confidence, bool) or not isinstance(confidence, int | float):
            continue
        need = wanted.get(str(item.get("class_name")), anything)
        if need is not None and confidence >= need:
            return True
    return False


class FilteredCamera:
    """A camera that captures only the frames a vision service matches (see the module docstring)."""

    type = "camera"
    model = MODEL

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        self.name = name
        self.lookup = lookup
        self.camera = attributes.get("camera")
        self.vision = attributes.get("vision", attributes.get("vision_service"))
        for key, value in (("camera", self.camera), ("vision", self.vision)):
            if not isinstance(value, str) or not value.strip():
                raise ResourceError(f"attribute {key!r} (the name of the {key} to filter with) is required")
        if self.camera == name:
            raise ResourceError("attribute 'camera' names this filtered camera itself")
        self.objects = _labels(attributes, "objects")
        self.classifications = _labels(attributes, "classifications")
        if not self.objects and not self.classifications:
            raise ResourceError('give "objects" or "classifications" ({label: min_confidence}) to filter on')
        self.inverse = attributes.get("inverse", False)
        if not isinstance(self.inverse, bool):
            raise ResourceError(f"attribute 'inverse' must be true or false, got {self.inverse!r}")
        self.window_s = as_float(attributes, "window_seconds", 0.0, what="attribute")
        if not 0.0 <= self.window_s <= MAX_WINDOW_S:
            raise ResourceError(f"attribute 'window_seconds' must be 0..{MAX_WINDOW_S:g}, got {self.window_s!r}")
        self._buffer: deque[tuple[float, Binary]] = deque(maxlen=MAX_WINDOW_FRAMES)
        self._pass_until = -math.inf
        #: Frames seen, captured because they matched, captured in a window, and declined.
        self.frames = self.matched = self.in_window = self.declined = 0

    def _is_match(self, metadata: dict) -> bool:
        hit = (_matches(metadata.get("detections"), self.objects)
               or _matches(metadata.get("classifications"), self.classifications))
        return hit != self.inverse

    async def capture(self, method: str, params: dict) -> Binary | list[Binary]:
        """`ReadImage` / `GetImages`: the frame (and its window) when it matches, else NoCapture."""
        if method not in ("ReadImage", "GetImages"):
            raise ResourceError(f"camera {self.name!r} ({MODEL}) has no capture method {method!r}; "
                                "it has ReadImage and GetImages")
        vision = self.lookup.get(self.vision)
        answer = await vision.capture("CaptureAllFromCamera", {"camera_name": self.camera,
                                                               "mime_type": params.get("mime_type") or "image/jpeg"})
        if isinstance(answer, list):
            answer = answer[0] if answer else None
        if not isinstance(answer, Binary):
            raise ResourceError(f"vision service {self.vision!r} returned no image for camera {self.camera!r}")
        metadata = answer.metadata if isinstance(answer.metadata, dict) else {}
        meta = {k: metadata[k] for k in ("detections", "classifications") if k in metadata}
        if method == "GetImages":
            meta["source"] = self.camera
        frame = Binary(answer.data, answer.mime_type, meta)
        now = trio.current_time()
        self.frames += 1
        if self._is_match(metadata):
            self.matched += 1
            out = [Binary(f.data, f.mime_type, f.metadata, now - t) for t, f in self._buffer
                   if now - t <= self.window_s + _EDGE_S]
            self.in_window += len(out)
            self._buffer.clear()
            if self.window_s > 0:
                self._pass_until = now + self.window_s + _EDGE_S
            out.append(frame)
            return out if len(out) > 1 or method == "GetImages" else frame
        if now <= self._pass_until:
            self.in_window += 1
            return [frame] if method == "GetImages" else frame
        self.declined += 1
        if self.window_s > 0:
            buffer = self._buffer
            buffer.append((now, frame))
            while now - buffer[0][0] > self.window_s + _EDGE_S:
                buffer.popleft()
        raise NoCapture()

    async def close(self) -> None:
        """Drops the ring buffer."""
        self._buffer.clear()


register_model("camera", MODEL, FilteredCamera)
