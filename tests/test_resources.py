"""The resource registry and the fake models of every documented type and capture method."""

from __future__ import annotations

import io
import json
import math
import struct
import textwrap
import time
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from capsync.runtime.resources.fake_base import FakeResource, now
from capsync.runtime.resources.media import parse_pcd_header
from capsync.runtime.resources.methods import METHODS, DataKind
from capsync.runtime.resources.registry import (
    ResourceRegistry, UnknownModel, build_resource, register_model, registered_models, unregister_model,
)
from capsync.runtime.resources.resource import Binary, ResourceError

ALL_METHODS = [(t, m) for t, methods in METHODS.items() for m in methods]
#: Physically constant readings, exempt from "changes over time".
CONSTANT = {("gantry", "Lengths")}
PARAMS = {"reader_name": "a0", "pin_name": "7", "camera_name": "cam"}


@dataclass
class Ref:
    type: str
    name: str
    model: str = "fake"
    attributes: dict = field(default_factory=dict)


class NoDeps:
    def get(self, name):
        raise ResourceError(f"no resource named {name!r}")


def registry_with_all_types(**attrs_by_type) -> ResourceRegistry:
    reg = ResourceRegistry()
    refs = [Ref("camera", "cam", attributes=attrs_by_type.get("camera", {}))]
    refs += [Ref(t, f"{t}-1", attributes=attrs_by_type.get(t, {})) for t in METHODS if t != "camera"]
    reg.build_all(refs)
    return reg


def resource_for(reg: ResourceRegistry, type_: str):
    return reg.get("cam" if type_ == "camera" else f"{type_}-1")


def assert_json_like(value, path="$"):
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return
    if isinstance(value, float):
        assert math.isfinite(value), f"{path} is not finite: {value}"
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            assert_json_like(v, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str), f"{path} has a non-str key {k!r}"
            assert_json_like(v, f"{path}.{k}")
        return
    raise AssertionError(f"{path} is not JSON-like: {type(value).__name__} {value!r}")


def check_kind(type_, method, result):
    kind = METHODS[type_][method].kind
    if kind is DataKind.TABULAR:
        assert type(result) is dict and result
        assert_json_like(result)
        json.dumps(result, allow_nan=False)
    elif method == "GetImages":
        assert isinstance(result, list) and result
        assert all(isinstance(b, Binary) and b.data and b.mime_type for b in result)
    else:
        assert isinstance(result, Binary) and isinstance(result.data, bytes) and result.data and result.mime_type


# -- every documented method


def test_fake_registered_for_every_type():
    models = registered_models()
    assert set(METHODS) <= set(models)
    for type_ in METHODS:
        assert "fake" in registered_models(type_)


@pytest.mark.parametrize(("type_", "method"), ALL_METHODS, ids=[f"{t}.{m}" for t, m in ALL_METHODS])
async def test_every_method_returns_its_kind(type_, method):
    reg = registry_with_all_types()
    result = await resource_for(reg, type_).capture(method, dict(PARAMS))
    check_kind(type_, method, result)


async def test_tabular_shapes_match_the_api():
    reg = registry_with_all_types()

    async def cap(t, m, **p):
        return await resource_for(reg, t).capture(m, {**PARAMS, **p})

    pose = (await cap("arm", "EndPosition"))["pose"]
    assert set(pose) == {"x", "y", "z", "o_x", "o_y", "o_z", "theta"}
    assert math.isclose(math.sqrt(pose["o_x"] ** 2 + pose["o_y"] ** 2 + pose["o_z"] ** 2), 1.0, rel_tol=1e-9)
    joints = (await cap("arm", "JointPositions"))["positions"]["values"]
    assert len(joints) == 6 and all(isinstance(j, float) and -180 <= j <= 180 for j in joints)
    analog = await cap("board", "Analogs")
    assert set(analog) == {"value", "min_range", "max_range", "step_size"} and type(analog["value"]) is int
    assert type((await cap("board", "Gpios"))["high"]) is bool
    ticks = await cap("encoder", "TicksCount")
    assert type(ticks["value"]) is int and ticks["position_type"]
    assert (await cap("gantry", "Lengths")) == {"lengths_mm": [1000.0, 800.0, 300.0]}
    pos = (await cap("gantry", "Position"))["positions_mm"]
    assert len(pos) == 3 and all(0 <= p <= length for p, length in zip(pos, [1000, 800, 300], strict=True))
    assert type((await cap("motor", "Position"))["position"]) is float
    powered = await cap("motor", "IsPowered")
    assert type(powered["is_on"]) is bool and -1 <= powered["power_pct"] <= 1
    for m in ("AngularVelocity", "LinearAcceleration", "LinearVelocity"):
        assert set(await cap("movement_sensor", m)) == {"x", "y", "z"}
    assert 0 <= (await cap("movement_sensor", "CompassHeading"))["value"] < 360
    assert set(await cap("movement_sensor", "Orientation")) == {"o_x", "o_y", "o_z", "theta"}
    gps = await cap("movement_sensor", "Position")
    assert set(gps) == {"coordinate", "altitude_m"} and set(gps["coordinate"]) == {"latitude", "longitude"}
    assert abs(gps["coordinate"]["latitude"]) <= 90 and abs(gps["coordinate"]["longitude"]) <= 180
    readings = await cap("sensor", "Readings")
    assert len(readings) >= 3 and all(isinstance(v, float) for v in readings.values())
    assert 0 < readings["humidity_pct"] < 100
    servo = (await cap("servo", "Position"))["position_deg"]
    assert type(servo) is int and 0 <= servo <= 180


