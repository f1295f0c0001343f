"""The ``fake`` models of the tabular resource types (camera and vision are in fake_camera.py).

Each returns values shaped like the real API's capture data, changing smoothly with time. They
are called up to thousands of times per second by the capture benchmark, so each method is a
handful of float operations and one small dict: signal functions are built once, in __init__.
"""

from __future__ import annotations

import math
import random

from .fake_base import FakeResource, as_float, as_int, as_str, register_fake, smooth, wave
from .registry import ResourceLookup
from .resource import ResourceError

_sin, _cos, _radians, _degrees = math.sin, math.cos, math.radians, math.degrees


@register_fake
class FakeArm(FakeResource):
    """Attributes: ``dof`` (joints, default 6)."""

    type = "arm"

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        super().__init__(name, attributes, lookup)
        rng = self.rng
        dof = as_int(self.attributes, "dof", 6, what="attribute")
        if not 1 <= dof <= 32:
            raise ResourceError(f"attribute 'dof' must be 1..32, got {dof}")
        self._joints = [smooth(rng, rng.uniform(-30, 30), rng.uniform(20, 60)) for _ in range(dof)]
        self._xyz = [smooth(rng, c, rng.uniform(40, 120)) for c in (350.0, 0.0, 400.0)]
        self._azimuth = smooth(rng, 0.0, 0.6)
        self._elevation = smooth(rng, -1.2, 0.3)
        self._theta = smooth(rng, 0.0, 90.0)

    def m_EndPosition(self, params: dict) -> dict:
        t = self.elapsed()
        az, el = self._azimuth(t), self._elevation(t)
        fx, fy, fz = self._xyz
        return {
            "pose": {
                "x": fx(t),
                "y": fy(t),
                "z": fz(t),
                "o_x": _cos(el) * _cos(az),
                "o_y": _cos(el) * _sin(az),
                "o_z": _sin(el),
                "theta": self._theta(t),
            }
        }

    def m_JointPositions(self, params: dict) -> dict:
        t = self.elapsed()
        return {"positions": {"values": [j(t) for j in self._joints]}}


@register_fake
class FakeBoard(FakeResource):
    """Attributes: ``analogs`` ([{"name": ...}], restricts the reader names; any name when absent),
    ``analog_max_range`` (volts, default 3.3), ``analog_bits`` (default 12)."""

    type = "board"

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        super().__init__(name, attributes, lookup)
        analogs = self.attributes.get("analogs")
        self._readers: set[str] | None = None
        if analogs is not None:
            if not isinstance(analogs, list):
                raise ResourceError("attribute 'analogs' must be a list of {\"name\": ...}")
            self._readers = {str(a["name"]) if isinstance(a, dict) and "name" in a else str(a) for a in analogs}
        self._max_v = as_float(self.attributes, "analog_max_range", 3.3, what="attribute")
        bits = as_int(self.attributes, "analog_bits", 12, what="attribute")
        self._levels = (1 << bits) - 1
        self._step = self._max_v / (1 << bits)
        self._analog_fns: dict = {}
        self._gpio_fns: dict = {}

    def m_Analogs(self, params: dict) -> dict:
        reader = params.get("reader_name")
        fn = self._analog_fns.get(reader) if isinstance(reader, str) else None
        if fn is None:
            reader = as_str(params, "reader_name")
            if self._readers is not None and reader not in self._readers:
                known = ", ".join(sorted(self._readers)) or "none"
                raise ResourceError(f"board {self.name!r} has no analog reader {reader!r} (analogs: {known})")
            fn = self._analog_fns[reader] = smooth(self._sub_rng("analog", reader), 0.5, 0.4)
        t = self.elapsed()
        level = fn(t)
        value = int(min(max(level, 0.0), 1.0) * self._levels)
        return {"value": value, "min_range": 0.0, "max_range": self._max_v, "step_size": self._step}

    def m_Gpios(self, params: dict) -> dict:
        pin = params.get("pin_name")
        fn = self._gpio_fns.get(pin) if isinstance(pin, str) else None
        if fn is None:
            pin = as_str(params, "pin_name")
            rng = self._sub_rng("gpio", pin)  # a square wave with a period of 1..4 s
            w, p = 2 * math.pi / rng.uniform(1.0, 4.0), rng.uniform(0, 2 * math.pi)
            fn = self._gpio_fns[pin] = lambda t: _sin(w * t + p)
        return {"high": fn(self.elapsed()) > 0.0}

    def _sub_rng(self, kind: str, key: str) -> random.Random:
        return random.Random(f"{self.type}/{self.name}/{kind}/{key}")


