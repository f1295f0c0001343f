"""Config parsing and validation: the documented examples, the defaults, and every kind of bad config."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsync.runtime import config_models
from capsync.runtime.config import (
    CaptureMethodPlan,
    ConfigError,
    ConfigIssue,
    DataKind,
    RobotConfig,
    load_config,
    parse_config,
    validate_file,
)

HERE = Path(__file__).resolve().parent
DOC_CONFIGS = HERE / "doc_configs"
BAD_CONFIGS = HERE / "bad_configs"
REFERENCE = HERE.parents[1] / "shared" / "reference" / "data-management-service.md"

CM = "service_configs[0].attributes.capture_methods"  # the usual path from a resource to its capture methods


def doc(name: str) -> RobotConfig:
    return load_config(DOC_CONFIGS / f"{name}.json")


def errors_of(text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.json")
    return info.value.issues


def dm_config(attributes: dict, **top) -> str:
    return json.dumps({"services": [{"name": "dm", "type": "data_manager", "attributes": attributes}], **top})


def sensor_config(methods: list, *, rtype: str = "sensor", model: str = "fake", dm: dict | None = None) -> str:
    comp = {"name": "s1", "type": rtype, "model": model,
            "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": methods}}]}
    return json.dumps({"components": [comp],
                       "services": [{"name": "dm", "type": "data_manager", "attributes": dm or {}}]})


# ---------------------------------------------------------------------------------------------
# The documented examples


def test_every_reference_example_is_a_fixture():
    if not REFERENCE.exists():
        pytest.skip(f"reference doc not found at {REFERENCE}")
    blocks = re.findall(r"```json[^\n]*\n(.*?)```", REFERENCE.read_text(), re.S)
    fixtures = sorted(p.name for p in DOC_CONFIGS.glob("*.json"))
    assert len(blocks) == len(fixtures) == 9
    texts = {p.read_text() for p in DOC_CONFIGS.glob("*.json")}
    edited = {"camera_component.json", "remote_esp32_capture.json"}

    def squash(s: str) -> str:
        return re.sub(r"\s+", "", s)

    for block in blocks:
        if block in texts:
            continue
        if "“" in block:  # saved with straight quotes
            assert block.replace("“", '"').replace("”", '"') == (DOC_CONFIGS / "remote_esp32_capture.json").read_text()
        else:  # `...` placeholders removed with their separators, and the placeholder remote `{ ... }`
            expected = squash(block).replace("...", "").replace("[{}]", "[]").replace("[,", "[").replace(",]", "]")
            assert expected == squash((DOC_CONFIGS / "camera_component.json").read_text())
    assert len([b for b in blocks if b in texts]) == len(blocks) - len(edited)


@pytest.mark.parametrize("path", sorted(DOC_CONFIGS.glob("*.json")), ids=lambda p: p.stem)
def test_doc_example_parses(path):
    cfg = load_config(path)
    assert validate_file(path) == []
    keys = [p.key for p in cfg.capture_plan()]
    assert len(keys) == len(set(keys))


def test_mongo_example_defaults():
    cfg = doc("mongo_capture")
    mongo = cfg.data_manager.mongo_capture_config
    assert mongo.uri.startswith("mongodb://127.0.0.1:27017/")
    assert (mongo.database, mongo.collection) == ("sensorData", "readings")
    [plan] = cfg.capture_plan()
    assert (plan.resource.type, plan.resource.name, plan.resource.model) == ("sensor", "sensor-1", "fake")
    assert (plan.method, plan.frequency_hz, plan.kind, plan.params) == ("Readings", 0.5, DataKind.TABULAR, {})
    assert plan.config_path == f"components[0].{CM}[0]"
    assert plan.key == "|sensor/sensor-1/Readings|{}"


def test_viam_server_data_manager_example():
    dm = doc("data_manager_viam_server").data_manager
    assert (dm.sync_interval_mins, dm.sync_interval_secs, dm.sync_disabled, dm.capture_disabled) == (1, 60, True, False)
    assert (dm.delete_every_nth_when_disk_full, dm.maximum_num_sync_threads) == (5, 250)
    assert dm.capture_dir == "~/.viam/capture"  # "" means the default
    assert doc("data_manager_viam_server").sync_enabled is False


def test_micro_server_data_manager_example():
    cfg = doc("data_manager_micro_server")
    assert cfg.data_manager.sync_interval_mins == 3
    assert cfg.data_manager.additional_sync_paths == []
    assert cfg.capture_plan() == [] and cfg.capture_enabled and cfg.sync_enabled


def test_camera_example_has_retention_from_attributes_level():
    cfg = doc("camera_component")
    [plan] = cfg.capture_plan()
    assert (plan.resource.type, plan.resource.name, plan.resource.model) == ("camera", "cam", "webcam")
    assert plan.resource.attributes == {"video_path": "video0"}
    assert (plan.method, plan.kind, plan.frequency_hz) == ("ReadImage", DataKind.BINARY, 0.333)
    assert plan.params == {"reader_name": "cam1", "mime_type": "image/jpeg"}
    assert plan.retention_policy == {"days": 5}
    assert cfg.remotes == [] and cfg.data_manager.sync_interval_mins == 5


def test_micro_server_sensors_two_rates():
    plans = doc("micro_server_sensors").capture_plan()
    assert [(p.resource.name, p.resource.model, p.method, p.frequency_hz) for p in plans] == [
        ("tmp36", "tmp36", "Readings", 0.2), ("my-wifi-sensor", "wifi-rssi", "Readings", 0.1)]
    assert all(p.resource.remote is None and p.kind is DataKind.TABULAR for p in plans)


def test_vision_service_example():
    cfg = doc("vision_service")
    [plan] = cfg.capture_plan()
    assert (plan.resource.type, plan.resource.name, plan.resource.model) == ("vision", "vision-1", "mlmodel")
    assert plan.params["min_confidence_score"] == "0.7"  # params stay as written
    assert plan.config_path == f"services[0].{CM}[0]"
    resources = {(r.type, r.name, r.model) for r in cfg.resources()}
    assert resources == {("camera", "camera-1", "webcam"), ("vision", "vision-1", "mlmodel"),
                         ("mlmodel", "mlmodel-1", "viam:mlmodel-tflite:tflite_cpu")}


def test_esp32_part_without_data_manager_captures_nothing_and_says_why():
    cfg = doc("esp32_remote_part")
    assert cfg.data_manager is None
    assert cfg.capture_plan() == []
    assert not cfg.capture_enabled and not cfg.sync_enabled
    assert cfg.capture_off_reason == "no data_manager service is configured"
    assert [w.path for w in cfg.warnings] == ["services"]
    assert [r.name for r in cfg.resources()] == ["my-esp32"]


def test_remote_esp32_example_yields_three_remote_board_methods():
    cfg = doc("remote_esp32_capture")
    plans = cfg.capture_plan()
    assert len(plans) == 3
    assert {(p.resource.remote, p.resource.type, p.resource.name, p.resource.model) for p in plans} == {
        ("esp-home", "board", "my-esp32", "remote")}
    assert [(p.method, p.params, p.frequency_hz) for p in plans] == [
        ("Analogs", {"reader_name": "A1"}, 1), ("Analogs", {"reader_name": "A2"}, 1), ("Gpios", {"pin_name": "27"}, 1)]
    assert plans[0].key == 'esp-home|board/my-esp32/Analogs|{"reader_name":"A1"}'
    assert plans[2].config_path == f"remotes[0].{CM}[2]"
    [remote] = cfg.remotes
    assert (remote.name, remote.secret) == ("esp-home", "REDACTED")
    assert remote.address == "esp-home-main.33vvxnbbw9.viam.cloud:80"
    assert cfg.data_manager.tags == ["tag1", "tag2"]  # the duplicated "name"/"type" keys: last wins
    assert [(r.remote, r.name) for r in cfg.resources()] == [("esp-home", "my-esp32")]


def test_remote_camera_example():
    [plan] = doc("remote_camera_capture").capture_plan()
    assert (plan.resource.remote, plan.resource.type, plan.resource.name) == ("pi-test-main", "camera", "cam")
    assert plan.kind is DataKind.BINARY and plan.params == {"mime_type": "image/jpeg", "reader_name": "cam1"}


# ---------------------------------------------------------------------------------------------
# Defaults


def test_documented_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = parse_config(dm_config({}))
    dm = cfg.data_manager
    assert (dm.capture_disabled, dm.sync_disabled, dm.tags, dm.additional_sync_paths) == (False, False, [], [])
    assert dm.sync_interval_mins == 0.1 and dm.sync_interval_secs == pytest.approx(6.0)
    assert dm.delete_every_nth_when_disk_full == 5
    assert dm.maximum_num_sync_threads == max(1, (os.cpu_count() or 1) // 2)
    assert dm.capture_dir == "~/.viam/capture"
    assert dm.capture_dir_path() == tmp_path / ".viam" / "capture"
    assert (dm.mongo_capture_config.uri, dm.mongo_capture_config.database,
            dm.mongo_capture_config.collection) == ("", "sensorData", "readings")
    assert dm.selective_syncer_name == ""
    # capsync extensions
    assert (dm.max_file_size_kb, dm.max_binary_file_size_kb, dm.max_file_age_secs) == (64, 0, 60)
    assert (dm.fsync_interval_secs, dm.resource_timeout_secs) == (1.0, 5.0)
    assert cfg.cloud.app_address == "http://127.0.0.1:8787" and (cfg.cloud.id, cfg.cloud.secret) == ("", "")
    assert (cfg.network.bind_address, cfg.network.host, cfg.network.port) == ("127.0.0.1:8791", "127.0.0.1", 8791)


@pytest.mark.parametrize(("cpus", "threads"), [(None, 1), (1, 1), (2, 1), (3, 1), (8, 4), (64, 32)])
def test_sync_threads_default_is_half_the_cpus(monkeypatch, cpus, threads):
    monkeypatch.setattr(config_models.os, "cpu_count", lambda: cpus)
    assert parse_config(dm_config({})).data_manager.maximum_num_sync_threads == threads


def test_null_and_empty_mean_default():
    dm = parse_config(dm_config({"capture_dir": None, "sync_interval_mins": None, "tags": None,
                                 "mongo_capture_config": {"database": "", "collection": None}})).data_manager
    assert (dm.capture_dir, dm.sync_interval_mins, dm.tags) == ("~/.viam/capture", 0.1, [])
    assert (dm.mongo_capture_config.database, dm.mongo_capture_config.collection) == ("sensorData", "readings")


def test_ignored_attributes_are_accepted():
    cfg = parse_config(sensor_config([{"method": "Readings", "capture_frequency_hz": 1, "cache_size_kb": 10}],
                                     dm={"cache_size_kb": 4, "selective_syncer_name": "s1"}))
    assert len(cfg.capture_plan()) == 1 and cfg.warnings == []


# ---------------------------------------------------------------------------------------------
# Bad configs: every file in tests/bad_configs, with the exact path of its first issue

BAD = {
    "wrong_type.json": ("services[0].attributes.sync_interval_mins", "expected a number, got '1'"),
    "bool_as_string.json": ("services[0].attributes.capture_disabled", "expected true or false, got 'false'"),
    "float_for_int.json": ("services[0].attributes.maximum_num_sync_threads", "expected a whole number, got 2.5"),
    "unknown_method.json": (f"components[0].{CM}[0].method",
                            "camera has no capture method 'ReadImages'; did you mean 'ReadImage'?"),
    "negative_frequency.json": (f"components[0].{CM}[1].capture_frequency_hz", "must be >= 0, got -0.5"),
    "unknown_attribute.json": ("services[0].attributes.sync_interval_min",
                               "unknown attribute 'sync_interval_min'; did you mean 'sync_interval_mins'?"),
    "missing_method.json": (f"components[0].{CM}[0].method", "required attribute 'method' is missing"),
    "missing_frequency.json": (f"components[0].{CM}[0].capture_frequency_hz",
                               "required attribute 'capture_frequency_hz' is missing"),
    "misspelled_frequency.json": (f"components[0].{CM}[0].capture_frequency_hz",
                                  "required attribute 'capture_frequency_hz' is missing"),
    "bad_tag.json": ("services[0].attributes.tags[1]", "tag 'not ok!' has characters other than"),
    "two_data_managers.json": ("services[1]", "a second data_manager service (the first is services[0])"),
    "delete_every_nth_zero.json": ("services[0].attributes.delete_every_nth_when_disk_full", "must be >= 1, got 0"),
    "missing_required_param.json": (f"components[0].{CM}[0].additional_params.reader_name",
                                    "board method Analogs needs additional_params.reader_name"),
    "remote_missing_name.json": (f"remotes[0].{CM}[0].name", "required attribute 'name' is missing"),
    "not_an_object.json": ("", "the config must be a JSON object, got a list"),
    "unknown_mongo_key.json": ("services[0].attributes.mongo_capture_config.colection",
                               "unknown attribute 'colection'; did you mean 'collection'?"),
    "bad_retention.json": ("components[0].service_configs[0].attributes.retention_policy.days", "must be >= 0"),
    "unknown_cloud_key.json": ("cloud.app_adress", "did you mean 'app_address'?"),
    "bad_bind_address.json": ("network.bind_address", "expected host:port"),
    "type_without_methods.json": (f"components[0].{CM}[0].method", "resource type 'generic' has no capture methods"),
    "duplicate_method.json": (f"components[0].{CM}[1]",
                              f"duplicate capture method: same method and additional_params as components[0].{CM}[0]"),
    "unsafe_name.json": ("components[0].name", "resource name '../../etc' cannot be used for capture"),
    # syntax errors: no JSON path, but file, line and column
    "bad_json.json": ("", "at line 5, column 3: Expecting ',' delimiter"),
    "curly_quotes.json": ("", "at line 50, column 31: typographic quote “ is not valid JSON"),
    "unterminated_comment.json": ("", "at line 3, column 3: unterminated /* comment"),
    "nan_frequency.json": ("", "at line 7, column 58: NaN is not a JSON number"),
}
SYNTAX_POSITIONS = {"bad_json.json": (5, 3), "curly_quotes.json": (50, 31), "unterminated_comment.json": (3, 3),
                    "nan_frequency.json": (7, 58)}


def test_every_bad_config_has_an_expectation():
    assert sorted(p.name for p in BAD_CONFIGS.glob("*.json")) == sorted(BAD)
    assert len(BAD) >= 10


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_config(name):
    path = BAD_CONFIGS / name
    with pytest.raises(ConfigError) as info:
        load_config(path)
    first = info.value.issues[0]
    want_path, want_text = BAD[name]
    assert first.path == want_path
    assert want_text in first.message
    assert info.value.source == str(path)
    if name in SYNTAX_POSITIONS:
        assert (first.line, first.column) == SYNTAX_POSITIONS[name]
        assert str(path) in first.message
    assert validate_file(path) == info.value.issues


def test_curly_quotes_name_both_quotes_and_say_what_to_use():
    issues = validate_file(BAD_CONFIGS / "curly_quotes.json")
    assert [(i.line, i.column) for i in issues] == [(50, 31), (50, 34)]
    assert all("straight double quote" in i.hint for i in issues)


def test_misspelled_attribute_reports_both_problems():
    issues = validate_file(BAD_CONFIGS / "misspelled_frequency.json")
    assert [i.path for i in issues] == [f"components[0].{CM}[0].capture_frequency_hz",
                                        f"components[0].{CM}[0].capture_frequency"]
    assert "did you mean 'capture_frequency_hz'?" in issues[1].message


def test_unknown_method_lists_valid_methods():
    [issue] = validate_file(BAD_CONFIGS / "unknown_method.json")
    assert issue.hint == "valid methods for camera: GetImages, ReadImage, NextPointCloud, DoCommand"


def test_error_str_is_one_line_per_issue():
    text = dm_config({"sync_interval_mins": 0, "tags": ["a b"], "bogus": 1})
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    lines = str(info.value).splitlines()
    assert len(lines) == len(info.value.issues) == 3
    assert ("services[0].attributes.sync_interval_mins: must be > 0, got 0 "
            "(use a positive number of minutes, e.g. 0.1 for every 6 seconds)") in lines
    assert any(line.startswith("services[0].attributes.bogus: unknown attribute 'bogus' (known: ") for line in lines)


def test_all_issues_across_sections_are_reported():
    text = json.dumps({
        "cloud": {"idd": "x"},
        "components": [
            {"name": "a", "type": "arm", "model": "fake", "service_configs": [{"type": "data_manager", "attributes": {
                "capture_methods": [{"method": "JointPosition", "capture_frequency_hz": 1},
                                    {"method": "EndPosition", "capture_frequency_hz": "fast"}]}}]},
            {"name": "b", "type": "board", "model": "fake", "service_configs": [{"type": "data_manager", "attributes": {
                "capture_methods": [{"method": "Gpios", "capture_frequency_hz": 1}]}}]},
        ],
        "services": [{"name": "dm", "type": "data_manager", "attributes": {"delete_every_nth_when_disk_full": 0}}],
    })
    paths = sorted(i.path for i in errors_of(text))
    assert paths == sorted([
        "cloud.idd",
        f"components[0].{CM}[0].method",
        f"components[0].{CM}[1].capture_frequency_hz",
        f"components[1].{CM}[0].additional_params.pin_name",
        "services[0].attributes.delete_every_nth_when_disk_full",
    ])


@pytest.mark.parametrize(("value", "expected"), [
    ("abc", "expected a number, got 'abc'"), (True, "expected a number, got true"),
    (None, "expected a number, got null"), ([1], "expected a number, got a list"),
    (1e999, "expected a finite number"),
])
def test_frequency_type_messages(value, expected):
    text = sensor_config([{"method": "Readings", "capture_frequency_hz": value}])
    if value == 1e999:
        text = text.replace("Infinity", "1e999")
    [issue] = errors_of(text)
    assert issue.path == f"components[0].{CM}[0].capture_frequency_hz"
    assert issue.message.startswith(expected)


def test_unknown_keys_in_capture_sections_are_errors():
    text = sensor_config([{"method": "Readings", "capture_frequency_hz": 1, "tags": ["x"]}])
    [issue] = errors_of(text)
    assert issue.path == f"components[0].{CM}[0].tags"
    text = json.dumps({"components": [{"name": "s", "type": "sensor", "model": "fake", "service_configs": [
        {"type": "data_manager", "atributes": {}, "attributes": {"capture_method": []}}]}]})
    assert sorted(i.path for i in errors_of(text)) == [
        "components[0].service_configs[0].atributes", "components[0].service_configs[0].attributes.capture_method"]


def test_unknown_keys_on_resources_and_top_level_are_fine():
    text = json.dumps({
        "modules": [{"type": "registry"}], "agent": {"x": 1}, "auth": {}, "packages": [], "processes": [],
        "components": [{"name": "s", "api": "rdk:component:sensor", "model": "rdk:builtin:fake", "frame": {},
                        "depends_on": [], "attributes": {"anything": [1, 2]}, "whatever": True,
                        "service_configs": [{"type": "other_service", "attributes": {"foo": 1}}]}],
        "remotes": [{"name": "r", "address": "r.local:8080", "frame": {}, "insecure": True}],
    })
    cfg = parse_config(text)
    [ref] = cfg.resources()
    assert (ref.type, ref.name, ref.model, ref.remote) == ("sensor", "s", "fake", None)
    assert cfg.remotes[0].secret == ""


# ---------------------------------------------------------------------------------------------
# Types, remotes, retention, plan keys


@pytest.mark.parametrize("rtype", ["movement_sensor", "rdk:component:movement_sensor"])
def test_type_forms_normalize(rtype):
    [plan] = parse_config(sensor_config([{"method": "LinearAcceleration", "capture_frequency_hz": 20}],
                                        rtype=rtype)).capture_plan()
    assert plan.resource.type == "movement_sensor"
    assert plan.key == "|movement_sensor/s1/LinearAcceleration|{}"


def test_malformed_type_is_an_error():
    [issue] = errors_of(sensor_config([], rtype="rdk:sensor"))
    assert issue.path == "components[0].type" and "malformed resource type" in issue.message


def test_types_without_capture_methods_are_fine_without_capture():
    text = json.dumps({"components": [{"name": "g", "type": "generic", "model": "fake"}],
                       "services": [{"name": "m", "type": "mlmodel", "model": "tflite"},
                                    {"name": "dm", "type": "data_manager"}]})
    assert [(r.type, r.name) for r in parse_config(text).resources()] == [("generic", "g"), ("mlmodel", "m")]


def test_disabled_and_zero_frequency_methods_are_not_planned():
    cfg = parse_config(sensor_config([{"method": "Readings", "capture_frequency_hz": 1, "disabled": True},
                                      {"method": "Readings", "capture_frequency_hz": 0},
                                      {"method": "Readings", "capture_frequency_hz": 2}]))
    assert [p.config_path for p in cfg.capture_plan()] == [f"components[0].{CM}[2]"]


def test_capture_disabled_plans_nothing():
    methods = [{"method": "Readings", "capture_frequency_hz": 1}]
    cfg = parse_config(sensor_config(methods, dm={"capture_disabled": True}))
    assert cfg.capture_plan() == [] and not cfg.capture_enabled and cfg.sync_enabled
    assert cfg.capture_off_reason == "capture_disabled is true on the data_manager service"


def test_method_retention_policy_overrides_service_config_level():
    text = json.dumps({"components": [{"name": "c", "type": "camera", "model": "fake", "service_configs": [
        {"type": "data_manager", "attributes": {"retention_policy": {"days": 5}, "capture_methods": [
            {"method": "ReadImage", "capture_frequency_hz": 1},
            {"method": "GetImages", "capture_frequency_hz": 1, "retention_policy": {"binary_limit_gb": 2}},
            {"method": "NextPointCloud", "capture_frequency_hz": 1, "retention_policy": {}}]}}]}],
        "services": [{"name": "dm", "type": "data_manager"}]})
    policies = [p.retention_policy for p in parse_config(text).capture_plan()]
    assert policies == [{"days": 5}, {"binary_limit_gb": 2}, None]


def remote_config(name: str, method: str, params: dict | None = None) -> str:
    return json.dumps({"services": [{"name": "dm", "type": "data_manager"}], "remotes": [
        {"name": "rp", "address": "rp.local:80", "service_configs": [{"type": "data_manager", "attributes": {
            "capture_methods": [{"name": name, "method": method, "capture_frequency_hz": 2,
                                 "additional_params": params or {}}]}}]}]})


@pytest.mark.parametrize(("name", "method", "expected"), [
    ("rdk:component:board/my-esp32", "Gpios", ("board", "my-esp32")),
    ("board/my-esp32", "Gpios", ("board", "my-esp32")),
    ("my-esp32", "Gpios", ("board", "my-esp32")),  # only boards have Gpios
    ("rdk:service:vision/v", "CaptureAllFromCamera", ("vision", "v")),
])
def test_remote_resource_names(name, method, expected):
    params = {"pin_name": "27", "camera_name": "c"}
    [plan] = parse_config(remote_config(name, method, params)).capture_plan()
    assert (plan.resource.type, plan.resource.name, plan.resource.remote) == (*expected, "rp")


@pytest.mark.parametrize(("name", "method", "text"), [
    ("cam", "Position", "cannot tell the type of remote resource 'cam'"),
    ("rdk:thing/x", "Readings", "malformed resource type"),
    ("rdk:component:sensor/../x", "Readings", "cannot be used for capture"),
    ("rdk:component:sensor/s", "Readingz", "did you mean 'Readings'?"),
])
def test_bad_remote_resource_names(name, method, text):
    [issue] = errors_of(remote_config(name, method))
    assert issue.path.startswith(f"remotes[0].{CM}[0].") and text in issue.message


def test_plan_keys_are_canonical_and_distinguish_params():
    a = parse_config(sensor_config([{"method": "Readings", "capture_frequency_hz": 1,
                                     "additional_params": {"b": "2", "a": "1"}}])).capture_plan()[0]
    b = parse_config(sensor_config([{"method": "Readings", "capture_frequency_hz": 7,
                                     "additional_params": {"a": "1", "b": "2"}}])).capture_plan()[0]
    assert a.key == b.key == '|sensor/s1/Readings|{"a":"1","b":"2"}'
    assert isinstance(a, CaptureMethodPlan) and a != b


def test_duplicate_resource_names_are_an_error():
    text = json.dumps({"components": [{"name": "x", "type": "arm", "model": "fake"},
                                      {"name": "x", "type": "sensor", "model": "fake"}]})
    [issue] = errors_of(text)
    assert issue.path == "components[1].name" and "also at components[0]" in issue.message


def test_component_needs_name_type_and_model():
    paths = sorted(i.path for i in errors_of(json.dumps({"components": [{"attributes": {}}]})))
    assert paths == ["components[0].model", "components[0].name", "components[0].type"]


def test_cloud_and_network_sections():
    cfg = parse_config(dm_config({}, cloud={"id": "p1", "secret": "s", "app_address": "https://cloud.example/"},
                                 network={"bind_address": "[::1]:9000"}))
    assert (cfg.cloud.id, cfg.cloud.secret, cfg.cloud.app_address) == ("p1", "s", "https://cloud.example")
    assert (cfg.network.host, cfg.network.port) == ("::1", 9000)
    [issue] = errors_of(dm_config({}, cloud={"app_address": "ftp://x"}))
    assert issue.path == "cloud.app_address"


def test_network_origins_and_tls_settings_are_checked():
    cfg = parse_config(dm_config({}, network={"allowed_origins": ["https://Dash.example:8443"],
                                              "tls_certificate_file": "c.pem", "tls_key_file": "k.pem"}))
    assert cfg.network.allowed_origins == ["https://dash.example:8443"]
    assert (cfg.network.tls_certificate_file, cfg.network.tls_key_file) == ("c.pem", "k.pem")
    [issue] = errors_of(dm_config({}, network={"allowed_origins": ["https://dash.example/page"]}))
    assert issue.path.startswith("network.allowed_origins") and "scheme://host" in issue.message
    [issue] = errors_of(dm_config({}, network={"tls_certificate_file": "c.pem"}))
    assert "tls_key_file" in issue.message
    [issue] = errors_of(json.dumps({"remotes": [{"name": "b", "address": "wss://b:1", "tls_ca_file": 5}]}))
    assert issue.path == "remotes[0].tls_ca_file"


# ---------------------------------------------------------------------------------------------
# JSON text: comments, quotes, files


def test_comments_are_stripped_outside_strings_only():
    text = """{ // a comment with "quotes" and /* a fake block
      "services": [ /* block
      comment */ {"name": "dm", "type": "data_manager", "attributes": {
        "mongo_capture_config": {"uri": "mongodb://h:1/?a=b", "database": "/* not a comment */"},
        "tags": ["a-b"] // trailing
      }}]
    }"""
    mongo = parse_config(text).data_manager.mongo_capture_config
    assert (mongo.uri, mongo.database) == ("mongodb://h:1/?a=b", "/* not a comment */")


def test_syntax_error_positions_survive_comment_stripping():
    [issue] = errors_of('/* one\ntwo */ {"a": 1,\n // c\n }')
    assert (issue.line, issue.column) == (4, 2) and "test.json" in issue.message


def test_curly_quotes_inside_strings_are_fine_but_hinted_on_syntax_errors():
    assert parse_config('{"components": [], "note": "say “hi”"}').raw["note"] == "say “hi”"
    [issue] = errors_of('{"a": "x”, "b": 1}')
    assert "typographic quote" in issue.hint


def test_duplicate_keys_last_wins():
    cfg = parse_config('{"services": [{"name": "dm", "type": "data_manager", "attributes": {"sync_interval_mins": 1,'
                       ' "sync_interval_mins": 2}}]}')
    assert cfg.data_manager.sync_interval_mins == 2


def test_bom_and_missing_file(tmp_path):
    p = tmp_path / "robot.json"
    p.write_bytes(b"\xef\xbb\xbf" + dm_config({}).encode())
    assert load_config(p).data_manager is not None
    [issue] = validate_file(tmp_path / "nope.json")
    assert "cannot read" in issue.message
    p.write_bytes(b'{"a": "\xff"}')
    assert "not UTF-8" in validate_file(p)[0].message


def test_deep_nesting_is_a_config_error():
    [issue] = errors_of("[" * 100_000)
    assert issue.path == ""


# ---------------------------------------------------------------------------------------------
# Random input never escapes as anything but ConfigError

VOCAB = ["components", "services", "remotes", "service_configs", "attributes", "capture_methods", "type", "name",
         "model", "method", "capture_frequency_hz", "additional_params", "disabled", "retention_policy", "days",
         "data_manager", "sensor", "board", "camera", "Readings", "Analogs", "reader_name", "address", "api",
         "mongo_capture_config", "tags", "cloud", "network", "sync_interval_mins", "rdk:component:board/x"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=False)
    | st.sampled_from(VOCAB) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(VOCAB) | st.text(), inner, max_size=5),
    max_leaves=40,
)
DOC_TEXTS = [p.read_text() for p in sorted(DOC_CONFIGS.glob("*.json"))]


def check_parses_or_config_error(text: str) -> None:
    try:
        cfg = parse_config(text)
    except ConfigError as exc:
        assert exc.issues and all(isinstance(i, ConfigIssue) for i in exc.issues)
        str(exc)
        return
    keys = [p.key for p in cfg.capture_plan()]
    assert len(keys) == len(set(keys))
    cfg.resources()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text() | st.text(alphabet='{}[]":,/*\n .-0123456789eEtrufalsnNI\\“”'))
def test_random_text_only_raises_config_error(text):
    check_parses_or_config_error(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_random_json_only_raises_config_error(value):
    check_parses_or_config_error(json.dumps(value))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(DOC_TEXTS), st.integers(0, 10_000), st.integers(0, 20), st.text(max_size=5))
def test_mutated_doc_examples_only_raise_config_error(text, at, cut, insert):
    at %= len(text) + 1
    check_parses_or_config_error(text[:at] + insert + text[at + cut:])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(DOC_TEXTS), st.data())
def test_doc_examples_with_a_random_value_replaced_only_raise_config_error(text, data):
    doc = copy.deepcopy(parse_config(text).raw)
    node = doc
    for _ in range(12):  # walk down to a random node and replace it with random JSON
        keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        k = data.draw(st.sampled_from(keys))
        if not isinstance(node[k], (dict, list)) or data.draw(st.booleans()):
            node[k] = data.draw(json_values)
            break
        node = node[k]
    check_parses_or_config_error(json.dumps(doc))