async def test_sensor_readings_attribute_fixes_the_names():
    s = build_resource("sensor", "s", "fake", {"readings": ["temperature_c", "soil_moisture"]}, NoDeps())
    assert set(await s.capture("Readings", {})) == {"temperature_c", "soil_moisture"}
    s = build_resource("sensor", "s", "fake", {"readings": {"flow_lpm": 12.0}}, NoDeps())
    out = await s.capture("Readings", {})
    assert set(out) == {"flow_lpm"} and 10 < out["flow_lpm"] < 14
    with pytest.raises(ResourceError):
        build_resource("sensor", "s", "fake", {"readings": []}, NoDeps())


async def test_board_analog_reader_names():
    open_board = build_resource("board", "b", "fake", {}, NoDeps())
    assert "value" in await open_board.capture("Analogs", {"reader_name": "anything"})
    board = build_resource("board", "b", "fake", {"analogs": [{"name": "a1", "pin": "32"}]}, NoDeps())
    assert "value" in await board.capture("Analogs", {"reader_name": "a1"})
    with pytest.raises(ResourceError, match="nope"):
        await board.capture("Analogs", {"reader_name": "nope"})
    with pytest.raises(ResourceError, match="reader_name"):
        await board.capture("Analogs", {})
    with pytest.raises(ResourceError, match="pin_name"):
        await board.capture("Gpios", {})


@pytest.mark.parametrize("type_", sorted(METHODS))
async def test_unknown_method_is_a_resource_error(type_):
    reg = registry_with_all_types()
    with pytest.raises(ResourceError, match="NoSuchMethod"):
        await resource_for(reg, type_).capture("NoSuchMethod", {})
    other = {m for ms in METHODS.values() for m in ms} - set(METHODS[type_])
    with pytest.raises(ResourceError):
        await resource_for(reg, type_).capture(sorted(other)[0], dict(PARAMS))


# -- images and point clouds


@pytest.mark.parametrize(("mime", "fmt"), [("image/jpeg", "JPEG"), ("image/png", "PNG"), ("", "JPEG")])
async def test_read_image_decodes(mime, fmt):
    cam = build_resource("camera", "c", "fake", {"width": "64", "height": 48}, NoDeps())
    params = {"mime_type": mime} if mime else {}
    out = await cam.capture("ReadImage", params)
    assert out.mime_type == (mime or "image/jpeg")
    with Image.open(io.BytesIO(out.data)) as img:
        assert img.format == fmt and img.size == (64, 48)
        img.load()
        assert img.mode == "RGB" and len(img.getcolors(1 << 16) or ()) > 20  # a scene, not a flat fill


async def test_read_image_rejects_unsupported_mime():
    cam = build_resource("camera", "c", "fake", {}, NoDeps())
    with pytest.raises(ResourceError, match="image/gif"):
        await cam.capture("ReadImage", {"mime_type": "image/gif"})


async def test_get_images_sources():
    cam = build_resource("camera", "c", "fake", {}, NoDeps())
    (only,) = await cam.capture("GetImages", {})
    assert only.metadata == {"source": "color"} and Image.open(io.BytesIO(only.data)).format == "JPEG"
    cam = build_resource("camera", "c", "fake", {"sources": ["left", "depth"]}, NoDeps())
    left, depth = await cam.capture("GetImages", {"mime_type": "image/png"})
    assert [left.metadata["source"], depth.metadata["source"]] == ["left", "depth"]
    assert Image.open(io.BytesIO(left.data)).format == "PNG"
    with Image.open(io.BytesIO(depth.data)) as d:
        assert d.format == "PNG" and d.mode == "I;16" and d.size == (160, 120)


