"""DoCommand capture: any resource type (generic components and services included) captures
`DoCommand` with its additional_params as the command, and the answer is a tabular reading."""

from __future__ import annotations

import json

import trio

from capsync.actors.agent import Agent
from capsync.runtime.blocking import inline_blocking
from capsync.runtime.capture_file import read_capture
from capsync.runtime.config import parse_config
from capsync.runtime.resources.registry import register_model, unregister_model
from tests.helpers import capture_files, fake_component, robot_config


class Battery:
    """A custom model of a service type capsync has no methods for, answering only do_command."""

    type, model = "power", "battery"

    def __init__(self, name: str, attributes: dict, lookup) -> None:
        self.name = name

    async def capture(self, method: str, params: dict) -> dict:
        raise AssertionError("DoCommand capture must call do_command, not capture")

    async def do_command(self, command: dict) -> dict:
        return {"volts": 12.5, "asked": command}

    async def close(self) -> None:
        pass


class NoCommands(Battery):
    do_command = None


def _service(name: str, type_: str, model: str, command: dict) -> dict:
    return {"name": name, "type": type_, "model": model, "service_configs": [{"type": "data_manager", "attributes": {
        "capture_methods": [{"method": "DoCommand", "capture_frequency_hz": 4, "additional_params": command}]}}]}


async def test_any_type_captures_do_command_as_a_tabular_reading(tmp_path, autojump_clock):
    register_model("power", "battery", Battery)
    register_model("power", "mute", NoCommands)
    try:
        comps = [fake_component("arm1", "generic", [{"method": "DoCommand", "capture_frequency_hz": 4,
                                                     "additional_params": {"get": "temperature"}}])]
        cfg = robot_config(tmp_path, comps, sync_disabled=True)
        cfg["services"] += [_service("bat", "rdk:service:power", "battery", {"get": "volts"}),
                            _service("mute", "power", "mute", {}),
                            _service("cam-dc", "camera", "fake", {"zoom": 2})]
        agent = Agent(parse_config(json.dumps(cfg)), control=False)
        with inline_blocking():
            async with trio.open_nursery() as n:
                await n.start(agent.run)
                await trio.sleep(1.1)
                stats = {c.name.split()[1]: c for c in agent.statistics().collectors}
                n.cancel_scope.cancel()
    finally:
        unregister_model("power", "battery")
        unregister_model("power", "mute")
    assert stats["power/mute/DoCommand"].failed == 5 and "has no do_command" in stats["power/mute/DoCommand"].last_error
    by_resource = {}
    for path in capture_files(tmp_path):
        c = read_capture(path)
        assert c.header.kind.value == "tabular" and c.header.method == "DoCommand"
        by_resource.setdefault(c.header.resource_name, []).extend(c.records)
        assert c.header.params == {"arm1": {"get": "temperature"}, "bat": {"get": "volts"},
                                   "cam-dc": {"zoom": 2}}[c.header.resource_name]
    assert sorted(by_resource) == ["arm1", "bat", "cam-dc"] and all(len(r) == 5 for r in by_resource.values())
    assert by_resource["bat"][0].payload == {"volts": 12.5, "asked": {"get": "volts"}}
    assert [r.payload["command"] for r in by_resource["arm1"]] == [{"get": "temperature"}] * 5
