"""Small builders shared by tests: configs with fake resources, and reading back capture dirs."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from capsync.runtime.capture_file import CAPTURE_SUFFIX, PROG_SUFFIX, read_capture


def fake_component(name: str, type_: str, methods: list[dict[str, Any]], **attributes: Any) -> dict:
    """A component entry with model `fake` capturing `methods`."""
    return {
        "name": name, "namespace": "rdk", "type": type_, "model": "fake", "attributes": attributes,
        "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": methods}}],
    }


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def robot_config(capture_dir: Path, components: list[dict], **dm_attributes: Any) -> dict:
    """A whole config with one data manager writing to `capture_dir`; its control endpoint on a free port."""
    attrs = {"capture_dir": str(capture_dir), **dm_attributes}
    return {
        "cloud": {"id": "test-part", "secret": "s3cret"},
        "network": {"bind_address": f"127.0.0.1:{free_port()}"},
        "components": components,
        "services": [{"name": "dm", "namespace": "rdk", "type": "data_manager", "attributes": attrs}],
    }


def write_config(path: Path, config: dict) -> Path:
    """Write `config` as JSON to `path`; returns the path."""
    path.write_text(json.dumps(config, indent=2))
    return path


def capture_files(capture_dir: Path, suffix: str = CAPTURE_SUFFIX) -> list[Path]:
    """All files with `suffix` under the capture dir, sorted by path."""
    return sorted(capture_dir.rglob(f"*{suffix}"))


def records_by_method(capture_dir: Path) -> dict[str, list]:
    """Every record in every finished capture file, grouped by `type/name/method`, in time order."""
    out: dict[str, list] = {}
    for path in capture_files(capture_dir):
        c = read_capture(path)
        assert c.damage is None, f"{path}: {c.damage}"
        key = f"{c.header.resource_type}/{c.header.resource_name}/{c.header.method}"
        out.setdefault(key, []).extend(c.records)
    for recs in out.values():
        recs.sort(key=lambda r: r.requested_ns)
    return out


def leftover_progs(capture_dir: Path) -> list[Path]:
    """`.prog` files still in the capture dir."""
    return capture_files(capture_dir, PROG_SUFFIX)
