"""`capsync status` and `capsync sync` tell the truth (issue 16 item 12), on real agent processes: a bad
edit still shows the running agent and its rejected revision; another agent on the address is named, not
shown; a blocking selective syncer shows the backlog and "never uploaded"; a wrong secret reads as such;
a refused disk shows DROPPED; `sync` exits 1 when the pass did not upload everything; reloads name the
collectors they change."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from capsync.actors.status_line import status_line
from capsync.actors.status_report import render_status
from tests.helpers import fake_component, robot_config, write_config
from tests.processkit import REPO, ProcessKit, add_part, agent_config, log_lines, wait_for


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "capsync", *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO)


def _status(config: Path) -> dict:
    out = _cli("status", "--json", str(config))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_blocked_agent_is_shown_as_it_is(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.write_text("false")
    sensor = fake_component("env", "sensor", [{"method": "Readings", "capture_frequency_hz": 20}])
    cfg = robot_config(tmp_path / "capture", [sensor], sync_interval_mins=0.01, max_file_age_secs=0.5,
                       selective_syncer_name="gate")
    cfg["services"].append({"name": "gate", "type": "sensor", "model": "selective-syncer",
                            "attributes": {"flag_file": str(gate)}})
    cfg["cloud"] = {"id": "p", "secret": "s", "app_address": "http://127.0.0.1:9"}
    config = write_config(tmp_path / "robot.json", cfg)
    with ProcessKit(tmp_path) as kit:
        kit.start_agent(config)
        status = wait_for(lambda: (s := _status(config))["sync"]["backlog_files"] >= 3 and s, 20, "a backlog")
        assert status["sync"]["last_upload_ns"] is None and status["sync"]["last_pass"]["skipped"]
        text = _cli("status", str(config)).stdout
        assert "backlog" in text and "skipped: the selective syncer says should_sync is false" in text
        assert "last upload: never" in text

        synced = _cli("sync", str(config))  # a skipped pass is not a success
        assert synced.returncode == 1 and "skipped" in synced.stdout, synced

        # A bad edit: the agent keeps its last good revision, and status shows it and the rejection.
        good = config.read_text()
        config.write_text(good.replace('"max_file_age_secs": 0.5', '"max_file_age_secs": "soon"'))
        wait_for(lambda: (_status(config).get("config") or {}).get("rejected"), 20, "the edit to be rejected")
        shown = _cli("status", str(config))
        assert shown.returncode == 0, shown.stderr
        assert "has problems now" in shown.stderr and "rejected: services[0].attributes.max_file_age_secs" in shown.stdout
        config.write_text(good)

        # Another config naming the same address is not this agent: say so instead of showing it.
        other = tmp_path / "other" / "robot.json"
        other.parent.mkdir()
        other.write_text(good)
        wrong = _cli("status", str(other))
        assert wrong.returncode == 1 and f"runs {config}" in wrong.stderr and "another agent" in wrong.stderr


def test_a_wrong_secret_reads_as_a_wrong_secret(tmp_path: Path) -> None:
    with ProcessKit(tmp_path) as kit:
        add_part(tmp_path / "cloud")
        cloud = kit.start_cloud()
        config = agent_config(tmp_path, cloud.url, "not-the-secret", camera_hz=0, max_file_age_secs=0.5)
        kit.start_agent(config)
        status = wait_for(lambda: (s := _status(config))["sync"]["credentials_refused"] and s, 20, "a refusal")
        assert "check cloud.id and cloud.secret" in status["sync"]["cloud_error"]
        assert "CLOUD REFUSES THIS PART'S SECRET" in _cli("status", str(config)).stdout
        assert _cli("sync", str(config)).returncode == 1


def test_readings_the_disk_refuses_show_as_dropped(tmp_path: Path) -> None:
    capture = tmp_path / "capture"
    capture.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(capture)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
    try:
        sensor = fake_component("env", "sensor", [{"method": "Readings", "capture_frequency_hz": 20}])
        cfg = robot_config(capture, [sensor], sync_disabled=True)
        config = write_config(tmp_path / "robot.json", cfg)
        with ProcessKit(tmp_path) as kit:
            kit.start_agent(config)
            status = wait_for(lambda: (s := _status(config))["collectors"][0]["dropped"] >= 5 and s, 20, "drops")
            text = _cli("status", str(config)).stdout
            assert "DROPPED" in text and "the disk refused" in text, text
            assert status["collectors"][0]["failed"] == 0  # not a resource failure: the disk's
    finally:
        subprocess.run(["umount", "-l", str(capture)], check=False)


def test_a_reload_names_each_collector_it_changes(tmp_path: Path) -> None:
    def sensor(name: str, hz: float) -> dict:
        return fake_component(name, "sensor", [{"method": "Readings", "capture_frequency_hz": hz}])

    cfg = robot_config(tmp_path / "capture", [sensor("a", 5), sensor("b", 5)], sync_disabled=True)
    config = write_config(tmp_path / "robot.json", cfg)
    with ProcessKit(tmp_path) as kit:
        kit.start_agent(config)
        cfg["components"] = [sensor("a", 10), sensor("c", 5)]
        write_config(config, cfg)
        def changes() -> set:
            return {(r["msg"], r["collector"]) for r in log_lines(tmp_path / "agent.log")
                    if r.get("msg", "").startswith("config change:")}

        wait_for(lambda: len(changes()) >= 3, 20, "a line per changed collector")
        lines = changes()
        assert lines == {("config change: collector rate changed", "collector sensor/a/Readings"),
                         ("config change: collector added", "collector sensor/c/Readings"),
                         ("config change: collector removed", "collector sensor/b/Readings")}


def test_status_line_says_why_nothing_goes_up() -> None:
    from capsync.actors.agent_stats import AgentStats
    from capsync.actors.collector import CollectorStats
    from capsync.actors.sync_scheduler import PassResult, SyncStats

    c = CollectorStats("collector sensor/s/Readings", 1, None, 3, 0, 0, 0, 0, 0, 0, None, "ENOSPC", dropped=7)
    sync = SyncStats("http://c", 4, 400, 0, 0, 0, 0, 2, 2, PassResult(1, 0, 0, 0, 0, 4, None, skipped="no"), None)
    stats = AgentStats("p", "/cap", (c,), (), 0, (), sync, None)
    line = status_line(stats)
    assert "DROPPED 7" in line and "last upload never (paused by the selective syncer)" in line
    refused = SyncStats("http://c", 4, 400, 0, 0, 0, 0, 2, 0, None, "HTTP 401", credentials_refused=True)
    assert "refuses this part's secret" in status_line(AgentStats("p", "/cap", (c,), (), 0, (), refused, None))
    assert "DROPPED 7 readings" in render_status({"part_id": "p", "capture_dir": "/cap", "collectors": [
        {"name": c.name, "target_hz": 1, "captured": 3, "failed": 0, "late_ticks": 0, "missed_ticks": 0,
         "dropped": 7}], "sync": None, "sync_off_reason": "off"})