@register_fake
class FakeEncoder(FakeResource):
    """Attributes: ``ticks_per_sec`` (default: seeded, 50..200)."""

    type = "encoder"

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        super().__init__(name, attributes, lookup)
        self._rate = as_float(self.attributes, "ticks_per_sec", round(self.rng.uniform(50, 200), 1), what="attribute")
        self._last = 0

    def m_TicksCount(self, params: dict) -> dict:
        ticks = int(self._rate * self.elapsed())
        if ticks < self._last:  # the clock went back (e.g. a new Trio run): keep counting up
            ticks = self._last
        self._last = ticks
        return {"value": ticks, "position_type": "POSITION_TYPE_TICKS_COUNT"}


@register_fake
class FakeGantry(FakeResource):
    """Attributes: ``lengths_mm`` (one per axis, default [1000, 800, 300]). Lengths are constant."""

    type = "gantry"

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        super().__init__(name, attributes, lookup)
        lengths = self.attributes.get("lengths_mm", [1000.0, 800.0, 300.0])
        try:
            self._lengths = [float(x) for x in lengths]
        except (TypeError, ValueError):
            raise ResourceError(f"attribute 'lengths_mm' must be a list of numbers, got {lengths!r}") from None
        if not self._lengths or min(self._lengths) <= 0:
            raise ResourceError("attribute 'lengths_mm' must list positive lengths")
        self._axes = [smooth(self.rng, length / 2, length * 0.45) for length in self._lengths]

    def m_Lengths(self, params: dict) -> dict:
        return {"lengths_mm": list(self._lengths)}

    def m_Position(self, params: dict) -> dict:
        t = self.elapsed()
        return {"positions_mm": [f(t) for f in self._axes]}


@register_fake
class FakeMotor(FakeResource):
    """Attributes: ``rpm`` (default: seeded, 20..90). Powered about 80% of the time; ``power_pct``
    is in -1..1 as in the motor API."""

    type = "motor"

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        super().__init__(name, attributes, lookup)
        self._rev_per_s = as_float(self.attributes, "rpm", round(self.rng.uniform(20, 90), 1), what="attribute") / 60
        self._wobble = smooth(self.rng, 0.0, 0.2)
        self._duty = smooth(self.rng, 0.0, 1.0)
        self._power = smooth(self.rng, 0.6, 0.3)

    def m_Position(self, params: dict) -> dict:
        t = self.elapsed()
        return {"position": self._rev_per_s * t + self._wobble(t)}

    def m_IsPowered(self, params: dict) -> dict:
        t = self.elapsed()
        on = self._duty(t) > -0.6
        return {"is_on": on, "power_pct": min(self._power(t), 1.0) if on else 0.0}


@register_fake
class FakeMovementSensor(FakeResource):
    """Drives a circle. Attributes: ``latitude``, ``longitude``, ``altitude_m`` (the start),
    ``speed_mps`` (default 1.5), ``radius_m`` (default 25)."""

    type = "movement_sensor"

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        super().__init__(name, attributes, lookup)
        a, rng = self.attributes, self.rng
        self._lat0 = as_float(a, "latitude", 40.7128 + rng.uniform(-0.01, 0.01), what="attribute")
        self._lon0 = as_float(a, "longitude", -74.0060 + rng.uniform(-0.01, 0.01), what="attribute")
        alt0 = as_float(a, "altitude_m", 10.0, what="attribute")
        self._v = as_float(a, "speed_mps", 1.5, what="attribute")
        self._r = as_float(a, "radius_m", 25.0, what="attribute")
        if self._r <= 0:
            raise ResourceError("attribute 'radius_m' must be > 0")
        self._w = self._v / self._r  # rad/s
        self._phase = rng.uniform(0, 2 * math.pi)
        self._m_per_deg_lon = 111_320.0 * math.cos(math.radians(self._lat0))
        self._alt = smooth(rng, alt0, 0.5)
        self._jitter = [smooth(rng, 0.0, 1.0) for _ in range(6)]

    def _heading(self, t: float) -> float:
        return self._w * t + self._phase

    def m_AngularVelocity(self, params: dict) -> dict:
        t = self.elapsed()
        j = self._jitter
        return {"x": 2.0 * j[0](t), "y": 2.0 * j[1](t), "z": _degrees(self._w) + 0.5 * j[2](t)}

    def m_LinearAcceleration(self, params: dict) -> dict:
        t = self.elapsed()
        j = self._jitter
        return {"x": self._v * self._w + 0.05 * j[3](t), "y": 0.05 * j[4](t), "z": 9.81 + 0.05 * j[5](t)}

    def m_LinearVelocity(self, params: dict) -> dict:
        t = self.elapsed()
        j = self._jitter
        return {"x": 0.02 * j[0](t), "y": self._v * (1.0 + 0.05 * j[1](t)), "z": 0.01 * j[2](t)}

    def m_CompassHeading(self, params: dict) -> dict:
        # Counter-clockwise in the map frame; compass degrees run clockwise from north.
        return {"value": (90.0 - _degrees(self._heading(self.elapsed()))) % 360.0}

    def m_Orientation(self, params: dict) -> dict:
        t = self.elapsed()
        j = self._jitter
        return {"o_x": 0.02 * j[3](t), "o_y": 0.02 * j[4](t), "o_z": 1.0, "theta": _degrees(self._heading(t)) % 360.0}

    def m_Position(self, params: dict) -> dict:
        t = self.elapsed()
        h, p = self._heading(t), self._phase
        east = self._r * (_sin(h) - _sin(p))
        north = self._r * (_cos(p) - _cos(h))
        return {
            "coordinate": {"latitude": self._lat0 + north / 111_320.0, "longitude": self._lon0 + east / self._m_per_deg_lon},
            "altitude_m": self._alt(t),
        }