def read_pcd(data: bytes):
    fields, offset = parse_pcd_header(data)
    assert fields["VERSION"] in (["0.7"], [".7"])
    assert fields["FIELDS"] == ["x", "y", "z", "rgb"]
    assert len(fields["SIZE"]) == len(fields["TYPE"]) == len(fields["COUNT"]) == 4
    n = int(fields["POINTS"][0])
    assert int(fields["WIDTH"][0]) * int(fields["HEIGHT"][0]) == n
    assert len(fields["VIEWPOINT"]) == 7
    body = data[offset:]
    if fields["DATA"] == ["binary"]:
        stride = sum(int(s) * int(c) for s, c in zip(fields["SIZE"], fields["COUNT"], strict=True))
        assert len(body) == n * stride
        points = [struct.unpack_from("<fffI", body, i * stride) for i in range(n)]
    else:
        assert fields["DATA"] == ["ascii"]
        lines = body.decode("ascii").splitlines()
        assert len(lines) == n
        points = [tuple(float(v) for v in line.split()) for line in lines]
    assert all(math.isfinite(c) for p in points for c in p[:3])
    return points


@pytest.mark.parametrize("fmt", ["binary", "ascii"])
async def test_point_cloud_is_valid_pcd(fmt, mock_clock):
    cam = build_resource("camera", "c", "fake", {"points": 500, "pcd_format": fmt}, NoDeps())
    first = await cam.capture("NextPointCloud", {})
    assert first.mime_type == "pointcloud/pcd"
    points = read_pcd(first.data)
    assert len(points) == 500
    mock_clock.jump(1.0)
    later = read_pcd((await cam.capture("NextPointCloud", {})).data)
    assert len(later) == 500 and later != points


async def test_render_cache_reuses_a_frame(mock_clock):
    cam = build_resource("camera", "c", "fake", {"fps": 5}, NoDeps())
    a = await cam.capture("ReadImage", {})
    mock_clock.jump(0.1)  # within the same 0.2 s frame
    b = await cam.capture("ReadImage", {})
    assert a.data == b.data and cam.renders == 1
    mock_clock.jump(0.2)
    c = await cam.capture("ReadImage", {})
    assert c.data != a.data and cam.renders == 2


# -- time, reproducibility, faults


@pytest.mark.parametrize(
    ("type_", "method"),
    [p for p in ALL_METHODS if p not in CONSTANT],
    ids=[f"{t}.{m}" for t, m in ALL_METHODS if (t, m) not in CONSTANT],
)
async def test_values_change_over_virtual_time(type_, method, mock_clock):
    reg = registry_with_all_types()
    res = resource_for(reg, type_)
    samples = []
    for _ in range(12):
        out = await res.capture(method, dict(PARAMS))
        if isinstance(out, Binary):
            out = (out.data, json.dumps(out.metadata, sort_keys=True))
        elif isinstance(out, list):
            out = [b.data for b in out]
        samples.append(out)
        mock_clock.jump(0.75)
    assert len({json.dumps(s, sort_keys=True, default=repr) for s in samples}) > 1, samples[:3]


async def test_values_do_not_change_without_time_passing(mock_clock):
    s = build_resource("movement_sensor", "m", "fake", {}, NoDeps())
    assert await s.capture("Position", {}) == await s.capture("Position", {})
    e = build_resource("encoder", "e", "fake", {"ticks_per_sec": 100}, NoDeps())
    values = []
    for _ in range(5):
        values.append((await e.capture("TicksCount", {}))["value"])
        mock_clock.jump(0.5)
    assert values == [0, 50, 100, 150, 200]


def run_series(type_: str, name: str, method: str, steps: int = 5):
    async def main(clock):
        res = build_resource(type_, name, "fake", {}, NoDeps())
        out = []
        for _ in range(steps):
            out.append(await res.capture(method, dict(PARAMS)))
            clock.jump(0.3)
        return out

    clock = trio.testing.MockClock()
    return trio.run(main, clock, clock=clock)


