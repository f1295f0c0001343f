"""`py:module:factory` models are found next to the config file and in the current directory,
with no PYTHONPATH; when they are not, the error names the module, where it looked and the fix."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from capsync.runtime.resources.registry import ResourceRegistry, UnknownModel, model_search_dirs

THERMO = '''
class Thermo:
    """A thermometer that reads a file holding milli-degrees."""

    def __init__(self, name, attributes, lookup):
        self.type, self.name, self.model = "sensor", name, "thermo"
        self.offset = attributes.get("offset", 0.0)

    async def capture(self, method, params):
        return {"temperature_c": 21.5 + self.offset}

    async def close(self):
        pass
'''


@dataclass(frozen=True)
class Ref:
    type: str
    name: str
    model: str
    attributes: dict = field(default_factory=dict)


@pytest.fixture(autouse=True)
def _restore_import_state(monkeypatch):
    """Each test gets back the sys.path and sys.modules it started with."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))


def _package(folder: Path, body: str = THERMO) -> str:
    """A package `my_robot_<random>` with a `thermo` module in `folder`; returns the package name
    (random, so no test sees a module another test imported)."""
    name = f"my_robot_{uuid.uuid4().hex[:8]}"
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text("")
    (folder / name / "thermo.py").write_text(textwrap.dedent(body))
    return name


def _config_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "robot.json"
    path.write_text("{}")
    return path


async def test_a_model_next_to_the_config_file_is_found_from_another_directory(tmp_path, monkeypatch):
    project = tmp_path / "project"
    config = _config_file(project)
    pkg = _package(project)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")

    registry = ResourceRegistry(model_search_dirs(config))
    registry.build_all([Ref("sensor", "t", f"py:{pkg}.thermo:Thermo", {"offset": 1.0})])
    assert await registry.get("t").capture("Readings", {}) == {"temperature_c": 22.5}
    assert model_search_dirs(config) == (project.resolve(), tmp_path / "elsewhere")


async def test_a_model_in_the_current_directory_is_found(tmp_path, monkeypatch):
    pkg = _package(tmp_path)
    monkeypatch.chdir(tmp_path)
    registry = ResourceRegistry(model_search_dirs("<config>"))  # a config that is not a file
    registry.build_all([Ref("sensor", "t", f"py:{pkg}.thermo:Thermo")])
    assert await registry.get("t").capture("Readings", {}) == {"temperature_c": 21.5}


def test_a_missing_module_names_the_module_the_places_searched_and_the_fix(tmp_path, monkeypatch):
    config = _config_file(tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    registry = ResourceRegistry(model_search_dirs(config))
    with pytest.raises(UnknownModel) as info:
        registry.build_all([Ref("sensor", "t", "py:no_such_robot_pkg.thermo:Thermo")])
    message = str(info.value)
    assert "no module named 'no_such_robot_pkg'" in message
    assert str((tmp_path / "project").resolve()) in message and str(tmp_path) in message
    assert "installed packages" in message
    assert "no_such_robot_pkg/thermo.py" in message and "next to the config file" in message


def test_a_module_that_fails_inside_is_reported_with_its_file_and_line(tmp_path):
    config = _config_file(tmp_path)
    registry = ResourceRegistry(model_search_dirs(config))
    broken = _package(tmp_path, "import numpy_that_is_not_installed_xyz\n")
    with pytest.raises(UnknownModel) as info:
        registry.build_all([Ref("sensor", "t", f"py:{broken}.thermo:Thermo")])
    message = str(info.value)
    assert "was found but importing it failed" in message and "numpy_that_is_not_installed_xyz" in message
    assert f"{broken}/thermo.py:1" in message

    crashing = _package(tmp_path, "x = 1\ny = 1 / 0\n")
    with pytest.raises(UnknownModel) as info:
        registry.build_all([Ref("sensor", "t", f"py:{crashing}.thermo:Thermo")])
    assert "ZeroDivisionError" in str(info.value) and f"{crashing}/thermo.py:2" in str(info.value)


def test_a_module_written_after_a_failed_attempt_is_found(tmp_path):
    config = _config_file(tmp_path)
    registry = ResourceRegistry(model_search_dirs(config))
    name = f"late_robot_{uuid.uuid4().hex[:8]}"
    with pytest.raises(UnknownModel):
        registry.build_all([Ref("sensor", "t", f"py:{name}:Thermo")])
    (tmp_path / f"{name}.py").write_text(THERMO)
    registry.build_all([Ref("sensor", "t", f"py:{name}:Thermo")])
    assert "t" in registry


def test_files_next_to_the_config_never_shadow_the_standard_library(tmp_path):
    """The search dirs come after the installed packages on the import path, so a stray
    `secrets.py` beside robot.json does not replace the standard library's."""
    config = _config_file(tmp_path)
    (tmp_path / "secrets.py").write_text("raise RuntimeError('the stray secrets.py was imported')\n")
    pkg = _package(tmp_path)
    sys.modules.pop("secrets", None)
    ResourceRegistry(model_search_dirs(config)).build_all([Ref("sensor", "t", f"py:{pkg}.thermo:Thermo")])
    origin = importlib.util.find_spec("secrets").origin
    assert origin is not None and Path(origin).parent != tmp_path
    assert sys.path.index(str(tmp_path)) > sys.path.index(str(Path(origin).parent))
