"""`capsync backlog`: what waits to sync and what was set aside (with why), and `--retry-failed`, on real
files, with a real agent process syncing to a real cloud process while the retry runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from capsync.runtime.backlog import list_set_aside, read_backlog, retry_set_aside
from capsync.runtime.salvage import salvage_damaged_tail
from capsync.runtime.sync_files import FAILED_DIR, SET_ASIDE_REPORT
from tests.processkit import REPO, CloudReader, ProcessKit, add_part, agent_config, old_file, wait_for
from tests.test_cloud_support import tabular_capture

READINGS = ("sensor", "env", "Readings")


def backlog_cli(*args: str) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "capsync", "backlog", *args], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    return out.returncode, out.stdout + out.stderr


def report(path: Path, **fields: str) -> None:
    path.with_name(path.name + SET_ASIDE_REPORT).write_text(json.dumps(fields))


def test_backlog_lists_and_retry_puts_back_while_the_agent_runs(tmp_path: Path) -> None:
    capture, extra = tmp_path / "capture", tmp_path / "extra"
    failed = capture / FAILED_DIR
    # Set aside earlier, for a cause since fixed (stand-ins for an older cloud's refusals): a capture file
    # of this part, and a plain file from an additional sync path, each with its report.
    good_id, good = tabular_capture(failed, part="part-a", n=7, resource=READINGS)
    good_path = next((failed / "/".join(READINGS)).glob("*.capture"))
    report(good_path, error="HTTP 422: refused by an older cloud", set_aside_at="2026-01-01T00:00:00Z")
    plain_sha = old_file(failed / "additional" / "logs" / "run.log", 3000)
    report(failed / "additional" / "logs" / "run.log", error="HTTP 422: refused", file=str(extra / "logs" / "run.log"))
    # Waiting now: a capture file of another part, which the cloud will refuse (and refuse again after a retry).
    tabular_capture(capture, part="another-part", n=3, resource=READINGS)
    with ProcessKit(tmp_path) as kit:
        cloud = kit.start_cloud()
        secret = add_part(cloud.data_dir)
        config = agent_config(tmp_path, cloud.url, secret, sensor_hz=0, camera_hz=0, interval_mins=0.01,
                              sync_paths=[extra])

        code, out = backlog_cli(str(config), "--json")
        assert code == 0, out
        listed = json.loads(out)
        assert listed["waiting_files"] == 1 and listed["waiting"][0]["source"] == "sensor/env/Readings"
        assert listed["waiting_bytes"] == listed["waiting"][0]["bytes"] > 0
        aside = {Path(s["path"]).name: s for s in listed["set_aside"]}
        assert aside[good_path.name]["why"] == "HTTP 422: refused by an older cloud"
        assert aside[good_path.name]["back_to"] == str(capture / "/".join(READINGS) / good_path.name)
        assert aside["run.log"]["kind"] == "file" and aside["run.log"]["back_to"] == str(extra / "logs" / "run.log")

        agent = kit.start_agent(config)
        refused = wait_for(lambda: [s for s in list_set_aside(capture, [extra])
                                    if s.kind == "capture" and s.path != good_path], 30, "the agent to set aside the "
                           "other part's file")
        assert "names part 'another-part'" in refused[0].why and refused[0].set_aside_at

        code, out = backlog_cli(str(config), "--retry-failed")  # while the agent runs
        assert code == 0, out
        assert "retry: 3 files put back to sync" in out, out
        with CloudReader(cloud.url, secret) as reader:
            def committed() -> list[dict]:
                files = reader.files()
                return files if {good_id} <= {f["file_id"] for f in files} and len(files) >= 2 else []
            files = wait_for(committed, 30, "the retried files to be committed")
            assert sorted(f["kind"] for f in files) == ["capture", "file"]
            assert [f["sha256"] for f in files if f["kind"] == "file"] == [plain_sha]
            rows = reader.pages("/v1/tabular")
            assert sorted(r["record_index"] for r in rows if r["file_id"] == good_id) == list(range(7))
        # The other part's file was refused again: aside again, with a new report, and not lost.
        again = wait_for(lambda: [s for s in list_set_aside(capture, [extra]) if "another-part" in s.why], 30,
                         "the refused file to be set aside again")
        assert len(again) == 1 and again[0].path.exists()
        assert not good_path.exists() and not (extra / "logs" / "run.log").exists()  # synced, then deleted
        agent.stop()
    after = read_backlog([capture], [extra])
    assert after.files == 0 and [s.kind for s in after.set_aside] == ["capture"]


def test_retry_never_overwrites_and_keeps_what_cannot_sync(tmp_path: Path) -> None:
    capture = tmp_path / "capture"
    failed = capture / FAILED_DIR
    home = capture / "/".join(READINGS)
    # A file whose name is taken again in the capture dir: never overwritten.
    fid, _ = tabular_capture(failed, part="p", n=2, resource=READINGS)
    aside = next((failed / "/".join(READINGS)).glob("*.capture"))
    home.mkdir(parents=True)
    (home / aside.name).write_bytes(b"other bytes")
    # Not a capture file: no retry can help it. A plain file from a path no longer synced: its place unknown.
    (failed / "junk.capture").write_bytes(b"\x00garbage")
    (failed / "additional").mkdir()
    (failed / "additional" / "x.bin").write_bytes(b"x")
    report(failed / "additional" / "x.bin", error="refused", file=str(tmp_path / "gone" / "x.bin"))
    # A damaged tail cut off a capture file: listed with its report, never retried.
    _, data = tabular_capture(tmp_path / "src", part="p", n=3, resource=READINGS)
    damaged = next((tmp_path / "src").rglob("*.capture"))
    with open(damaged, "ab") as f:
        f.write(os.urandom(40))
    assert salvage_damaged_tail(damaged, failed, "sensor/env/Readings/d.capture") is not None

    outcomes = {o.file.path.name: o for o in retry_set_aside(capture, [tmp_path / "extra"])}
    assert not any(o.put_back for o in outcomes.values())
    assert "exists already" in outcomes[aside.name].detail and (home / aside.name).read_bytes() == b"other bytes"
    assert "no retry can help" in outcomes["junk.capture"].detail
    assert "not under an additional_sync_path" in outcomes["x.bin"].detail
    assert "damaged tail" in outcomes["d.capture.damaged-tail"].file.why
    assert "from byte" in outcomes["d.capture.damaged-tail"].file.why
    assert all(p.exists() for p in (aside, failed / "junk.capture", failed / "additional" / "x.bin"))

    (home / aside.name).unlink()  # the clash is gone: now it goes back, under its own name and id
    mtime = aside.stat().st_mtime_ns
    put_back = [o for o in retry_set_aside(capture) if o.put_back]
    assert [o.file.path for o in put_back] == [aside] and (home / aside.name).stat().st_mtime_ns == mtime
    assert not aside.exists()
    code, out = backlog_cli("--help")
    assert code == 0 and "--retry-failed" in out
    started = time.monotonic()
    assert read_backlog([capture], []).files == 1 and time.monotonic() - started < 30
