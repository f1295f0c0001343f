"""Structure typos (runtime/config_structure.py): a misspelled structural key or data-manager type captures
nothing, so `capsync validate` and `capsync run` warn with its JSON path and the fix, and `--strict` refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from capsync.actors.cli import main
from capsync.runtime.config import load_config, parse_config
from capsync.runtime.config_structure import structure_warnings

REPO = Path(__file__).parents[1]
SENSOR = {"name": "s", "type": "sensor", "model": "fake"}
CAPTURE = [{"type": "data_manager", "attributes": {"capture_methods": [
    {"method": "Readings", "capture_frequency_hz": 1}]}}]
DM = {"name": "dm", "type": "data_manager", "attributes": {}}


def _doc(sensor_extra=None, services=None, **top) -> dict:
    sensor = {**SENSOR, "service_configs": CAPTURE, **(sensor_extra or {})}
    return {"components": [sensor], "services": [DM] if services is None else services, **top}


CASES = {
    "service_config on a component": (
        {"components": [{**SENSOR, "service_config": CAPTURE}], "services": [DM]},
        "components[0].service_config", "'service_configs'"),
    "data-manager in a service_config": (
        _doc({"service_configs": [{**CAPTURE[0], "type": "data-manager"}]}),
        "components[0].service_configs[0].type", "'data_manager'"),
    "data-manager as the service's type": (
        _doc(services=[{**DM, "type": "rdk:service:data-manager"}]), "services[0].type", "'data_manager'"),
    "service at the top level": (
        {"components": [{**SENSOR, "service_configs": CAPTURE}], "service": [DM]}, "service", "'services'"),
    "clouds at the top level": (_doc(clouds={"id": "p", "secret": "s"}), "clouds", "'cloud'"),
    "misspelled selective syncer": (
        _doc(services=[{**DM, "attributes": {"selective_syncer_name": "filtr"}},
                       {"name": "filter", "type": "sensor", "model": "fake"}]),
        "services[0].attributes.selective_syncer_name", "'filter'"),
    "capture methods and no data manager": (_doc(services=[]), "services", 'add a service with "type"'),
}


@pytest.mark.parametrize("case", CASES)
def test_each_structure_typo_is_a_warning_with_its_path_and_fix(case):
    doc, path, fix = CASES[case]
    warnings = parse_config(json.dumps(doc)).warnings
    assert warnings and warnings[0].path == path, warnings  # then, maybe, "no data manager": also true
    assert fix in str(warnings[0])
    assert {w.path for w in warnings} <= {path, "services"}


def test_keys_of_the_wider_config_format_are_not_typos():
    doc = _doc({"namespace": "rdk", "depends_on": [], "frame": {}, "log_configuration": {}},
               modules=[], packages=[], processes=[], agent={}, fragments=[], jobs=[], network={})
    assert structure_warnings(doc) == []
    assert parse_config(json.dumps(doc)).warnings == []


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.json")) + sorted((REPO / "tests" / "doc_configs")
                                                                                      .glob("*.json")),
                         ids=lambda p: p.name)
def test_shipped_and_documented_configs_have_no_structure_typos(path):
    assert structure_warnings(load_config(path).raw) == []


def test_validate_prints_warnings_and_strict_makes_them_an_error(tmp_path, capsys):
    doc, path, _ = CASES["service_config on a component"]
    cfg = tmp_path / "robot.json"
    cfg.write_text(json.dumps(doc))
    assert main(["validate", str(cfg)]) == 0
    out = capsys.readouterr()
    assert "ok (0 capture methods enabled; 1 warning)" in out.out
    assert f"warning: {path}: unknown key 'service_config'" in out.err
    assert main(["validate", "--strict", str(cfg)]) == 2
    assert "invalid with --strict" in capsys.readouterr().err


def test_run_logs_each_warning_and_strict_refuses_to_start(tmp_path):
    doc, path, _ = CASES["clouds at the top level"]
    doc["services"][0]["attributes"] = {"capture_dir": str(tmp_path / "cap")}
    cfg = tmp_path / "robot.json"
    cfg.write_text(json.dumps(doc))
    refused = subprocess.run([sys.executable, "-m", "capsync", "run", "--strict", "--log-format", "json", str(cfg)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    lines = [json.loads(line) for line in refused.stderr.splitlines() if line.startswith("{")]
    assert [(x["msg"], x["where"]) for x in lines if x["msg"] == "config warning"] == [("config warning", path)]
    assert any("--strict" in x["msg"] for x in lines)
    assert not (tmp_path / "cap").exists()
