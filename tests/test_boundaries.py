"""The import rules of DESIGN.md, and the public names users import, pinned."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import capsync
import capsync.testing

ROOT = Path(__file__).resolve().parents[1]
#: runtime modules cloud/ may import: the capture format, the protocol models, log formatting, and
#: run_blocking (so the simulation harness can run the in-process cloud's blocking work inline).
CLOUD_MAY_IMPORT = {
    "capsync.runtime.capture_file", "capsync.runtime.sync_protocol", "capsync.runtime.logs", "capsync.runtime.blocking",
    "capsync.runtime.untrusted_cbor",
    # A second Ctrl-C while stopping ends `cloud serve` as it ends `capsync run`.
    "capsync.runtime.second_signal",
    # `serve --workers` restarts a dead worker with the agent's restart backoff (pure arithmetic).
    "capsync.runtime.backoff",
    # The robot config format itself: `cloud add-part --from-config` reads a robot's cloud.id and secret.
    "capsync.runtime.config",
}
#: The names the code was once imported under; nothing may import them any more.
OLD_TOP_LEVEL = {"actors", "runtime", "cloud"}


def _imports(path: Path) -> set[str]:
    """Every absolute module name `path` imports, by `import` statements and `importlib.import_module("...")`."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            out.add(node.args[0].value)
    return out


def _sources(*folders: str) -> list[Path]:
    files = sorted(p for f in folders for p in (ROOT / f).rglob("*.py") if "node_modules" not in p.parts)
    assert files, folders
    return files


def _ours(name: str, room: str) -> bool:
    return name == f"capsync.{room}" or name.startswith(f"capsync.{room}.")


def test_runtime_never_imports_actors_or_cloud():
    files = _sources("runtime")
    assert len(files) > 10
    for path in files:
        for name in _imports(path):
            assert not (_ours(name, "actors") or _ours(name, "cloud")), f"{path.relative_to(ROOT)} imports {name}"
            assert name not in ("capsync", "capsync.testing"), f"{path.relative_to(ROOT)} imports the public face {name}"


def test_cloud_never_imports_actors_and_only_the_shared_runtime_modules():
    files = _sources("cloud")
    assert len(files) > 5
    for path in files:
        for name in _imports(path):
            assert not _ours(name, "actors"), f"{path.name} imports {name}"
            if _ours(name, "runtime"):
                assert name in CLOUD_MAY_IMPORT, f"{path.name} imports {name}"


def test_nothing_imports_the_old_top_level_names():
    files = _sources("capsync", "actors", "runtime", "cloud", "tests", "scripts")
    assert len(files) > 100
    for path in files:
        for name in _imports(path):
            assert name.split(".")[0] not in OLD_TOP_LEVEL, f"{path.relative_to(ROOT)} imports {name}: use capsync.{name}"


def test_importing_every_module_loads_no_old_top_level_package(tmp_path):
    """At run time too: import every module of the package from a folder that is not the
    repository and check that no module named `actors`, `runtime` or `cloud` got loaded."""
    modules = [
        "capsync." + ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in _sources("actors", "runtime", "cloud")
    ]
    modules.remove("capsync.actors.demo")  # importing the demo is harmless, but it is a script
    modules.remove("capsync.runtime.powercut.__main__")  # the file system's process: runs on import
    if importlib.util.find_spec("pyfuse3") is None:  # the optional powercut extra: its FUSE side needs it
        modules = [m for m in modules if m not in ("capsync.runtime.powercut.fs", "capsync.runtime.powercut.daemon")]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import capsync, capsync.testing\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(OLD_TOP_LEVEL)!r})\n"
        "print(len(sys.modules)); assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_importing_the_cloud_does_not_load_the_agent(tmp_path):
    code = "import capsync.cloud.app, sys; print(sorted(m for m in sys.modules if m.startswith('capsync.actors')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


#: What users may import; everything else may move without notice (docs/simulation.md says so).
PUBLIC = {
    "capsync": ["__version__", "load_config", "parse_config", "validate_file", "RobotConfig", "ConfigError",
                "ConfigIssue", "Agent", "AgentStats", "register_model", "registered_models", "Binary", "Resource",
                "ResourceError", "NoCapture", "ResourceRegistry", "UnknownModel", "read_capture", "recover_dir", "CaptureHeader", "CaptureRecord",
                "CaptureFormatError"],
    "capsync.testing": ["Simulation", "Accounting", "SimDisk", "FaultPlan", "FaultKind", "Fault", "FaultEvent",
                        "InjectedFault", "FaultProxy", "ProxyStats", "ProxyThread", "PowerCutFS", "PowerCutError",
                        "PowerCutStats", "CutReport", "TornWrite", "fuse_unavailable"],
}


def test_public_exports():
    for module, names in PUBLIC.items():
        mod = importlib.import_module(module)
        assert sorted(mod.__all__) == sorted(names), f"{module}.__all__ differs from the pinned public names"
        missing = [n for n in names if not hasattr(mod, n)]
        assert not missing, f"{module} lacks {missing}"
    assert "Agent" in dir(capsync)
    assert capsync.testing.Simulation.__module__ == "capsync.actors.sim"


def test_public_names_are_the_internal_objects():
    from capsync.runtime.config import load_config
    from capsync.runtime.faults import FaultPlan

    assert capsync.load_config is load_config
    assert capsync.testing.FaultPlan is FaultPlan


def test_an_unknown_public_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        capsync.no_such_name  # noqa: B018


def test_the_agent_loads_pymongo_only_for_mongodb_capture(tmp_path):
    # pymongo is 9 MB of an idle agent's RSS; only an agent with a mongo_capture_config uses it.
    code = "import capsync.actors.cli, sys; print('pymongo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
