"""The config docs hold up: every whole config example in docs/config.md and docs/resources.md is
accepted by `capsync validate` without warnings, every data manager attribute is in the config
reference, and every built-in model is in the resources page."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from capsync.runtime.config import load_config
from capsync.runtime.config_models import CaptureControlSensor, DataManagerAttributes
from capsync.runtime.resources.registry import registered_models

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _whole_configs(page: str) -> list[dict]:
    """The ```json blocks of `page` that are whole configs (an object with components or services)."""
    out = []
    for block in re.findall(r"```json[^\n]*\n(.*?)```", (DOCS / page).read_text(), re.S):
        try:
            doc = json.loads(block)
        except ValueError:
            continue  # a fragment (a service_configs list, one reading)
        if isinstance(doc, dict) and ({"components", "services"} & set(doc)):
            out.append(doc)
    return out


EXAMPLES = [(page, i, doc) for page in ("config.md", "resources.md") for i, doc in enumerate(_whole_configs(page))]


def test_the_pages_have_the_examples():
    assert sum(1 for page, _, _ in EXAMPLES if page == "config.md") >= 1
    assert sum(1 for page, _, _ in EXAMPLES if page == "resources.md") >= 2


@pytest.mark.parametrize("page,index,doc", EXAMPLES, ids=[f"{p}#{i}" for p, i, _ in EXAMPLES])
def test_each_whole_config_example_validates_without_warnings(tmp_path, page, index, doc):
    path = tmp_path / "robot.json"
    path.write_text(json.dumps(doc))
    assert load_config(path).warnings == []
    if index == 0:  # the CLI itself, once per page
        out = subprocess.run([sys.executable, "-m", "capsync", "validate", str(path)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


def test_every_data_manager_attribute_and_builtin_model_is_documented():
    config_md = (DOCS / "config.md").read_text()
    for name in [*DataManagerAttributes.model_fields, *CaptureControlSensor.model_fields]:
        assert f"`{name}`" in config_md, name
    resources_md = (DOCS / "resources.md").read_text()
    for type_, models in registered_models().items():
        for model in models:
            assert f"`{model}`" in resources_md, f"{type_}/{model}"
