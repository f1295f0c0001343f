"""Synthetic media for the fake camera: a small moving scene as real JPEG/PNG bytes, a 16-bit depth
PNG of the same scene, and a PCD v0.7 point cloud. Pure functions of (size, seed, time); no Trio.

The scene is a scrolling colour gradient with a ball moving on a Lissajous path and a box sliding
side to side. :meth:`Scene.objects` gives their bounding boxes, which the fake vision service
reports as detections, so detections match what is drawn.
"""

from __future__ import annotations

import io
import math
import random
import struct
from dataclasses import dataclass

from PIL import Image, ImageDraw

MIME_JPEG = "image/jpeg"
MIME_PNG = "image/png"
MIME_PCD = "pointcloud/pcd"
IMAGE_FORMATS = {MIME_JPEG: "JPEG", MIME_PNG: "PNG"}


@dataclass(frozen=True)
class SceneObject:
    class_name: str
    x_min: int
    y_min: int
    x_max: int
    y_max: int


class Scene:
    """One camera's synthetic scene. Background images are built once; a frame costs one crop,
    two shapes and the encoder."""

    def __init__(self, width: int, height: int, seed: str) -> None:
        self.width, self.height = width, height
        rng = random.Random(f"scene/{seed}")
        self._ball_f = (rng.uniform(0.08, 0.15), rng.uniform(0.11, 0.2))
        self._ball_p = (rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi))
        self._ball_color = tuple(rng.randrange(160, 256) for _ in range(3))
        self._box_f = rng.uniform(0.05, 0.1)
        self._box_p = rng.uniform(0, 2 * math.pi)
        self._box_color = tuple(rng.randrange(0, 96) for _ in range(3))
        self._scroll = rng.uniform(8, 20)  # px/s
        self._tint = rng.randrange(0, 256)
        self._background: Image.Image | None = None
        self._depth_background: Image.Image | None = None

    def objects(self, t: float) -> list[SceneObject]:
        w, h = self.width, self.height
        r = max(2, min(w, h) // 8)
        cx = w / 2 + (w / 2 - r - 1) * math.sin(2 * math.pi * self._ball_f[0] * t + self._ball_p[0])
        cy = h / 2 + (h / 2 - r - 1) * math.sin(2 * math.pi * self._ball_f[1] * t + self._ball_p[1])
        bw, bh = max(3, w // 5), max(3, h // 4)
        bx = (w - bw - 1) * (0.5 + 0.5 * math.sin(2 * math.pi * self._box_f * t + self._box_p))
        by = h - bh - max(1, h // 20)
        return [
            SceneObject("box", int(bx), int(by), int(bx) + bw, int(by) + bh),
            SceneObject("ball", int(cx - r), int(cy - r), int(cx + r), int(cy + r)),
        ]

    def _rgb_background(self) -> Image.Image:
        if self._background is None:
            w, h = self.width, self.height
            # Two widths wide and periodic, so a scrolling crop never shows a seam.
            ramp = [int(255 * abs(1 - 2 * x / (2 * w))) for x in range(2 * w)]
            red = Image.new("L", (2 * w, h))
            red.putdata([v for _ in range(h) for v in ramp])
            green = Image.linear_gradient("L").resize((2 * w, h))
            blue = Image.new("L", (2 * w, h), self._tint)
            self._background = Image.merge("RGB", (red, green, blue))
        return self._background

    def render_rgb(self, t: float) -> Image.Image:
        w, h = self.width, self.height
        offset = int(t * self._scroll) % w
        img = self._rgb_background().crop((offset, 0, offset + w, h))
        draw = ImageDraw.Draw(img)
        for obj in self.objects(t):
            box = (obj.x_min, obj.y_min, obj.x_max, obj.y_max)
            if obj.class_name == "ball":
                draw.ellipse(box, fill=self._ball_color, outline=(0, 0, 0))
            else:
                draw.rectangle(box, fill=self._box_color, outline=(255, 255, 255))
        return img

    def render_depth(self, t: float) -> Image.Image:
        """16-bit depth in millimetres: floor far at the top of the frame, objects nearer."""
        w, h = self.width, self.height
        if self._depth_background is None:
            bg = Image.new("I;16", (w, h))
            bg.putdata([int(6000 - 4500 * y / max(1, h - 1)) for y in range(h) for _ in range(w)])
            self._depth_background = bg
        img = self._depth_background.copy()
        draw = ImageDraw.Draw(img)
        for obj in self.objects(t):
            box = (obj.x_min, obj.y_min, obj.x_max, obj.y_max)
            if obj.class_name == "ball":
                draw.ellipse(box, fill=900 + int(300 * math.sin(t)))
            else:
                draw.rectangle(box, fill=1200)
        return img


def encode_image(img: Image.Image, mime_type: str, quality: int = 80) -> bytes:
    out = io.BytesIO()
    if mime_type == MIME_JPEG:
        img.save(out, "JPEG", quality=quality)
    elif mime_type == MIME_PNG:
        img.save(out, "PNG", compress_level=1)
    else:
        raise ValueError(f"unsupported image MIME type {mime_type!r}")
    return out.getvalue()


# -- point clouds

_POINT = struct.Struct("<fffI")


class PointCloudScene:
    """A ball of points rolling over a floor grid, in metres, ``n`` points in all."""

    def __init__(self, n: int, seed: str) -> None:
        if n < 8:
            raise ValueError("a point cloud needs at least 8 points")
        rng = random.Random(f"pcd/{seed}")
        side = max(2, int(math.sqrt(n // 4)))
        self._floor = [
            (-1.0 + 2.0 * i / (side - 1), 1.0 + 2.0 * j / (side - 1), 0.0) for i in range(side) for j in range(side)
        ]
        m = n - len(self._floor)
        golden = math.pi * (3 - math.sqrt(5))
        self._sphere = []
        for k in range(m):
            z = 1 - 2 * (k + 0.5) / m
            r = math.sqrt(1 - z * z)
            self._sphere.append((r * math.cos(golden * k), r * math.sin(golden * k), z))
        self._speed = rng.uniform(0.2, 0.5)
        self._phase = rng.uniform(0, 2 * math.pi)
        self.n = n

    def points(self, t: float) -> list[tuple[float, float, float, int]]:
        pts = [(x, y, z, 0x808080) for x, y, z in self._floor]
        a = self._speed * t + self._phase
        cx, cy, radius = 0.6 * math.sin(a), 2.0 + 0.6 * math.cos(1.3 * a), 0.25
        ca, sa = math.cos(3 * a), math.sin(3 * a)
        for ux, uy, uz in self._sphere:
            x = ux * ca - uy * sa
            y = ux * sa + uy * ca
            shade = int(127 + 127 * uz)
            pts.append((cx + radius * x, cy + radius * y, radius + radius * uz, (shade << 16) | (64 << 8) | (255 - shade)))
        return pts


def encode_pcd(points: list[tuple[float, float, float, int]], *, binary: bool = True) -> bytes:
    """A PCD v0.7 file with fields x y z rgb (rgb packed as 0x00RRGGBB in an unsigned int)."""
    n = len(points)
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\n"
        "VERSION 0.7\n"
        "FIELDS x y z rgb\n"
        "SIZE 4 4 4 4\n"
        "TYPE F F F U\n"
        "COUNT 1 1 1 1\n"
        f"WIDTH {n}\n"
        "HEIGHT 1\n"
        "VIEWPOINT 0 0 0 1 0 0 0\n"
        f"POINTS {n}\n"
        f"DATA {'binary' if binary else 'ascii'}\n"
    ).encode("ascii")
    if binary:
        body = bytearray(n * _POINT.size)
        pack = _POINT.pack_into
        for i, (x, y, z, rgb) in enumerate(points):
            pack(body, i * 16, x, y, z, rgb)
        return header + bytes(body)
    return header + "".join(f"{x:.5f} {y:.5f} {z:.5f} {rgb}\n" for x, y, z, rgb in points).encode("ascii")


def parse_pcd_header(data: bytes) -> tuple[dict[str, list[str]], int]:
    """The header fields of a PCD file and the offset where its data starts (for tests and inspect)."""
    fields: dict[str, list[str]] = {}
    offset = 0
    while True:
        end = data.index(b"\n", offset)
        line = data[offset:end].decode("ascii").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        fields[key] = values
        if key == "DATA":
            return fields, offset
