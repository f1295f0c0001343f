"""cloud/ shares with the agent only the capture file format and the protocol models (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

CLOUD = Path(__file__).resolve().parents[1] / "cloud"
#: runtime modules cloud/ may import: the capture format, the protocol models, log formatting, and
#: run_blocking (so the simulation harness can run the in-process cloud's blocking work inline).
ALLOWED_RUNTIME = {"runtime.capture_file", "runtime.sync_protocol", "runtime.logs", "runtime.blocking"}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_cloud_never_imports_actors_and_only_the_shared_runtime_modules() -> None:
    files = sorted(CLOUD.glob("*.py"))
    assert len(files) > 5
    for path in files:
        for name in _imports(path):
            top = name.split(".")[0]
            assert top != "actors", f"{path.name} imports {name}"
            if top == "runtime":
                assert name in ALLOWED_RUNTIME, f"{path.name} imports {name}"
