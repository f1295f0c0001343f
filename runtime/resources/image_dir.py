"""The `image-dir` camera model: serves real images from a folder, one after another, in a loop.

For replaying recorded data through the same capture pipeline as a live camera. Each `ReadImage`
(or `GetImages`) returns the next image file of the folder in name order; after the last one it
starts again from the first (`loop`, default true), re-reading the folder so files added
meanwhile join the replay. The MIME type comes from the file extension (`.jpg`/`.jpeg`, `.png`,
`.webp`, `.gif`, `.bmp`); when a capture asks for `mime_type` image/jpeg or image/png and the file
is another format, it is converted (Pillow, in a worker thread). `NextPointCloud` replays the
folder's `.pcd` files the same way. Each result carries `{"file": name}` in its metadata.

A missing, unreadable or empty folder fails the capture with a ResourceError that names the
folder; the collector counts it and keeps trying, so replay starts once the folder is filled.

Attributes: `path` (required, the folder; `~` is expanded), `loop` (default true; false: after
the last file every capture fails with "replay finished").
"""

from __future__ import annotations

import io
from pathlib import Path

import trio
from PIL import Image

from .media import IMAGE_FORMATS, MIME_PCD
from .registry import ResourceLookup, register_model
from .resource import Binary, ResourceError

MODEL = "image-dir"
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".gif": "image/gif", ".bmp": "image/bmp"}
POINT_CLOUD_TYPES = {".pcd": MIME_PCD}


class _Cursor:
    """Walks the files of one kind in a folder, in name order, re-listing the folder at each lap."""

    def __init__(self, folder: Path, types: dict[str, str], what: str, loop: bool) -> None:
        self.folder, self.types, self.what, self.loop = folder, types, what, loop
        self._files: list[Path] = []
        self._next = 0
        self.laps = 0

    def _list(self) -> list[Path]:
        if not self.folder.is_dir():
            raise ResourceError(f"image folder {self.folder} does not exist or is not a folder")
        try:
            files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in self.types and p.is_file())
        except OSError as exc:
            raise ResourceError(f"cannot list image folder {self.folder}: {exc.strerror or exc}") from None
        if not files:
            raise ResourceError(f"image folder {self.folder} has no {self.what} "
                                f"({', '.join(sorted(set(self.types)))})")
        return files

    def next_file(self) -> tuple[bytes, str, str]:
        """(bytes, MIME type, file name) of the next file; ResourceError when there is none."""
        for _ in range(3):  # a file may vanish between listing and reading
            if self._next >= len(self._files):
                if self._files and not self.loop:
                    raise ResourceError(f"replay finished: all {len(self._files)} {self.what} of "
                                        f"{self.folder} were served (loop is false)")
                self._files, self._next = self._list(), 0
                self.laps += 1
            path = self._files[self._next]
            self._next += 1
            try:
                return path.read_bytes(), self.types[path.suffix.lower()], path.name
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ResourceError(f"cannot read {path}: {exc.strerror or exc}") from None
        raise ResourceError(f"files in {self.folder} keep vanishing while being read")


def _convert(data: bytes, mime: str) -> bytes:
    try:
        with Image.open(io.BytesIO(data)) as img:
            out = io.BytesIO()
            img = img.convert("RGB") if mime == "image/jpeg" else img
            img.save(out, IMAGE_FORMATS[mime])
            return out.getvalue()
    except Exception as exc:
        raise ResourceError(f"cannot convert the image to {mime}: {exc}") from None


class ImageDirCamera:
    """A camera that replays the image files of a folder."""

    type = "camera"
    model = MODEL

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        self.name = name
        path = attributes.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ResourceError("attribute 'path' (the folder of images to replay) is required")
        loop = attributes.get("loop", True)
        if not isinstance(loop, bool):
            raise ResourceError(f"attribute 'loop' must be true or false, got {loop!r}")
        self.folder = Path(path).expanduser()
        self._images = _Cursor(self.folder, IMAGE_TYPES, "images", loop)
        self._clouds = _Cursor(self.folder, POINT_CLOUD_TYPES, "point clouds", loop)
        self._lock = trio.Lock()

    async def capture(self, method: str, params: dict) -> Binary | list[Binary]:
        """`ReadImage` / `GetImages` -> the next image; `NextPointCloud` -> the next .pcd file."""
        if method == "NextPointCloud":
            async with self._lock:
                data, mime, fname = await trio.to_thread.run_sync(self._clouds.next_file)
            return Binary(data, mime, {"file": fname})
        if method not in ("ReadImage", "GetImages"):
            raise ResourceError(f"camera {self.name!r} ({MODEL}) has no capture method {method!r}")
        wanted = str(params.get("mime_type") or "").lower().split("+", 1)[0]
        async with self._lock:
            data, mime, fname = await trio.to_thread.run_sync(self._images.next_file)
        if wanted in IMAGE_FORMATS and wanted != mime:
            data, mime = await trio.to_thread.run_sync(_convert, data, wanted), wanted
        if method == "GetImages":
            return [Binary(data, mime, {"source": self.name, "file": fname})]
        return Binary(data, mime, {"file": fname})

    async def close(self) -> None:
        """Nothing to release."""


register_model("camera", MODEL, ImageDirCamera)
