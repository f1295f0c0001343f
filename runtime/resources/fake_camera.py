"""The ``fake`` camera and vision service.

The camera renders a small synthetic scene (see media.py) as real JPEG/PNG bytes and a PCD point
cloud. Rendering is cached per frame: a new image is made only when time has moved on by at least
one frame (``fps`` attribute), so capturing faster than ``fps`` costs a dict lookup.

The vision service asks a camera (any model, through the lookup) for an image and reports
detections and classifications with it. With a fake camera the detections are the boxes of the
objects actually drawn in that frame.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Iterator

from PIL import Image

from .fake_base import FakeResource, as_float, as_int, as_str, register_fake, smooth
from .media import IMAGE_FORMATS, MIME_JPEG, MIME_PCD, MIME_PNG, PointCloudScene, Scene, encode_image, encode_pcd
from .registry import ResourceLookup
from .resource import Binary, ResourceError


def image_mime(params: dict, default: str = MIME_JPEG) -> str:
    """The requested image MIME type (``mime_type`` param); ``+lazy`` suffixes are ignored."""
    mime = as_str(params, "mime_type", default).lower().split("+", 1)[0]
    if mime not in IMAGE_FORMATS:
        raise ResourceError(f"unsupported mime_type {params.get('mime_type')!r} (supported: {', '.join(IMAGE_FORMATS)})")
    return mime


@register_fake
class FakeCamera(FakeResource):
    """Attributes: ``width``/``height`` (default 160x120), ``fps`` (scene frame rate and render
    cache granularity, default 10), ``jpeg_quality`` (default 80), ``sources`` (GetImages source
    names, default ["color"]; a name containing "depth" gives a 16-bit depth PNG), ``points``
    (point cloud size, default 400), ``pcd_format`` ("binary" or "ascii", default binary)."""

    type = "camera"

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        super().__init__(name, attributes, lookup)
        a = self.attributes
        width = as_int(a, "width", 160, what="attribute")
        height = as_int(a, "height", 120, what="attribute")
        if not (8 <= width <= 4096 and 8 <= height <= 4096):
            raise ResourceError(f"camera size must be 8..4096 pixels each way, got {width}x{height}")
        self.fps = as_float(a, "fps", 10.0, what="attribute")
        if self.fps <= 0:
            raise ResourceError("attribute 'fps' must be > 0")
        self.quality = as_int(a, "jpeg_quality", 80, what="attribute")
        if not 1 <= self.quality <= 95:
            raise ResourceError("attribute 'jpeg_quality' must be 1..95")
        sources = a.get("sources", ["color"])
        if not isinstance(sources, list) or not sources or not all(isinstance(s, str) and s for s in sources):
            raise ResourceError(f"attribute 'sources' must be a non-empty list of names, got {sources!r}")
        self.sources = list(sources)
        points = as_int(a, "points", 400, what="attribute")
        if not 8 <= points <= 1_000_000:
            raise ResourceError("attribute 'points' must be 8..1000000")
        pcd_format = as_str(a, "pcd_format", "binary", what="attribute")
        if pcd_format not in ("binary", "ascii"):
            raise ResourceError("attribute 'pcd_format' must be 'binary' or 'ascii'")
        self._pcd_binary = pcd_format == "binary"
        seed = str(a.get("seed", f"{self.type}/{name}"))
        self.scene = Scene(width, height, seed)
        self._cloud = PointCloudScene(points, seed)
        self._cache: dict[str, tuple[int, bytes]] = {}
        self.renders = 0
        #: The objects drawn in the frame the last ReadImage returned (read by the fake vision).
        self.last_objects: list = []

    def _frame(self) -> int:
        return int(self.elapsed() * self.fps)

    def _cached(self, key: str, frame: int, render) -> bytes:
        hit = self._cache.get(key)
        if hit is not None and hit[0] == frame:
            return hit[1]
        data = render(frame / self.fps)
        self.renders += 1
        self._cache[key] = (frame, data)
        return data

    def _image(self, mime: str, frame: int) -> bytes:
        return self._cached(mime, frame, lambda t: encode_image(self.scene.render_rgb(t), mime, self.quality))

    def _depth(self, frame: int) -> bytes:
        return self._cached("depth", frame, lambda t: encode_image(self.scene.render_depth(t), MIME_PNG))

    def m_ReadImage(self, params: dict) -> Binary:
        mime = image_mime(params)
        frame = self._frame()
        data = self._image(mime, frame)
        self.last_objects = self.scene.objects(frame / self.fps)
        return Binary(data, mime)

    def m_GetImages(self, params: dict) -> list[Binary]:
        mime = image_mime(params)
        frame = self._frame()
        out = []
        for source in self.sources:
            if "depth" in source:
                out.append(Binary(self._depth(frame), MIME_PNG, {"source": source}))
            else:
                out.append(Binary(self._image(mime, frame), mime, {"source": source}))
        return out

    def m_NextPointCloud(self, params: dict) -> Binary:
        frame = self._frame()
        data = self._cached("pcd", frame, lambda t: encode_pcd(self._cloud.points(t), binary=self._pcd_binary))
        return Binary(data, MIME_PCD)


def fake_detection_draws(vision_name: str, class_name: str, rate: float, seed: object = None) -> Iterator[bool]:
    """Whether a fake vision service finds `class_name` in its 1st, 2nd, ... call, for its
    ``fake_detections`` entry of that class at `rate`: seeded, so a test can predict them."""
    rng = random.Random(f"detect/{vision_name if seed is None else seed}/{class_name}")
    while True:
        yield rng.random() < rate


@register_fake
class FakeVision(FakeResource):
    """Attributes: ``labels`` (classification labels, default ["ball", "box", "floor"]),
    ``camera_name`` (used when the capture has no camera_name param), ``fake_detections``
    (``[{"class_name", "rate", "confidence"}]``: a detector that finds that class in that share of
    frames, seeded by name; confidence default 0.9)."""

    type = "vision"

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        super().__init__(name, attributes, lookup)
        labels = self.attributes.get("labels", ["ball", "box", "floor"])
        if not isinstance(labels, list) or not labels:
            raise ResourceError(f"attribute 'labels' must be a non-empty list, got {labels!r}")
        self.labels = [str(x) for x in labels]
        rng = self.rng
        self._label_scores = [smooth(rng, 0.0, 1.5) for _ in self.labels]
        self._confidence = {c: smooth(rng, 0.8, 0.15) for c in ("ball", "box")}
        self._ghost = smooth(rng, 0.3, 0.15)  # a low-confidence false positive
        self._ghost_xy = (smooth(rng, 0.5, 0.35), smooth(rng, 0.5, 0.35))
        self._planted = self._fake_detections(self.attributes.get("fake_detections") or [])

    def _fake_detections(self, spec: object) -> list[tuple[str, float, Iterator[bool]]]:
        if not isinstance(spec, list):
            raise ResourceError(f"attribute 'fake_detections' must be a list of objects, got {spec!r}")
        out = []
        for entry in spec:
            if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
                raise ResourceError(f"each fake_detections entry needs a class_name, got {entry!r}")
            rate = as_float(entry, "rate", what="fake_detections")
            confidence = as_float(entry, "confidence", 0.9, what="fake_detections")
            if not (0.0 <= rate <= 1.0 and 0.0 <= confidence <= 1.0):
                raise ResourceError(f"fake_detections {entry['class_name']!r}: rate and confidence must be 0..1")
            name = entry["class_name"]
            out.append((name, confidence, fake_detection_draws(self.name, name, rate, self.attributes.get("seed"))))
        return out

    async def m_CaptureAllFromCamera(self, params: dict) -> Binary:
        camera_name = as_str(params, "camera_name", self.attributes.get("camera_name"))
        mime = image_mime(params)
        min_conf = as_float(params, "min_confidence_score", 0.0)
        camera = self.lookup.get(camera_name)
        image = await camera.capture("ReadImage", {"mime_type": mime})
        if isinstance(image, list):
            image = image[0] if image else None
        if not isinstance(image, Binary):
            raise ResourceError(f"camera {camera_name!r} returned no image")
        t = self.elapsed()
        objects = getattr(camera, "last_objects", None)
        if objects is None:  # not a fake camera: make up boxes that fit the image
            objects = self._invented_objects(image.data, t)
        detections = [
            self._detection(o.class_name, self._confidence.get(o.class_name, self._ghost)(t), o) for o in objects
        ]
        w, h = _size(image.data)
        gx, gy = self._ghost_xy
        x, y = int(min(max(gx(t), 0.0), 0.9) * w), int(min(max(gy(t), 0.0), 0.9) * h)
        ghost = _Box("shadow", x, y, min(w, x + max(2, w // 10)), min(h, y + max(2, h // 10)))
        detections.append(self._detection("shadow", self._ghost(t), ghost))
        for class_name, confidence, draws in self._planted:
            if next(draws):
                detections.append(self._detection(class_name, confidence, _Box(class_name, w // 4, h // 4, w // 2, h // 2)))
        detections = [d for d in detections if d["confidence"] >= min_conf]
        classifications = [c for c in self._classify(t) if c["confidence"] >= min_conf]
        return Binary(image.data, image.mime_type, {"detections": detections, "classifications": classifications})

    @staticmethod
    def _detection(class_name: str, confidence: float, box) -> dict:
        return {
            "class_name": class_name,
            "confidence": round(min(max(confidence, 0.01), 0.99), 3),
            "x_min": int(box.x_min),
            "y_min": int(box.y_min),
            "x_max": int(box.x_max),
            "y_max": int(box.y_max),
        }

    def _classify(self, t: float) -> list[dict]:
        scores = [math.exp(f(t)) for f in self._label_scores]
        total = sum(scores)
        ranked = sorted(zip(self.labels, scores, strict=True), key=lambda p: -p[1])
        return [{"class_name": label, "confidence": round(s / total, 3)} for label, s in ranked]

    def _invented_objects(self, data: bytes, t: float) -> list:
        w, h = _size(data)
        cx = 0.5 + 0.3 * math.sin(0.4 * t)
        bw, bh = max(2, w // 4), max(2, h // 4)
        x = int(cx * (w - bw))
        return [_Box("ball", x, h // 3, x + bw, h // 3 + bh)]


class _Box:
    __slots__ = ("class_name", "x_min", "y_min", "x_max", "y_max")

    def __init__(self, class_name: str, x_min: int, y_min: int, x_max: int, y_max: int) -> None:
        self.class_name, self.x_min, self.y_min, self.x_max, self.y_max = class_name, x_min, y_min, x_max, y_max


def _size(data: bytes) -> tuple[int, int]:
    """Image size from its header (Pillow opens lazily); 160x120 when it is not a decodable image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:
        return 160, 120
