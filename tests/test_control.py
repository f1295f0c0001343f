"""The control endpoint on a real socket, `capsync status` / `capsync sync` against a running agent
process, and conditional sync through the selective syncer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from capsync.actors.agent import Agent
from capsync.runtime import rpc
from capsync.runtime.config import parse_config
from tests.cloudkit import InProcessCloud
from tests.helpers import capture_files, fake_component, free_port, robot_config
from tests.processkit_control import running_agent


def _config(tmp_path: Path, secret: str, url: str, **dm) -> dict:
    comps = [fake_component("env", "sensor", [{"method": "Readings", "capture_frequency_hz": 20}]),
             {"name": "gate", "type": "sensor", "model": "selective-syncer",
              "attributes": {"flag_file": str(tmp_path / "should-sync")}}]
    cfg = robot_config(tmp_path / "cap", comps, sync_interval_mins=60, **dm)
    cfg["cloud"] = {"id": "part-a", "secret": secret, "app_address": url}
    return cfg


async def test_status_sync_and_do_command_over_the_endpoint(tmp_path):
    cloud = InProcessCloud(tmp_path / "cloud")
    secret = await cloud.add_part("part-a")
    cfg = _config(tmp_path, secret, cloud.url)
    agent = Agent(parse_config(json.dumps(cfg)), cloud_transport=cloud.transport)
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        await trio.sleep(0.5)
        async with rpc.connect(cfg["network"]["bind_address"]) as client:
            status = await client.call("status")
            assert status["part_id"] == "part-a" and status["collectors"][0]["target_hz"] == 20
            result = await client.call("sync")
            assert result["uploaded"] >= 1 and "uploaded" in result["summary"]
            out = await client.call("DoCommand", command={"sync": True, "status": True})
            assert set(out) == {"sync", "status"}
            with pytest.raises(rpc.RpcError, match="UnknownMethod"):
                await client.call("nope")
            with pytest.raises(rpc.RpcError, match="BadCommand"):
                await client.call("DoCommand", command={"reboot": True})
        n.cancel_scope.cancel()


async def test_selective_syncer_false_skips_passes_and_the_backlog_waits(tmp_path):
    cloud = InProcessCloud(tmp_path / "cloud")
    secret = await cloud.add_part("part-a")
    cfg = _config(tmp_path, secret, cloud.url, selective_syncer_name="gate")
    flag = tmp_path / "should-sync"
    flag.write_text("false")
    agent = Agent(parse_config(json.dumps(cfg)), cloud_transport=cloud.transport, control=False)
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        await trio.sleep(0.3)
        await agent.finish_open_files()
        before = agent.statistics().sync.skipped_by_selective_syncer  # the pass at start was skipped too
        skipped = await agent.sync.sync_now()
        assert skipped.skipped and skipped.uploaded == 0
        assert capture_files(tmp_path / "cap")  # the backlog waits, and status shows it
        assert agent.statistics().sync.skipped_by_selective_syncer == before + 1
        assert agent.statistics().sync.backlog_files == skipped.waiting == len(capture_files(tmp_path / "cap"))
        flag.write_text("true")
        done = await agent.sync.sync_now()
        assert done.skipped is None and done.uploaded >= 1
        n.cancel_scope.cancel()


def test_non_loopback_endpoint_requires_the_secret(tmp_path):
    # 0.0.0.0 is not loopback, so even a local client must present the part secret
    async def main():
        cfg = robot_config(tmp_path / "cap", [], sync_disabled=True)
        port = free_port()
        cfg["network"] = {"bind_address": f"0.0.0.0:{port}"}
        agent = Agent(parse_config(json.dumps(cfg)))
        async with trio.open_nursery() as n:
            await n.start(agent.run)
            with trio.fail_after(5):
                while agent.control.bound_port is None:
                    await trio.sleep(0.02)
            with pytest.raises(rpc.RpcError, match="Refused"):
                async with rpc.connect(f"127.0.0.1:{port}") as client:
                    await client.call("status")
            async with rpc.connect(f"127.0.0.1:{port}", secret="s3cret") as client:
                assert (await client.call("status"))["part_id"] == "test-part"
            n.cancel_scope.cancel()

    trio.run(main)


def test_capsync_status_and_sync_commands_against_a_running_agent(tmp_path):
    cfg = robot_config(tmp_path / "cap", [fake_component("env", "sensor", [
        {"method": "Readings", "capture_frequency_hz": 10}])], sync_disabled=True)
    with running_agent(tmp_path, cfg) as config_path:
        exe = [sys.executable, "-m", "capsync"]
        text = subprocess.run([*exe, "status", str(config_path)], capture_output=True, text=True, timeout=30)
        assert text.returncode == 0, text.stderr
        assert "collector sensor/env/Readings" in text.stdout and "revision 1" in text.stdout
        js = subprocess.run([*exe, "status", str(config_path), "--json"], capture_output=True, text=True, timeout=30)
        assert json.loads(js.stdout)["collectors"][0]["target_hz"] == 10
        sync = subprocess.run([*exe, "sync", str(config_path)], capture_output=True, text=True, timeout=30)
        assert sync.returncode == 1 and "SyncOff" in sync.stderr and "sync_disabled" in sync.stderr
    gone = subprocess.run([sys.executable, "-m", "capsync", "status", str(config_path)],
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and "is `capsync run` running" in gone.stderr