def test_seeded_by_name_and_reproducible():
    assert run_series("sensor", "s1", "Readings") == run_series("sensor", "s1", "Readings")
    assert run_series("sensor", "s1", "Readings") != run_series("sensor", "s2", "Readings")
    assert run_series("arm", "a", "JointPositions") == run_series("arm", "a", "JointPositions")


def test_time_outside_trio_falls_back_to_monotonic():
    before = time.monotonic()
    assert before <= now() <= time.monotonic()
    s = build_resource("sensor", "s", "fake", {}, NoDeps())
    assert set(s.m_Readings({})) >= {"temperature_c"}


async def test_time_inside_trio_is_trio_time(mock_clock):
    mock_clock.jump(1234.0)
    assert now() == trio.current_time() >= 1234.0


async def test_fail_rate_one_always_fails():
    s = build_resource("sensor", "s", "fake", {"fail_rate": 1}, NoDeps())
    for _ in range(50):
        with pytest.raises(ResourceError, match="injected"):
            await s.capture("Readings", {})


async def test_fail_rate_fraction():
    s = build_resource("servo", "s", "fake", {"fail_rate": "0.3"}, NoDeps())
    failures = 0
    for _ in range(2000):
        try:
            await s.capture("Position", {})
        except ResourceError:
            failures += 1
    assert 450 < failures < 750


@pytest.mark.parametrize("attrs", [{"fail_rate": 1.5}, {"fail_rate": "lots"}, {"latency_ms": -1}])
def test_bad_fault_attributes_are_rejected(attrs):
    with pytest.raises(ResourceError):
        build_resource("sensor", "s", "fake", attrs, NoDeps())


async def test_latency_ms_sleeps_in_virtual_time(autojump_clock):
    s = build_resource("motor", "m", "fake", {"latency_ms": 250}, NoDeps())
    start = trio.current_time()
    await s.capture("IsPowered", {})
    assert trio.current_time() - start == pytest.approx(0.25)


# -- vision


async def test_vision_detections_and_filtering(mock_clock):
    reg = ResourceRegistry()
    reg.build_all([Ref("vision", "v"), Ref("camera", "cam", attributes={"width": 200, "height": 100})])
    vision = reg.get("v")
    seen_low = seen_high = False
    for _ in range(30):
        out = await vision.capture("CaptureAllFromCamera", {"camera_name": "cam", "mime_type": "image/png"})
        assert isinstance(out, Binary) and out.mime_type == "image/png"
        assert Image.open(io.BytesIO(out.data)).format == "PNG"
        assert set(out.metadata) == {"detections", "classifications"}
        assert_json_like(out.metadata)
        for d in out.metadata["detections"]:
            assert set(d) == {"class_name", "confidence", "x_min", "y_min", "x_max", "y_max"}
            assert 0 <= d["x_min"] < d["x_max"] <= 200 and 0 <= d["y_min"] < d["y_max"] <= 100
        drawn = {o.class_name: o for o in reg.get("cam").last_objects}
        for d in out.metadata["detections"]:
            if d["class_name"] in drawn:
                o = drawn[d["class_name"]]
                assert (d["x_min"], d["y_min"], d["x_max"], d["y_max"]) == (o.x_min, o.y_min, o.x_max, o.y_max)
        confs = [d["confidence"] for d in out.metadata["detections"]]
        seen_low |= min(confs) < 0.7
        seen_high |= max(confs) >= 0.7
        assert math.isclose(sum(c["confidence"] for c in out.metadata["classifications"]), 1.0, abs_tol=0.01)
        filtered = await vision.capture("CaptureAllFromCamera", {"camera_name": "cam", "min_confidence_score": "0.7"})
        assert filtered.metadata["detections"] == [d for d in out.metadata["detections"] if d["confidence"] >= 0.7]
        assert all(c["confidence"] >= 0.7 for c in filtered.metadata["classifications"])
        mock_clock.jump(0.9)
    assert seen_low and seen_high  # the filter really removed something and kept something


async def test_vision_errors():
    reg = ResourceRegistry()
    reg.build_all([Ref("vision", "v"), Ref("camera", "cam")])
    vision = reg.get("v")
    with pytest.raises(ResourceError, match="ghost"):
        await vision.capture("CaptureAllFromCamera", {"camera_name": "ghost"})
    with pytest.raises(ResourceError, match="min_confidence_score"):
        await vision.capture("CaptureAllFromCamera", {"camera_name": "cam", "min_confidence_score": "high"})
    with pytest.raises(ResourceError, match="camera_name"):
        await vision.capture("CaptureAllFromCamera", {})