#: name -> (center, amplitude) of the readings a fake sensor knows how to make plausible.
KNOWN_READINGS: dict[str, tuple[float, float]] = {
    "temperature_c": (21.0, 3.0),
    "humidity_pct": (45.0, 10.0),
    "pressure_hpa": (1013.0, 4.0),
    "battery_v": (12.4, 0.3),
    "co2_ppm": (600.0, 150.0),
    "light_lux": (300.0, 200.0),
    "distance_m": (1.5, 1.0),
    "current_a": (1.2, 0.5),
}
DEFAULT_READINGS = ("temperature_c", "humidity_pct", "pressure_hpa", "battery_v")


@register_fake
class FakeSensor(FakeResource):
    """Attributes: ``readings`` — a list of names (known ones, see KNOWN_READINGS, get plausible
    values; others a seeded range) or a dict name -> center value. Default: temperature_c,
    humidity_pct, pressure_hpa, battery_v."""

    type = "sensor"

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        super().__init__(name, attributes, lookup)
        spec = self.attributes.get("readings", DEFAULT_READINGS)
        rng = self.rng
        if isinstance(spec, dict):
            try:
                centers = {str(k): float(v) for k, v in spec.items()}
            except (TypeError, ValueError):
                raise ResourceError("attribute 'readings' as a dict must map names to numbers") from None
            items = [(k, c, abs(c) * 0.05 or 1.0) for k, c in centers.items()]
        elif isinstance(spec, list | tuple) and spec:
            items = []
            for k in map(str, spec):
                center, amp = KNOWN_READINGS.get(k) or (round(rng.uniform(0, 100), 1), rng.uniform(1, 10))
                items.append((k, center, amp))
        else:
            raise ResourceError(f"attribute 'readings' must be a non-empty list of names or a dict, got {spec!r}")
        # (name, wave parameters..., noise amplitude), unpacked inline: this is the hot path.
        self._readings = [(k, *wave(rng, center, amp), amp * 0.02) for k, center, amp in items]
        self._noise = rng.random

    def m_Readings(self, params: dict) -> dict:
        t = self.elapsed()
        r, sin = self._noise, _sin
        return {
            k: c + a1 * sin(w1 * t + p1) + a2 * sin(w2 * t + p2) + (r() - 0.5) * n
            for k, c, a1, w1, p1, a2, w2, p2, n in self._readings
        }


@register_fake
class FakeServo(FakeResource):
    """Attributes: ``min_deg``/``max_deg`` (default 0/180)."""

    type = "servo"

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        super().__init__(name, attributes, lookup)
        lo = as_float(self.attributes, "min_deg", 0, what="attribute")
        hi = as_float(self.attributes, "max_deg", 180, what="attribute")
        if hi <= lo:
            raise ResourceError("attribute 'max_deg' must be greater than 'min_deg'")
        self._lo, self._hi = lo, hi
        self._angle = smooth(self.rng, (lo + hi) / 2, (hi - lo) * 0.45)

    def m_Position(self, params: dict) -> dict:
        return {"position_deg": int(min(max(self._angle(self.elapsed()), self._lo), self._hi))}


@register_fake
class FakeGeneric(FakeResource):
    """A ``generic`` component or service: no capture methods of its own, only DoCommand (which
    echoes the command; see FakeResource.do_command)."""

    type = "generic"
