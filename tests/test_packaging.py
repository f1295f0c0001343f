"""capsync installs as one import name, `capsync`, and works from a wheel outside the repository.

The wheel tests build the project's wheel, install it with its dependencies into a fresh venv in
a temp folder (pip fetches them from the package index, or its cache), and run the installed
`capsync` from folders that are not the repository, with no PYTHONPATH: the way a user runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

import capsync

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
INSTALL_TIMEOUT_S = 600
#: What pip says when the package index cannot be reached (then the wheel tests skip).
OFFLINE_SIGNS = ("Could not find a version", "No matching distribution", "Failed to establish a new connection",
                 "Temporary failure in name resolution", "Network is unreachable")


def test_every_subpackage_is_listed_in_pyproject():
    """The package-dir mapping lists packages by hand: a new subpackage must not be left out of the wheel."""
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    found = {"capsync"}
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *rel)))
    assert sorted(PYPROJECT["tool"]["setuptools"]["packages"]) == sorted(found)


def test_the_version_is_the_one_in_pyproject():
    assert capsync.__version__ == PYPROJECT["project"]["version"]
    out = subprocess.run([sys.executable, "-m", "capsync", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"capsync {capsync.__version__}"


# ---------------------------------------------------------------------------------------------
# The installed wheel


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(ROOT)))
    return env


def _run(argv: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                          timeout=timeout)


class Installed:
    """A fresh venv outside the repository holding only the capsync wheel, its dependencies,
    pytest and pytest-trio."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.venv = root / "venv"
        self.python = self.venv / "bin" / "python"
        self.capsync = self.venv / "bin" / "capsync"

    def site_packages(self) -> Path:
        out = _run([self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], self.root)
        return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    wheels = root / "W"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
                  ROOT, "-w", wheels], root, timeout=INSTALL_TIMEOUT_S)
    if built.returncode != 0 and any(s in built.stderr for s in OFFLINE_SIGNS):
        pytest.skip(f"cannot build the wheel: the package index is unreachable ({built.stderr.strip()[-200:]})")
    assert built.returncode == 0, built.stderr
    wheel = next(wheels.glob("capsync-*.whl"))
    inst = Installed(root)
    base_python = getattr(sys, "_base_executable", sys.executable)
    made = _run([base_python, "-m", "venv", inst.venv], root)
    assert made.returncode == 0, made.stderr
    pip = _run([inst.python, "-m", "pip", "install", "--disable-pip-version-check", "-q", wheel, "pytest",
                "pytest-trio"], root, timeout=INSTALL_TIMEOUT_S)
    if pip.returncode != 0 and any(s in pip.stderr for s in OFFLINE_SIGNS):
        pytest.skip(f"cannot install the wheel's dependencies: the package index is unreachable "
                    f"({pip.stderr.strip()[-200:]})")
    assert pip.returncode == 0, pip.stderr
    return inst


def test_site_packages_holds_capsync_and_none_of_the_folder_names(installed):
    top = {p.name for p in installed.site_packages().iterdir()}
    assert "capsync" in top
    assert not top & {"actors", "runtime", "cloud"}, sorted(top & {"actors", "runtime", "cloud"})
    assert (installed.site_packages() / "capsync" / "cloud" / "static" / "index.html").is_file()