async def test_vision_with_a_non_fake_camera():
    reg = ResourceRegistry()
    reg.add(PlainCamera("plain", {}, reg))
    reg.build_all([Ref("vision", "v")])
    out = await reg.get("v").capture("CaptureAllFromCamera", {"camera_name": "plain"})
    assert out.data == PlainCamera.image and out.metadata["detections"]
    for d in out.metadata["detections"]:
        assert 0 <= d["x_min"] < d["x_max"] <= 40 and 0 <= d["y_min"] < d["y_max"] <= 30
    assert reg.reconcile([]) == {} and "plain" in reg and "v" not in reg  # added resources are kept
    reg.remove("plain")
    assert "plain" not in reg and reg.statistics().retired_unclosed == 2


# -- users' own models


class PlainCamera:
    """A user's camera: not a FakeResource."""

    type, model = "camera", "plain"
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, "PNG")
    image = buf.getvalue()

    def __init__(self, name, attributes, lookup):
        self.name = name

    async def capture(self, method, params):
        return Binary(self.image, "image/png")

    async def close(self):
        pass


class Thermo:
    type, model = "sensor", "thermo"

    def __init__(self, name, attributes, lookup):
        self.name, self.offset, self.closed = name, float(attributes.get("offset", 0)), False

    async def capture(self, method, params):
        if method != "Readings":
            raise ResourceError(f"no method {method}")
        return {"temperature_c": 20.0 + self.offset}

    async def close(self):
        self.closed = True


def make_thermo(name, attributes, lookup):
    return Thermo(name, attributes, lookup)


async def test_py_path_model():
    s = build_resource("sensor", "t", f"py:{__name__}:make_thermo", {"offset": 1.5}, NoDeps())
    assert isinstance(s, Thermo) and await s.capture("Readings", {}) == {"temperature_c": 21.5}
    s = build_resource("sensor", "t", f"py:{__name__}:Thermo", {}, NoDeps())  # a class is a factory too
    assert isinstance(s, Thermo)


@pytest.mark.parametrize(
    "model", ["py:no_such_module_xyz:f", f"py:{__name__}:no_such_factory", "py:justamodule", f"py:{__name__}:ALL_METHODS"]
)
def test_bad_py_path_is_unknown_model(model):
    with pytest.raises(UnknownModel):
        build_resource("sensor", "t", model, {}, NoDeps())


async def test_register_model():
    register_model("sensor", "thermo", make_thermo)
    try:
        assert registered_models("sensor")["thermo"] is make_thermo
        s = build_resource("sensor", "t", "rdk:builtin:thermo", {}, NoDeps())
        assert await s.capture("Readings", {}) == {"temperature_c": 20.0}
    finally:
        unregister_model("sensor", "thermo")
    with pytest.raises(UnknownModel):
        build_resource("sensor", "t", "thermo", {}, NoDeps())


def test_unknown_model_lists_registered_models():
    register_model("sensor", "thermo", make_thermo)
    try:
        with pytest.raises(UnknownModel, match=r"'nope'.*registered models: .*\bfake\b.*\bthermo\b"):
            build_resource("sensor", "t", "nope", {}, NoDeps())
    finally:
        unregister_model("sensor", "thermo")
    with pytest.raises(UnknownModel, match="none"):
        build_resource("teleporter", "t", "fake", {}, NoDeps())


def test_builtin_prefix_means_fake():
    s = build_resource("sensor", "t", "rdk:builtin:fake", {}, NoDeps())
    assert isinstance(s, FakeResource) and s.type == "sensor" and s.name == "t" and s.model == "fake"


def test_entry_point_model(tmp_path, monkeypatch):
    (tmp_path / "capsync_ext_models.py").write_text(
        textwrap.dedent(
            """
            class Gauge:
                type, model = "sensor", "gauge"
                def __init__(self, name, attributes, lookup):
                    self.name = name
                async def capture(self, method, params):
                    return {"bar": 1.0}
                async def close(self):
                    pass
            """
        )
    )
    dist = tmp_path / "capsync_ext_models-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: capsync-ext-models\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[capsync.models]\nsensor/gauge = capsync_ext_models:Gauge\nbadname = x:y\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "gauge" in registered_models("sensor")
    assert "gauge" in registered_models()["sensor"]
    g = build_resource("sensor", "g", "gauge", {}, NoDeps())
    assert type(g).__name__ == "Gauge"


