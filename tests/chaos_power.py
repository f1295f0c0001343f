"""Real power cuts for the chaos run (tests/chaoskit.py): the agent's capture dir and the cloud's
data dir each on a `capsync.testing.PowerCutFS`, and the honest account of what a cut may forget.

A power cut of a process is: SIGKILL every process whose files live on that mount, cut the mount's
power (`PowerCutFS.cut`, sometimes with a torn write per file), mount it again from what was
durable, and start the process again. What each cut had to keep:

- **the agent's disk**: every reading taken at least `fsync_interval_secs` before the cut
  (docs/agent.md, "Durability bound"): the agent fsyncs each open file every interval and every
  file it finishes. A reading the cut forgot that was taken *less* than the interval before it is
  an **allowed loss**; an older one is a **must-survive loss** (a bug), named in the report.
- **the cloud's disk**: every file it acknowledged as committed (its `file committed` log line,
  written before the answer goes out) is still listed after the cut, with its bytes on disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from capsync.testing import PowerCutFS
from tests.processkit import PART, Record, local_records

Key = tuple[str, int]


def dir_readings(capture_dir: Path) -> dict[Key, Record]:
    """Every good record of every local capture file, by key (set-aside files included)."""
    return {r.key: r for r in local_records(capture_dir)}


@dataclass(frozen=True)
class CutLosses:
    """The readings one cut of the agent's disk forgot, split by the durability bound."""

    allowed: dict[Key, Record]  # taken less than the bound before the cut
    must_survive: dict[Key, Record]  # older: the bound promised them
    oldest_must_survive_s: float  # age at the cut of the oldest must-survive reading lost (0: none)


def classify_cut_losses(before: dict[Key, Record], after: dict[Key, Record], cut_ns: int,
                        bound_s: float) -> CutLosses:
    """Split the readings in `before` (the live files right before the cut) and not in `after`
    (the durable files right after it) by their age at the cut (`cut_ns`) against `bound_s`."""
    allowed, late = {}, {}
    bound_ns = round(bound_s * 1e9)
    for key, r in before.items():
        if key in after:
            continue
        (allowed if cut_ns - r.received_ns < bound_ns else late)[key] = r
    oldest = max(((cut_ns - r.received_ns) / 1e9 for r in late.values()), default=0.0)
    return CutLosses(allowed, late, oldest)


@dataclass(frozen=True)
class PowerCut:
    """One power cut in a chaos run."""

    cycle: int
    target: str  # "agent", "agent during start-up", "cloud", "both"
    torn: bool
    bytes_forgotten: int  # unsynced bytes the cut forgot, over both disks
    readings_allowed: int
    readings_must_survive: int
    commits_lost: int  # cloud: acknowledged commits missing after the cut


class Disks:
    """The two power-cut mounts of a chaos run: `capture_dir` over `root/disks/agent` and `cloud_dir`
    over `root/disks/cloud`; their file system processes log to `logs/`."""

    def __init__(self, root: Path, capture_dir: Path, cloud_dir: Path, logs: Path) -> None:
        self.agent = PowerCutFS(root / "disks" / "agent", capture_dir, log=logs / "powercut-agent.log")
        self.cloud = PowerCutFS(root / "disks" / "cloud", cloud_dir, log=logs / "powercut-cloud.log")

    def mount(self) -> None:
        """Mount both."""
        self.agent.mount()
        self.cloud.mount()

    def close(self) -> None:
        """Unmount both (keeping everything)."""
        self.agent.close()
        self.cloud.close()


class CommitLog:
    """The cloud's acknowledged commits, read incrementally from its JSON log files."""

    def __init__(self) -> None:
        self.committed: dict[str, int] = {}  # file id -> records
        self._offsets: dict[Path, int] = {}

    def read(self, logs: list[Path]) -> dict[str, int]:
        """Add the `file committed` lines logged since the last read; returns every commit so far."""
        for log in logs:
            start = self._offsets.get(log, 0)
            try:
                with log.open("rb") as f:
                    f.seek(start)
                    data = f.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1  # a line being written is read next time
            self._offsets[log] = start + end
            for line in data[:end].splitlines():
                if b'"file committed"' not in line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("msg") == "file committed" and rec.get("file_id"):
                    self.committed[rec["file_id"]] = int(rec.get("records") or 0)
        return self.committed


def missing_commits(acknowledged: dict[str, int], listed: list[dict], cloud_dir: Path) -> list[str]:
    """What of `acknowledged` (file id -> records) the cloud no longer holds: not listed as committed,
    listed with other record counts, or whose bytes are gone from its data dir (docs/cloud.md's
    layout: files/<part>/<file id>). Expired files (retention) are not expected to have bytes."""
    by_id = {f["file_id"]: f for f in listed}
    out = []
    for file_id, records in sorted(acknowledged.items()):
        f = by_id.get(file_id)
        if f is None:
            out.append(f"{file_id}: acknowledged as committed, not listed after the cut")
        elif f["kind"] == "capture" and (f["records"] or 0) != records:
            out.append(f"{file_id}: acknowledged with {records} records, listed with {f['records']}")
        elif not f.get("expired") and not (cloud_dir / "files" / PART / file_id).is_file():
            out.append(f"{file_id}: listed as committed, but its bytes are gone from {cloud_dir / 'files' / PART}")
    return out
