"""Config diffs: each kind of edit maps to the smallest change of the running agent."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from capsync.actors.reconcile import diff_configs
from capsync.runtime.config import parse_config
from tests.helpers import fake_component, robot_config


def _base(tmp_path: Path) -> dict:
    comps = [
        fake_component("env", "sensor", [{"method": "Readings", "capture_frequency_hz": 1}]),
        fake_component("b", "board", [{"method": "Analogs", "capture_frequency_hz": 2,
                                       "additional_params": {"reader_name": "A1"}}]),
    ]
    return robot_config(tmp_path / "cap", comps)


def _diff(a: dict, b: dict):
    return diff_configs(parse_config(json.dumps(a)), parse_config(json.dumps(b)))


def _methods(cfg: dict, i: int) -> list:
    return cfg["components"][i]["service_configs"][0]["attributes"]["capture_methods"]


def test_same_config_is_an_empty_diff(tmp_path):
    assert _diff(_base(tmp_path), _base(tmp_path)).empty


def test_frequency_change_only_adjusts_the_rate(tmp_path):
    a = _base(tmp_path)
    b = copy.deepcopy(a)
    _methods(b, 0)[0]["capture_frequency_hz"] = 20
    d = _diff(a, b)
    assert [p.frequency_hz for p in d.rate_changed] == [20]
    assert not (d.added or d.removed or d.restarted or d.sync_restart)


def test_changed_params_is_remove_plus_add(tmp_path):
    a = _base(tmp_path)
    b = copy.deepcopy(a)
    _methods(b, 1)[0]["additional_params"] = {"reader_name": "A2"}
    d = _diff(a, b)
    assert len(d.added) == 1 and d.added[0].params == {"reader_name": "A2"}
    assert len(d.removed) == 1 and "A1" in d.removed[0]


def test_tags_or_capture_dir_restart_every_collector(tmp_path):
    a = _base(tmp_path)
    b = copy.deepcopy(a)
    b["services"][0]["attributes"]["tags"] = ["new"]
    assert len(_diff(a, b).restarted) == 2
    c = copy.deepcopy(a)
    c["services"][0]["attributes"]["capture_dir"] = str(tmp_path / "elsewhere")
    d = _diff(a, c)
    assert len(d.restarted) == 2 and d.old_capture_dir == tmp_path / "cap" and not d.sync_restart


def test_resource_attributes_restart_only_that_resource(tmp_path):
    a = _base(tmp_path)
    b = copy.deepcopy(a)
    b["components"][0]["attributes"] = {"latency_ms": 5}
    d = _diff(a, b)
    assert d.resources_changed == {"env"}
    assert [p.resource.name for p in d.restarted] == ["env"]


def test_capture_disabled_removes_everything(tmp_path):
    a = _base(tmp_path)
    b = copy.deepcopy(a)
    b["services"][0]["attributes"]["capture_disabled"] = True
    d = _diff(a, b)
    assert len(d.removed) == 2 and not d.added and d.governor_changed


def test_sync_settings(tmp_path):
    a = _base(tmp_path)
    b = copy.deepcopy(a)
    b["services"][0]["attributes"]["sync_interval_mins"] = 2
    b["services"][0]["attributes"]["maximum_num_sync_threads"] = 7
    d = _diff(a, b)
    assert d.sync_interval_s == 120 and d.sync_threads == 7 and not d.sync_restart
    c = copy.deepcopy(a)
    c["cloud"]["secret"] = "other"
    assert _diff(a, c).sync_restart
    m = copy.deepcopy(a)
    m["services"][0]["attributes"]["mongo_capture_config"] = {"uri": "mongodb://127.0.0.1:1"}
    assert _diff(a, m).mongo_changed
