"""Capture control at run time: the control sensor's overrides, checked as hostile input, applied
like a config edit in-process under the virtual clock, and the acceptance run with a real agent
process whose control sensor a test rewrites while it runs."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
import trio

from capsync.actors.agent import Agent
from capsync.runtime.blocking import inline_blocking
from capsync.runtime.capture_control import BadOverrides, CaptureOverride, parse_overrides
from capsync.runtime.capture_file import read_capture
from capsync.runtime.config import parse_config
from tests.helpers import capture_files, fake_component, robot_config, write_config
from tests.processkit import ProcessKit, log_lines

KEY = "overrides"


def test_overrides_parse_and_every_bad_shape_is_named():
    ok = {KEY: [{"resource_name": "env", "method": "Readings", "capture_frequency_hz": 0},
                {"resource_name": "wheel", "method": "TicksCount", "tags": ["fast", "x-1"]}]}
    assert parse_overrides(ok, KEY) == (CaptureOverride("env", "Readings", 0.0, None),
                                        CaptureOverride("wheel", "TicksCount", None, ("fast", "x-1")))
    assert parse_overrides({}, KEY) == () and parse_overrides({KEY: []}, KEY) == () == parse_overrides({KEY: None}, KEY)
    bad = {
        "[1, 2]": ([1, 2], "not an object"),
        "a string": ({KEY: "env"}, "expected a list"),
        "a number item": ({KEY: [5]}, r"overrides\[0\]: expected an object"),
        "no method": ({KEY: [{"resource_name": "env"}]}, r"overrides\[0\].method"),
        "negative rate": ({KEY: [{"resource_name": "e", "method": "m", "capture_frequency_hz": -1}]}, "number >= 0"),
        "bool rate": ({KEY: [{"resource_name": "e", "method": "m", "capture_frequency_hz": True}]}, "number >= 0"),
        "NaN rate": ({KEY: [{"resource_name": "e", "method": "m", "capture_frequency_hz": float("nan")}]}, ">= 0"),
        "bad tag": ({KEY: [{"resource_name": "e", "method": "m", "tags": ["a b"]}]}, r"tags\[0\]"),
        "unknown field": ({KEY: [{"resource_name": "e", "method": "m", "hz": 1}]}, "unknown field 'hz'"),
        "twice": ({KEY: [{"resource_name": "e", "method": "m"}] * 2}, "a second override"),
        "too many": ({KEY: [{"resource_name": "e", "method": str(i)} for i in range(1001)]}, "at most 1000"),
    }
    for what, (reading, message) in bad.items():
        with pytest.raises(BadOverrides, match=message):
            parse_overrides(reading, KEY)
        assert what


class _Control:
    """An in-process control sensor whose reading the test sets (or makes fail)."""

    type, name, model = "sensor", "ctl", "stub"

    def __init__(self) -> None:
        self.reading: object = {}

    async def capture(self, method: str, params: dict) -> object:
        if isinstance(self.reading, Exception):
            raise self.reading
        return self.reading

    async def close(self) -> None:
        pass


def _config(capture_dir: Path) -> dict:
    comps = [fake_component("env", "sensor", [{"method": "Readings", "capture_frequency_hz": 5}]),
             fake_component("wheel", "encoder", [{"method": "TicksCount", "capture_frequency_hz": 1}]),
             {"name": "ctl", "type": "sensor", "model": "json-file", "attributes": {"path": str(capture_dir / "c.json")}}]
    return robot_config(capture_dir, comps, sync_disabled=True, tags=["base"],
                        capture_control_sensor={"name": "ctl", "key": KEY})


async def test_overrides_touch_only_changed_collectors_and_bad_readings_revert_once(tmp_path, autojump_clock, caplog):
    agent = Agent(parse_config(json.dumps(_config(tmp_path / "cap"))), control=False)
    control = _Control()
    caplog.set_level(logging.WARNING, logger="capsync.capture_control")
    with inline_blocking():
        async with trio.open_nursery() as n:
            await n.start(agent.run)
            agent._registry.add(control)
            await trio.sleep(1)
            wheel, env = (agent.collectors[k] for k in sorted(agent.collectors))  # encoder/..., sensor/...
            control.reading = {KEY: [{"resource_name": "wheel", "method": "TicksCount", "capture_frequency_hz": 20}]}
            await trio.sleep(0.5)
            assert sorted(agent.collectors.values(), key=lambda c: c.name) == [wheel, env]  # rate changed in place
            assert wheel.plan.frequency_hz == 20 and env.plan.frequency_hz == 5
            control.reading = {KEY: [{"resource_name": "env", "method": "Readings", "tags": ["t2"]}]}
            await trio.sleep(0.5)
            assert agent.collectors[wheel.name] is wheel and wheel.plan.frequency_hz == 1  # back to the config
            assert agent.collectors[env.name] is not env and agent.collectors[env.name].plan.tags == ("t2",)
            # An edit of the file keeps the overrides in force on top of the new config.
            edited = _config(tmp_path / "cap")
            edited["components"][1]["service_configs"][0]["attributes"]["capture_methods"][0]["capture_frequency_hz"] = 2
            await agent.apply_config(parse_config(json.dumps(edited)))
            assert agent.collectors[env.name].plan.tags == ("t2",) and agent.collectors[wheel.name].plan.frequency_hz == 2
            for bad in ({KEY: "pause everything"}, {KEY: [{"resource_name": "env"}]}, RuntimeError("sensor unplugged")):
                control.reading = bad
                await trio.sleep(1)  # ten polls
                assert all(c.plan.tags is None for c in agent.collectors.values())
                assert agent.statistics().capture_control.last_error
            control.reading = {KEY: [{"resource_name": "nobody", "method": "Readings", "capture_frequency_hz": 0}]}
            await trio.sleep(1)
            stats = agent.statistics()
            n.cancel_scope.cancel()
    assert len(stats.collectors) == 2 and stats.failed == 0 and stats.capture_control.last_error is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len([w for w in warnings if "not a list of overrides" in w]) == 1  # two bad shapes in a row: one warning
    assert len([w for w in warnings if "cannot read" in w]) == 1 and len([w for w in warnings if "name no" in w]) == 1


def _write_atomically(path: Path, value: object) -> int:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
    return time.time_ns()


def test_acceptance_a_control_sensor_pauses_speeds_up_and_tags_a_running_agent(tmp_path: Path):
    cap = tmp_path / "cap"
    cap.mkdir()
    control_file = cap.parent / "control.json"
    cfg = _config(cap)
    cfg["components"][2]["attributes"]["path"] = str(control_file)
    cfg["services"][0]["attributes"]["max_file_age_secs"] = 0.5
    config = write_config(tmp_path / "robot.json", cfg)
    before = (config.read_bytes(), config.stat().st_mtime_ns)
    with ProcessKit(tmp_path) as kit:
        agent = kit.start_agent(config)
        time.sleep(2)
        t1 = _write_atomically(control_file, {KEY: [
            {"resource_name": "env", "method": "Readings", "capture_frequency_hz": 0},
            {"resource_name": "wheel", "method": "TicksCount", "capture_frequency_hz": 20, "tags": ["fast"]}]})
        time.sleep(3)
        t2 = _write_atomically(control_file, {})
        time.sleep(2.5)
        captured = agent.stop()
    assert (config.read_bytes(), config.stat().st_mtime_ns) == before
    assert not [r for r in log_lines(tmp_path / "agent.log") if r.get("level") in ("WARNING", "ERROR")]
    files = [read_capture(p) for p in capture_files(cap)]
    env = sorted(r.requested_ns for f in files if f.header.resource_name == "env" for r in f.records)
    wheel = sorted((r.requested_ns, f.header.tags) for f in files if f.header.resource_name == "wheel" for r in f.records)
    # Nothing lost or duplicated: the files hold exactly what the agent says it captured, once each.
    assert len(env) + len(wheel) == captured and len(set(env)) == len(env) and len({t for t, _ in wheel}) == len(wheel)
    second = 1_000_000_000
    assert env[0] < t1 and not [t for t in env if t1 + second < t < t2]  # paused within a second
    assert [t for t in env if t < t2][-1] < t1 + second and [t for t in env if t > t2][0] < t2 + second  # resumed
    fast = [t for t, tags in wheel if tags == ("fast",)]
    assert fast and fast[0] < t1 + second and fast[-1] < t2 + second  # 20 Hz and tagged within a second
    gaps = [b - a for a, b in zip(fast, fast[1:])]
    assert len(fast) >= 35 and max(gaps) < 0.06 * second  # 20 Hz: one every 50 ms
    slow_before = [t for t, tags in wheel if tags == ("base",) and t < t1]
    slow_after = [t for t, tags in wheel if tags == ("base",) and t > t2]
    assert slow_before and slow_after and slow_after[0] < t2 + second  # back to the config within a second
    assert all(b - a > 0.9 * second for a, b in zip(slow_after, slow_after[1:]))