def test_installed_version_and_validate(installed, tmp_path):
    out = _run([installed.capsync, "--version"], tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"capsync {PYPROJECT['project']['version']}"
    demo = shutil.copy(ROOT / "configs" / "demo.json", tmp_path / "demo.json")
    assert _run([installed.capsync, "validate", demo], tmp_path).returncode == 0
    bad = tmp_path / "bad.json"
    bad.write_text('{"services": [{"name": "dm", "type": "data_manager", "attributes": {"sync_interval_mins": "x"}}]}')
    out = _run([installed.capsync, "validate", bad], tmp_path)
    assert out.returncode == 2 and "sync_interval_mins" in out.stdout + out.stderr


def _run_for(installed: Installed, config: Path, cwd: Path, seconds: float) -> subprocess.CompletedProcess:
    """`capsync run config` from `cwd` for `seconds`, then SIGINT; the finished process."""
    proc = subprocess.Popen([str(installed.capsync), "run", str(config), "--status-interval", "0"], cwd=cwd,
                            env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def _shadowing_packages(folder: Path) -> None:
    """A user's own `runtime`, `cloud` and `actors` packages, which explode if anything imports them."""
    for name in ("runtime", "cloud", "actors"):
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(f"raise ImportError('the user\\'s own {name} package was imported')\n")
    (folder / "runtime" / "rpc.py").write_text("")


def _inspect(installed: Installed, capture_dir: Path, cwd: Path) -> list[dict]:
    files = sorted(capture_dir.rglob("*.capture"))
    assert files, f"nothing captured under {capture_dir}"
    out = _run([installed.capsync, "inspect", *files], cwd)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_run_the_demo_config_from_a_folder_with_its_own_runtime_cloud_and_actors(installed, tmp_path):
    _shadowing_packages(tmp_path)
    demo = shutil.copy(ROOT / "configs" / "demo.json", tmp_path / "demo.json")
    as_module = _run([installed.python, "-m", "capsync", "validate", demo], tmp_path)  # cwd is on sys.path here
    assert as_module.returncode == 0, as_module.stdout + as_module.stderr
    done = _run_for(installed, demo, tmp_path, seconds=5)
    assert done.returncode == 0, done.stdout
    assert "Traceback" not in done.stdout and "user's own" not in done.stdout, done.stdout
    lines = _inspect(installed, tmp_path / ".demo" / "capture", tmp_path)
    methods = {line["method"] for line in lines if line["type"] == "header"}
    assert {"Readings", "JointPositions", "LinearAcceleration"} <= methods, methods


def test_a_custom_model_next_to_the_config_runs_without_pythonpath(installed, tmp_path):
    project, elsewhere = tmp_path / "robot", tmp_path / "elsewhere"
    (project / "my_robot").mkdir(parents=True)
    elsewhere.mkdir()
    (project / "my_robot" / "__init__.py").write_text("")
    (project / "my_robot" / "thermo.py").write_text(textwrap.dedent('''
        class Thermo:
            def __init__(self, name, attributes, lookup):
                self.type, self.name, self.model = "sensor", name, "thermo"

            async def capture(self, method, params):
                return {"temperature_c": 21.5}

            async def close(self):
                pass
    '''))
    capture_dir = tmp_path / "capture"
    config = project / "robot.json"
    config.write_text(json.dumps({
        "network": {"bind_address": "127.0.0.1:0"},
        "components": [{"name": "greenhouse", "type": "sensor", "model": "py:my_robot.thermo:Thermo",
                        "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": [
                            {"method": "Readings", "capture_frequency_hz": 20}]}}]}],
        "services": [{"name": "dm", "type": "data_manager", "attributes": {"capture_dir": str(capture_dir)}}],
    }))
    done = _run_for(installed, config, elsewhere, seconds=3)
    assert done.returncode == 0, done.stdout
    assert "not built" not in done.stdout, done.stdout
    readings = [line for line in _inspect(installed, capture_dir, elsewhere) if line["type"] == "record"]
    assert len(readings) > 10 and all(r["payload"] == {"temperature_c": 21.5} for r in readings), readings[:3]


def test_the_simulation_doc_example_passes_in_a_project_of_its_own(installed, tmp_path):
    doc = (ROOT / "docs" / "simulation.md").read_text()
    example = doc.split("```python\n", 1)[1].split("```", 1)[0]
    assert "from capsync.testing import" in example
    imports = [line for line in example.splitlines() if line.startswith(("from ", "import "))]
    assert all(line.startswith(("from capsync.testing ", "from capsync ", "import capsync")) for line in imports), imports
    (tmp_path / "test_my_robot.py").write_text(example)
    ini = doc.split("```ini\n", 1)[1].split("```", 1)[0]  # the pytest config the doc tells users to add
    (tmp_path / "pytest.ini").write_text(ini)
    out = _run([installed.python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout
