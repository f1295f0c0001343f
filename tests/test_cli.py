"""The `capsync` command line: validate exit codes and messages, inspect output, the console script."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from capsync.actors.cli import main
from capsync.runtime.capture_file import CaptureHeader, CaptureRecord, CaptureWriter, new_file_id
from capsync.runtime.resources.methods import DataKind
from tests.test_config import BAD, BAD_CONFIGS

DOC_CONFIGS = Path(__file__).parent / "doc_configs"


@pytest.mark.parametrize("name", sorted(BAD))
def test_validate_rejects_bad_config_naming_the_place(name, capsys):
    assert main(["validate", str(BAD_CONFIGS / name)]) == 2
    err = capsys.readouterr().err
    path, message = BAD[name]
    assert f"{name}: invalid" in err
    assert (f"{path}: " if path else name) in err  # the JSON path, or the file with line and column
    assert message in err


def test_validate_accepts_every_documented_example(capsys):
    files = sorted(DOC_CONFIGS.glob("*.json"))
    assert len(files) >= 5
    assert main(["validate", *map(str, files)]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok (") == len(files)


def _capture_file(tmp_path: Path) -> Path:
    header = CaptureHeader(new_file_id(), "p1", "camera", "cam", "ReadImage", {"mime_type": "image/png"},
                           ("a",), DataKind.BINARY, mime_type="image/png")
    w = CaptureWriter.create(tmp_path, header)
    w.append(CaptureRecord(1_000, 2_000, b"\x89PNG-not-really"))
    w.append(CaptureRecord(3_000, 4_000, b"second"))
    return w.finish()


def test_inspect_prints_header_then_records_as_json_lines(tmp_path, capsys):
    path = _capture_file(tmp_path)
    assert main(["inspect", str(path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    assert lines[0]["resource_name"] == "cam" and lines[0]["kind"] == "binary"
    assert lines[2]["payload"]["size"] == len(b"second") and "sha256" in lines[2]["payload"]


def test_inspect_reports_unreadable_file_with_exit_2(tmp_path, capsys):
    bogus = tmp_path / "x.capture"
    bogus.write_bytes(b"not a capture file at all")
    assert main(["inspect", str(bogus)]) == 2
    err = capsys.readouterr().err
    assert "x.capture: at byte 0: not a capture file" in err


def test_console_script_is_installed_and_validates(tmp_path):
    exe = shutil.which("capsync") or str(Path(__file__).parents[1] / ".venv" / "bin" / "capsync")
    bad = subprocess.run([exe, "validate", str(BAD_CONFIGS / "unknown_attribute.json")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "services[0].attributes.sync_interval_min" in bad.stderr
    good = subprocess.run([exe, "validate", str(DOC_CONFIGS / sorted(p.name for p in DOC_CONFIGS.glob("*.json"))[0])],
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
