"""What every ``fake`` model shares: the clock, seeded randomness, fault attributes, param coercion.

Fake data is a function of time: ``trio.current_time()`` inside Trio (so a MockClock drives it)
and ``time.monotonic()`` outside. Elapsed time is measured from a resource's first capture, so a
fake starts in the same state on every run; randomness is seeded from the resource's type and
name (or the ``seed`` attribute), so a run under a MockClock is reproducible.
"""

from __future__ import annotations

import inspect
import math
import random
import time
from collections.abc import Callable
from typing import Any

import trio

from .methods import METHODS
from .registry import ResourceLookup, register_model
from .resource import CaptureResult, ResourceError


def now() -> float:
    """Trio's clock inside a Trio run, ``time.monotonic()`` outside."""
    try:
        return trio.current_time()
    except RuntimeError:
        return time.monotonic()


# -- coercion of attributes and additional_params (config values may be strings such as "0.7")


def as_float(source: dict, key: str, default: float | None = None, *, what: str = "param") -> float:
    value = source.get(key, default)
    if value is None or value == "":
        if default is None:
            raise ResourceError(f"missing {what} {key!r}")
        return float(default)
    if isinstance(value, bool):
        raise ResourceError(f"{what} {key!r} must be a number, got {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ResourceError(f"{what} {key!r} must be a number, got {value!r}") from None
    if math.isnan(result):
        raise ResourceError(f"{what} {key!r} must be a number, got {value!r}")
    return result


def as_int(source: dict, key: str, default: int | None = None, *, what: str = "param") -> int:
    result = as_float(source, key, default, what=what)
    if result != int(result):
        raise ResourceError(f"{what} {key!r} must be a whole number, got {source.get(key)!r}")
    return int(result)


def as_str(source: dict, key: str, default: str | None = None, *, what: str = "param") -> str:
    value = source.get(key, default)
    if value is None or (isinstance(value, str) and not value.strip()):
        if default is None:
            raise ResourceError(f"missing {what} {key!r}")
        return default
    return str(value).strip()


def wave(rng: random.Random, center: float, amplitude: float) -> tuple[float, ...]:
    """Seeded parameters ``(center, a1, w1, p1, a2, w2, p2)`` of a sum of two sines around
    ``center``: a slow swing (periods 5..20 s) plus a faster ripple (1..3 s)."""
    w1 = rng.uniform(0.05, 0.2) * 2 * math.pi
    w2 = rng.uniform(0.3, 0.9) * 2 * math.pi
    p1, p2 = rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi)
    return (center, amplitude * 0.8, w1, p1, amplitude * 0.2, w2, p2)


def smooth(rng: random.Random, center: float, amplitude: float) -> Callable[[float], float]:
    """A seeded smooth signal of time (see :func:`wave`): cheap and plausible."""
    c, a1, w1, p1, a2, w2, p2 = wave(rng, center, amplitude)
    sin = math.sin
    return lambda t: c + a1 * sin(w1 * t + p1) + a2 * sin(w2 * t + p2)


class FakeResource:
    """Base of the fake models. A subclass sets ``type`` and defines ``m_<Method>(params)`` for each
    method of its type in METHODS (sync, or async when it must await something)."""

    type: str = ""
    model = "fake"

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        self.name = name
        self.attributes = dict(attributes or {})
        self.lookup = lookup
        attrs = self.attributes
        seed = attrs.get("seed")
        self.rng = random.Random(f"{self.type}/{name}" if seed is None else f"seed/{seed}")
        self._fail_rng = random.Random(f"fail/{self.type}/{name}/{seed}")
        self.fail_rate = as_float(attrs, "fail_rate", 0.0, what="attribute")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ResourceError(f"attribute 'fail_rate' must be between 0 and 1, got {attrs['fail_rate']!r}")
        latency_ms = as_float(attrs, "latency_ms", 0.0, what="attribute")
        if latency_ms < 0:
            raise ResourceError(f"attribute 'latency_ms' must be >= 0, got {attrs['latency_ms']!r}")
        self.latency_s = latency_ms / 1000.0
        self._t0: float | None = None
        self.closed = False
        self.calls = 0
        self._methods: dict[str, tuple[Callable[[dict], Any], bool]] = {}
        for method in METHODS.get(self.type, {}):
            fn = getattr(self, f"m_{method}", None)
            if fn is None:
                raise TypeError(f"{type(self).__name__} does not implement {self.type}.{method}")
            self._methods[method] = (fn, inspect.iscoroutinefunction(fn))

    def elapsed(self) -> float:
        """Seconds since this resource's first capture (never negative)."""
        t = now()
        t0 = self._t0
        if t0 is None:
            self._t0 = t0 = t
        return t - t0 if t > t0 else 0.0

    def sync_capture(self, method: str) -> Callable[[str, dict], CaptureResult] | None:
        """`capture` as a plain function, for a method that needs no await and no latency (see
        resource.sync_capture_call); else None."""
        entry = self._methods.get(method)
        if entry is None or entry[1] or self.latency_s:
            return None
        fn = entry[0]

        def capture_now(method: str, params: dict | None = None) -> CaptureResult:
            if self.closed:
                raise self._closed()
            self.calls += 1
            if self.fail_rate and self._fail_rng.random() < self.fail_rate:
                raise self._injected_failure(method)
            return fn(params or {})

        return capture_now

    async def capture(self, method: str, params: dict | None = None) -> CaptureResult:
        entry = self._methods.get(method)
        if entry is None:
            known = ", ".join(self._methods)
            raise ResourceError(f"{self.type} {self.name!r} has no capture method {method!r} (methods: {known})")
        # _call_starts, inline: this is the hot path of every fake reading
        if self.closed:
            raise self._closed()
        self.calls += 1
        if self.latency_s:
            await trio.sleep(self.latency_s)
        if self.fail_rate and self._fail_rng.random() < self.fail_rate:
            raise self._injected_failure(method)
        fn, is_async = entry
        if is_async:
            return await fn(params or {})
        return fn(params or {})

    async def do_command(self, command: dict) -> dict:
        """DoCommand (and its capture): the command echoed back, with this resource's call count
        and seconds since its first capture."""
        await self._call_starts("DoCommand")
        return {"command": dict(command), "calls": self.calls, "elapsed_s": self.elapsed()}

    async def _call_starts(self, method: str) -> None:
        """What every call does first: refuse when closed, count, wait `latency_ms`, fail at `fail_rate`."""
        if self.closed:
            raise self._closed()
        self.calls += 1
        if self.latency_s:
            await trio.sleep(self.latency_s)
        if self.fail_rate and self._fail_rng.random() < self.fail_rate:
            raise self._injected_failure(method)

    def _closed(self) -> ResourceError:
        return ResourceError(f"{self.type} {self.name!r} is closed")

    def _injected_failure(self, method: str) -> ResourceError:
        return ResourceError(f"{self.type} {self.name!r}: injected failure in {method} (fail_rate={self.fail_rate})")

    async def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.type} {self.name!r}>"


def register_fake(cls: type[FakeResource]) -> type[FakeResource]:
    """Class decorator: register ``cls`` as the ``fake`` model of its type."""
    register_model(cls.type, "fake", cls)
    return cls