def test_factory_errors_are_resource_errors():
    def broken(name, attributes, lookup):
        raise KeyError("port")

    register_model("servo", "broken", broken)
    register_model("servo", "hollow", lambda n, a, lk: object())
    try:
        with pytest.raises(ResourceError, match="port"):
            build_resource("servo", "s", "broken", {}, NoDeps())
        with pytest.raises(ResourceError, match="capture"):
            build_resource("servo", "s", "hollow", {}, NoDeps())
    finally:
        unregister_model("servo", "broken")
        unregister_model("servo", "hollow")


# -- the registry of one agent


async def test_registry_build_all_is_additive_and_raises_after_building_the_rest():
    reg = ResourceRegistry()
    reg.build_all([Ref("sensor", "a")])
    a = reg.get("a")
    with pytest.raises(UnknownModel, match="nope"):
        reg.build_all([Ref("servo", "c", "nope"), Ref("sensor", "b")])
    assert reg.get("a") is a and reg.get("b").type == "sensor" and "c" not in reg
    with pytest.raises(ResourceError, match="'c'"):
        reg.get("c")
    with pytest.raises(ExceptionGroup) as group:
        reg.build_all([Ref("servo", "c", "nope"), Ref("arm", "d", attributes={"fail_rate": 7}), Ref("motor", "e")])
    assert {type(e) for e in group.value.exceptions} == {UnknownModel, ResourceError} and "e" in reg
    assert dict(reg.statistics().build_failures).keys() == {"c", "d"}
    reg.build_all([Ref("sensor", "a")])  # unchanged: kept
    assert reg.get("a") is a
    reg.build_all([Ref("sensor", "a", attributes={"latency_ms": 1})])  # changed: rebuilt, old one retired
    assert reg.get("a") is not a and reg.statistics().retired_unclosed == 1
    await reg.close_retired()
    assert a.closed and not reg.get("a").closed


async def test_registry_reconcile_diff_and_close():
    reg = ResourceRegistry()
    failures = reg.reconcile(
        [Ref("sensor", "a"), Ref("sensor", "b"), Ref("servo", "c", "nope"), Ref("arm", "a"), Ref("sensor", "d")]
    )
    assert set(failures) == {"c", "a"} and reg.get("a").type == "sensor"  # the first "a" wins
    assert isinstance(failures["c"], UnknownModel) and isinstance(failures["a"], ResourceError)
    assert "c" not in reg
    b, d = reg.get("b"), reg.get("d")
    assert reg.reconcile([Ref("sensor", "b"), Ref("sensor", "d", attributes={"fail_rate": 0.5}), Ref("motor", "e")]) == {}
    assert reg.get("b") is b and reg.get("d") is not d and "a" not in reg
    stats = reg.statistics()
    assert stats.resources == 3 and dict(stats.by_type) == {"motor": 1, "sensor": 2} and stats.retired_unclosed == 2
    assert stats.build_failures == ()
    await reg.close_retired()
    assert d.closed and not b.closed
    await reg.close_all()
    assert b.closed and len(reg) == 0
    with pytest.raises(ResourceError, match="closed"):
        await b.capture("Readings", {})


def test_registry_duplicate_names():
    reg = ResourceRegistry()
    with pytest.raises(ResourceError, match="duplicate"):
        reg.build_all([Ref("sensor", "x"), Ref("arm", "x")])
    assert reg.get("x").type == "sensor"


# -- cost and properties


async def test_tabular_capture_is_cheap():
    sensor = build_resource("sensor", "s", "fake", {}, NoDeps())
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(5000):
            await sensor.capture("Readings", {})
        best = min(best, (time.perf_counter() - start) / 5000)
    assert best < 25e-6, f"{best * 1e6:.1f} µs per Readings"


TABULAR = [(t, m) for t, m in ALL_METHODS if METHODS[t][m].kind is DataKind.TABULAR]


@settings(max_examples=60, deadline=None)
@given(
    pair=st.sampled_from(TABULAR),
    name=st.text(min_size=1, max_size=20),
    steps=st.lists(st.floats(min_value=0, max_value=1e5, allow_nan=False), min_size=1, max_size=5),
)
def test_tabular_values_are_always_json_like(pair, name, steps):
    type_, method = pair

    async def main(clock):
        res = build_resource(type_, name, "fake", {}, NoDeps())
        for dt in steps:
            clock.jump(dt)
            out = await res.capture(method, dict(PARAMS))
            check_kind(type_, method, out)

    clock = trio.testing.MockClock()
    trio.run(main, clock, clock=clock)
