"""The import rules of DESIGN.md, and the public names users import, pinned."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: runtime modules cloud/ may import: the capture format, the protocol models, log formatting, and
#: run_blocking (so the simulation harness can run the in-process cloud's blocking work inline).
CLOUD_MAY_IMPORT = {"runtime.capture_file", "runtime.sync_protocol", "runtime.logs", "runtime.blocking"}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_runtime_never_imports_actors_or_cloud():
    files = sorted((ROOT / "runtime").rglob("*.py"))
    assert len(files) > 10
    for path in files:
        for name in _imports(path):
            assert name.split(".")[0] not in ("actors", "cloud"), f"{path.relative_to(ROOT)} imports {name}"


def test_cloud_never_imports_actors_and_only_the_shared_runtime_modules():
    files = sorted((ROOT / "cloud").rglob("*.py"))
    assert len(files) > 5
    for path in files:
        for name in _imports(path):
            top = name.split(".")[0]
            assert top != "actors", f"{path.name} imports {name}"
            if top == "runtime":
                assert name in CLOUD_MAY_IMPORT, f"{path.name} imports {name}"


def test_public_exports():
    expected = {
        "actors.agent": ["Agent", "AgentStats"],
        "actors.sim": ["Simulation", "Accounting"],
        "runtime.faults": ["FaultPlan", "FaultKind", "Fault", "InjectedFault"],
        "runtime.supervision": ["Supervisor", "ChildSpec", "Restart", "Strategy", "SupervisorGaveUp"],
        "runtime.config": ["RobotConfig", "ConfigError", "load_config", "parse_config", "validate_file"],
        "runtime.capture_file": ["CaptureWriter", "CaptureHeader", "CaptureRecord", "read_capture",
                                 "recover_prog", "recover_dir", "contents_as_json_lines"],
        "runtime.resources.registry": ["register_model", "build_resource", "Binary", "ResourceError"],
        "cloud.app": ["create_app"],
        "cloud.server": ["serve"],
    }
    for module, names in expected.items():
        mod = importlib.import_module(module)
        missing = [n for n in names if not hasattr(mod, n)]
        assert not missing, f"{module} lacks {missing}"
