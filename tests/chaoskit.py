"""Process-level chaos: the cloud and the agent as real processes, a fault proxy between them,
random SIGKILLs of both, simulated power loss, then a drain and an exact account of every reading.

Shared by scripts/chaos.py (the long run) and tests/test_chaos.py (the short one). Everything is
synchronous: subprocesses (tests.processkit), the fault proxy on its own thread
(capsync.testing.ProxyThread), and one background thread that keeps reading the capture dir
(tests/chaos_ledger.py, which keeps the ground truth this module counts with).

What one run does
-----------------
`capsync cloud serve` listens on loopback; the agent (`capsync run`: a fake sensor at 20 Hz, a
fake motor at 10 Hz, a fake camera at 2 Hz with several images per file) syncs to it through the
fault proxy. Each cycle (about `cycle_seconds` long) draws, at random moments:

- one process scenario from a shuffled bag: nothing; SIGKILL of the agent; SIGKILL of the agent
  with power loss; SIGKILL of the agent during its start-up (while it recovers `.prog` files),
  sometimes with power loss; SIGTERM of the agent (must exit 0); SIGKILL of the cloud; both;
- one network fault from another bag: nothing; cut every connection (RST, or a clean close);
  partition; stall; slow link (throttle); reset mid-body (`reset_after_upstream(n)` with a
  random n); dropped answers (answers throttled to a trickle, then every connection cut, so a
  commit the cloud made is never acknowledged to the agent).

With `ChaosSettings.power_cuts` the capture dir and the cloud's data dir each live on a
PowerCutFS, and the process bag also holds real power cuts of the agent (sometimes during its
start-up), the cloud, or both (tests/chaos_power.py: what a cut may forget and how it is counted).

Killed processes come back after a random downtime (the cloud on the same port and data dir).
Power loss is simulated only while the agent is dead: each `.prog` file is, with some chance,
truncated or zero-filled from a random offset (usually within the last 2 KB, sometimes
anywhere, header included, which makes the agent set the file aside as `.corrupt`).

At the end every fault is lifted, both processes run, and the run waits until no capture file
created before the drain began is left (the backlog is empty); then it stops the agent with
SIGTERM (which finishes its open files) and compares.

How readings are counted
------------------------
A reading is identified by its key (file_id, record index), which is how the cloud keys rows.
The agent's own count is lost on every SIGKILL, so ground truth is built from observation:

- **captured**: every key ever observed anywhere: in a local `.prog`/`.capture` file (a
  background thread reads the capture dir every `scan_interval_s` while the agent runs, and the
  whole dir is read after each kill and right before each simulated power loss), in the cloud's
  file list (read every few cycles; a committed file of n records stands for keys 0..n-1), and
  in the final cloud and local contents. Only the good prefix of a file counts (a record torn by
  a SIGKILL was never captured: docs/agent.md's durability bound).
- **destroyed by power loss**: for each damaged `.prog`, the keys its good prefix held right
  before the damage minus those it holds right after (both read with the capture file reader,
  which is what recovery keeps). Not counted as lost.
- **allowed losses** (real power cuts): readings a cut forgot that were taken less than
  `fsync_interval_secs` before it; older ones it forgot are must-survive losses (listed), and
  stay counted as lost unless the cloud has them.
- **committed**: distinct keys in the cloud's query API (tabular rows and binary items) at the end.
- **still local**: keys in local capture files at the end (set-aside ones included; `.corrupt`
  files hold none).
- **lost** = captured - (committed | still local | destroyed | allowed losses).
- **duplicated** = rows listed more than once under one key in the cloud, plus readings (same
  capture method and requested time) present in the cloud under more than one key.
- **deleted by the disk rule**: the governor runs with its defaults and never fires on a disk
  with room; the files it deleted are read from the agent logs (always 0 in this setup).

Informational, not part of the verdict: keys committed and still local at the end (a file the
agent would re-declare; the cloud answers "committed" without storing twice), files set aside,
and holes in a capture method's 1/f grid: ticks no one ever saw. A hole inside a file (consecutive
record indices) is a tick the collector skipped, since nothing is missing from the file; a hole
between two files is usually the same (the collector held up while finishing its file at a sync
pass), but could also be a whole file that vanished before any read of the capture dir saw it,
so holes are listed with their files for a closer look.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

from capsync.runtime.capture_file import CaptureFormatError, read_capture
from capsync.runtime.faultproxy import ProxyThread
from tests.chaos_ledger import (
    Hole, Key, Ledger, LocalScanner, PowerLossCut, Seen, damage_prog, file_keys, grid_holes,
)
from tests.chaos_power import CommitLog, Disks, PowerCut, classify_cut_losses, dir_readings, missing_commits
from tests.helpers import fake_component, robot_config, write_config
from tests.processkit import (
    PART, AgentProcess, CloudProcess, CloudReader, ProcessKit, add_part, local_capture_files, log_lines,
    set_aside_files, wait_unchanged,
)

SENSOR = "sensor/env/Readings"
MOTOR = "motor/wheel/Position"
CAMERA = "camera/cam/ReadImage"
#: Capture methods of the chaos agent and their periods (ns), for the grid check.
PERIODS = {SENSOR: 50_000_000, MOTOR: 100_000_000, CAMERA: 500_000_000}

#: Process scenarios and their weights in the bag each cycle draws one from.
PROCESS_SCENARIOS = {
    "none": 2, "agent_kill": 3, "agent_power_loss": 3, "agent_kill_at_start": 2, "agent_sigterm": 1,
    "cloud_kill": 3, "both_kill": 2,
}
#: Scenarios added to that bag when the run has real power cuts (ChaosSettings.power_cuts).
POWER_CUT_SCENARIOS = {"agent_power_cut": 3, "agent_power_cut_at_start": 1, "cloud_power_cut": 3, "both_power_cut": 2}
#: Power cut targets, in the order the report shows them.
POWER_CUT_TARGETS = ("agent", "agent during start-up", "cloud", "both")
#: Network faults and their weights in the bag each cycle draws one from.
NETWORK_FAULTS = {
    "none": 1, "cut": 2, "partition": 3, "stall": 2, "slow_link": 2, "reset_mid_body": 3, "drop_answers": 2,
}


# --- settings and results -----------------------------------------------------------------------


@dataclass
class ChaosSettings:
    """What a chaos run does: how many cycles, how long each, which seed drives the random choices."""

    cycles: int = 20
    seed: int = 1
    cycle_seconds: float = 3.0
    sync_interval_mins: float = 0.02  # a sync pass every 1.2 s
    scan_interval_s: float = 0.25
    cloud_snapshot_every: int = 5  # cycles between reads of the cloud's file list
    drain_timeout_s: float = 300.0
    power_loss_file_chance: float = 0.75  # chance that each open `.prog` is damaged in a power loss
    power_cuts: bool = False  # capture dir and cloud data dir on PowerCutFS, with real power cuts
    torn_chance: float = 0.5  # chance that a power cut tears the last unsynced write of each file
    fsync_interval_secs: float = 1.0  # the agent's, and so the durability bound of its open files


@dataclass
class Counts:
    """What happened during the cycles."""

    cycles: int = 0
    agent_kills: int = 0
    agent_kills_at_start: int = 0
    agent_sigterms: int = 0
    cloud_kills: int = 0
    power_losses: int = 0
    files_truncated: int = 0
    files_zero_filled: int = 0
    files_made_unreadable: int = 0  # damage reached the header: the agent sets the file aside as .corrupt
    proxy: Counter = field(default_factory=Counter)  # network fault -> times applied
    power_cuts: Counter = field(default_factory=Counter)  # POWER_CUT_TARGETS -> real power cuts
    torn_cuts: int = 0
    bytes_forgotten: int = 0  # unsynced bytes the power cuts forgot
    resets_fired: int = 0
    connections_cut: int = 0
    connections_refused: int = 0


@dataclass
class ChaosReport:
    """The outcome of a chaos run: counts, the account of every reading, and the verdict."""

    settings: ChaosSettings
    counts: Counts
    wall_s: float
    drain_s: float
    drained: bool
    captured: int
    first_seen: Counter  # where each captured key was first observed -> how many
    committed: int
    still_local: int
    lost: int
    duplicated_keys: int  # extra listings of one key in the cloud
    duplicated_readings: int  # extra keys holding one (method, requested time) in the cloud
    destroyed: int
    allowed_losses: int  # readings a real power cut forgot that the durability bound allowed it to
    cut_must_survive: list[str]  # readings a real power cut forgot that the bound promised (bugs)
    commits_lost: list[str]  # commits the cloud acknowledged and no longer held after a power cut
    power_cuts: list[PowerCut]
    deleted_by_disk_rule_files: int
    committed_and_local: int
    set_aside: int
    cloud_rows_short: int  # committed files whose listed rows are fewer than their record count
    holes: list[Hole]  # ticks no one saw (informational: see Hole.inside_a_file)
    cuts: list[PowerLossCut]
    lost_examples: list[str]
    duplicate_examples: list[str]
    problems: list[str]  # processes that exited on their own, bad exit codes, anomalies
    root: Path

    @property
    def duplicated(self) -> int:
        """Duplicated readings of any kind."""
        return self.duplicated_keys + self.duplicated_readings

    @property
    def first_seen_in_cloud(self) -> int:
        """Captured readings no read of the local files saw: first (and only) observed in the cloud."""
        return sum(n for where, n in self.first_seen.items() if where.startswith("cloud"))

    @property
    def ok(self) -> bool:
        """Nothing lost (beyond what power cuts were allowed to forget), nothing duplicated, no
        acknowledged commit lost, the backlog drained, and no process misbehaved."""
        return (self.lost == 0 and self.duplicated == 0 and not self.cut_must_survive and not self.commits_lost
                and self.drained and not self.problems)

    def table(self) -> str:
        """The report as an aligned two-column table."""
        c = self.counts
        faults = ", ".join(f"{k} {c.proxy[k]}" for k in NETWORK_FAULTS if k != "none")
        rows = [
            ("cycles", c.cycles),
            ("agent SIGKILLs", f"{c.agent_kills} (of which {c.agent_kills_at_start} during start-up)"),
            ("agent SIGTERMs (clean stop + restart)", c.agent_sigterms),
            ("cloud SIGKILLs", c.cloud_kills),
            ("partitions", c.proxy["partition"]),
            ("other proxy faults", faults.replace("partition " + str(c.proxy["partition"]) + ", ", "")),
            ("proxy: resets fired / connections cut / refused",
             f"{c.resets_fired} / {c.connections_cut} / {c.connections_refused}"),
            ("power losses (files truncated / zero-filled / made unreadable)",
             f"{c.power_losses} ({c.files_truncated} / {c.files_zero_filled} / {c.files_made_unreadable})"),
            *self._power_cut_rows(),
            ("readings captured", self.captured),
            ("  first seen in local files / only via the cloud",
             f"{self.captured - self.first_seen_in_cloud} / {self.first_seen_in_cloud}"),
            ("readings committed", self.committed),
            ("readings still local at the end", self.still_local),
            ("readings lost" + (" (must survive)" if self.settings.power_cuts else ""), self.lost),
            *([("readings lost within the durability bound (allowed)", self.allowed_losses),
               ("  must-survive readings a power cut forgot", len(self.cut_must_survive)),
               ("acknowledged commits lost by a cloud power cut", len(self.commits_lost))]
              if self.settings.power_cuts else []),
            ("readings duplicated", (f"{self.duplicated} ({self.duplicated_keys} keys listed twice, "
                                     f"{self.duplicated_readings} readings under two keys)")),
            ("readings deleted by the disk rule", f"0 ({self.deleted_by_disk_rule_files} files)"
             if not self.deleted_by_disk_rule_files else f"? ({self.deleted_by_disk_rule_files} files)"),
            ("readings destroyed by simulated power loss", self.destroyed),
            ("committed and still local at the end", self.committed_and_local),
            ("files set aside (failed/)", self.set_aside),
            ("committed files with rows missing", self.cloud_rows_short),
            ("grid: ticks never seen / largest hole / holes between files",
             f"{sum(h.missing for h in self.holes)} / {max((h.missing for h in self.holes), default=0)} / "
             f"{sum(not h.inside_a_file for h in self.holes)}"),
            ("drain", f"{self.drain_s:.1f} s" + ("" if self.drained else " (NOT drained)")),
            ("wall time", f"{self.wall_s:.1f} s ({self.wall_s / 60:.1f} min)"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"  {k:<{width}}  {v}" for k, v in rows]
        for title, items in (("lost", self.lost_examples), ("forgotten by a power cut though the bound promised them",
                                                            self.cut_must_survive),
                             ("acknowledged commits lost", self.commits_lost), ("duplicated", self.duplicate_examples),
                             ("problems", self.problems), ("grid holes", [str(h) for h in self.holes])):
            if items:
                lines.append(f"  {title}:")
                lines += [f"    {x}" for x in items[:20]]
        return "\n".join(lines)

    def _power_cut_rows(self) -> list[tuple[str, Any]]:
        if not self.settings.power_cuts:
            return []
        c = self.counts
        by_target = " / ".join(str(c.power_cuts[t]) for t in POWER_CUT_TARGETS)
        return [(f"power cuts ({' / '.join(POWER_CUT_TARGETS)})", f"{sum(c.power_cuts.values())} ({by_target})"),
                ("  torn / unsynced bytes forgotten", f"{c.torn_cuts} / {c.bytes_forgotten}")]


class _Bag:
    """Draws names in proportion to their weights, every name at least once per bag (shuffled)."""

    def __init__(self, weights: dict[str, int], rng: random.Random) -> None:
        self._weights = weights
        self._rng = rng
        self._items: list[str] = []

    def draw(self) -> str:
        """The next name."""
        if not self._items:
            self._items = [k for k, n in self._weights.items() for _ in range(n)]
            self._rng.shuffle(self._items)
        return self._items.pop()


# --- the run ------------------------------------------------------------------------------------


def chaos_config(root: Path, proxy_url: str, secret: str, interval_mins: float, fsync_interval_s: float = 1.0) -> Path:
    """Write `root/robot.json`: the chaos agent's three capture methods, syncing through `proxy_url`."""
    comps = [
        fake_component("env", "sensor", [{"method": "Readings", "capture_frequency_hz": 20}]),
        fake_component("wheel", "motor", [{"method": "Position", "capture_frequency_hz": 10}]),
        fake_component("cam", "camera", [{"method": "ReadImage", "capture_frequency_hz": 2,
                                          "additional_params": {"mime_type": "image/jpeg"}}],
                       width=640, height=480, jpeg_quality=90),
    ]
    cfg = robot_config(root / "capture", comps, sync_interval_mins=interval_mins, maximum_num_sync_threads=2,
                       max_binary_file_size_kb=128, fsync_interval_secs=fsync_interval_s)
    cfg["cloud"] = {"id": PART, "secret": secret, "app_address": proxy_url}
    return write_config(root / "robot.json", cfg)


class ChaosRun:
    """One chaos run under `root`. `run()` does everything and returns the ChaosReport;
    `say` gets one line per cycle and per phase (None: silent); `after_cycle(run)` is called after
    each cycle once both processes run again (tests use it to break things on purpose)."""

    def __init__(self, root: Path, settings: ChaosSettings, say: Callable[[str], None] | None = None,
                 after_cycle: Callable[[ChaosRun], None] | None = None) -> None:
        self.root = root
        #: Called after each cycle, once both processes run again (tests use it to break things on purpose).
        self.after_cycle = after_cycle
        self.s = settings
        self._say_fn = say
        self.rng = random.Random(settings.seed)
        self.counts = Counts()
        self.ledger = Ledger()
        self.cuts: list[PowerLossCut] = []
        self.power_cuts: list[PowerCut] = []
        self.cut_must_survive: list[str] = []
        self.commits_lost: list[str] = []
        self.commit_log = CommitLog()
        self.problems: list[str] = []
        self.capture_dir = root / "capture"
        self.cloud_dir = root / "cloud"
        self.logs = root / "logs"
        self.disks = Disks(root, self.capture_dir, self.cloud_dir, self.logs) if settings.power_cuts else None
        self.cycle = 0
        self._runs = Counter()
        self._t0 = time.monotonic()
        self.kit: ProcessKit
        self.proxy: ProxyThread
        self.cloud: CloudProcess
        self.agent: AgentProcess | None = None  # None only while down on purpose
        self._cloud_killed = False  # down on purpose
        self._acked_before_cut: dict[str, int] | None = None  # checked when the cloud comes back
        self._starting = False  # a power cut now hits an agent in its start-up
        self.reader: CloudReader
        self.config: Path

    # --- helpers ----------------------------------------------------------------------------------

    def say(self, msg: str) -> None:
        """Report progress, prefixed with the time since the run began."""
        if self._say_fn is not None:
            self._say_fn(f"[{time.monotonic() - self._t0:7.1f} s] {msg}")

    def _log(self, what: str) -> Path:
        self._runs[what] += 1
        return self.logs / f"{what}-{self._runs[what]:04d}.log"

    def _start_cloud(self, port: int = 0) -> CloudProcess:
        deadline = time.monotonic() + 15
        while True:
            cloud = CloudProcess(self.cloud_dir, self._log("cloud"), port)
            self.kit.procs.append(cloud)
            if cloud.wait_listening():
                return cloud
            cloud.proc.wait(timeout=10)
            if port == 0 or time.monotonic() >= deadline:
                raise AssertionError(f"cloud did not start on port {port}:\n{cloud.text()[-3000:]}")
            time.sleep(0.2)

    def _spawn_agent(self) -> AgentProcess:
        agent = AgentProcess(self.config, self._log("agent"))
        self.kit.procs.append(agent)
        return agent

    def _start_agent(self) -> None:
        self.agent = self._spawn_agent()
        self.agent.wait_running()

    def _agent_up(self) -> bool:
        return self.agent is not None and self.agent.alive()

    def _check_unexpected(self) -> None:
        """Note processes that exited although nobody stopped them."""
        if self.agent is not None and not self.agent.alive():
            self.problems.append(f"cycle {self.cycle}: agent exited on its own with code "
                                 f"{self.agent.proc.returncode}; log {self.agent.log}")
            self.agent = None
        if not self._cloud_killed and not self.cloud.alive():
            self.problems.append(f"cycle {self.cycle}: cloud exited on its own with code "
                                 f"{self.cloud.proc.returncode}; log {self.cloud.log}")
            self.cloud = self._start_cloud(self.cloud.port)

    # --- process events ---------------------------------------------------------------------------

    def kill_agent(self, power_loss: bool) -> str:
        """SIGKILL the agent (then, with `power_loss`, damage its `.prog` files)."""
        self._check_unexpected()
        if not self._agent_up():
            return "agent already down"
        assert self.agent is not None
        self.agent.kill()
        self.agent = None
        self.counts.agent_kills += 1
        self.scanner.scan("after kill")
        return "agent SIGKILL" + (self.power_loss() if power_loss else "")

    def kill_agent_at_start(self, power_loss: bool) -> str:
        """SIGKILL the agent, start it again and SIGKILL it within its first second (recovery, start-up)."""
        first = self.kill_agent(power_loss=False)
        agent = self._spawn_agent()
        time.sleep(self.rng.uniform(0.0, 1.0))
        agent.kill()
        self.counts.agent_kills += 1
        self.counts.agent_kills_at_start += 1
        self.scanner.scan("after kill")
        return f"{first}, then SIGKILL during start-up" + (self.power_loss() if power_loss else "")

    def sigterm_agent(self) -> str:
        """Stop the agent cleanly; it must exit 0."""
        self._check_unexpected()
        if not self._agent_up():
            return "agent already down"
        assert self.agent is not None
        try:
            code = self.agent.terminate(timeout=20)
        except AssertionError:  # terminate() SIGKILLed it
            self.problems.append(f"cycle {self.cycle}: agent did not stop within 20 s of SIGTERM; log {self.agent.log}")
        else:
            if code != 0:
                self.problems.append(f"cycle {self.cycle}: agent exited {code} on SIGTERM; log {self.agent.log}")
        self.agent = None
        self.counts.agent_sigterms += 1
        return "agent SIGTERM"

    def restart_agent(self) -> str:
        """Start the agent if it is down."""
        self._check_unexpected()
        if self._agent_up():
            return "agent still up"
        self._start_agent()
        return "agent restarted"

    def power_loss(self) -> str:
        """Damage each `.prog` (with some chance) as a power loss would; the agent must be dead."""
        assert not self._agent_up()
        self.counts.power_losses += 1
        progs = [p for p in local_capture_files(self.capture_dir) if p.suffix == ".prog"]
        cuts = [c for p in progs if self.rng.random() < self.s.power_loss_file_chance
                for c in [damage_prog(p, self.rng, self.cycle, self.ledger)] if c is not None]
        for c in cuts:
            if c.mode == "truncate":
                self.counts.files_truncated += 1
            else:
                self.counts.files_zero_filled += 1
            if c.unreadable:
                self.counts.files_made_unreadable += 1
        self.cuts += cuts
        lost = sum(c.records_before - c.records_after for c in cuts)
        return f" + power loss ({len(cuts)} of {len(progs)} .prog files damaged, {lost} readings destroyed)"

    def kill_cloud(self) -> str:
        """SIGKILL the cloud."""
        self._check_unexpected()
        if not self.cloud.alive():
            return "cloud already down"
        self.cloud.kill()
        self._cloud_killed = True
        self.counts.cloud_kills += 1
        return "cloud SIGKILL"

    def restart_cloud(self) -> str:
        """Start the cloud on its port and data dir if it is down (after a power cut of its disk,
        check that it still holds every commit it acknowledged)."""
        if self.cloud.alive():
            return "cloud still up"
        self.cloud = self._start_cloud(self.cloud.port)
        self._cloud_killed = False
        if self._acked_before_cut is not None:
            acked, self._acked_before_cut = self._acked_before_cut, None
            missing = missing_commits(acked, self._cloud_files(), self.cloud_dir)
            self.commits_lost += [f"cycle {self.cycle}: {m}" for m in missing]
            self.power_cuts[-1] = dataclasses.replace(self.power_cuts[-1], commits_lost=len(missing))
            return f"cloud restarted ({len(acked)} acknowledged commits checked, {len(missing)} missing)"
        return "cloud restarted"

    # --- real power cuts (ChaosSettings.power_cuts) ------------------------------------------------

    def power_cut(self, target: str) -> str:
        """Cut the power of the agent's disk, the cloud's, or both (`target`): SIGKILL the processes
        whose files are on it, cut it (torn with some chance), mount it again from its durable state,
        and account for what it forgot. The processes come back with the cycle's restart events."""
        assert self.disks is not None
        self._check_unexpected()
        torn = self.rng.random() < self.s.torn_chance
        seed = self.rng.randrange(2**32)
        agent_disk, cloud_disk = target != "cloud", target in ("cloud", "both")
        with self.ledger.lock:  # the scanner must not read a disk while its power is cut
            cut_ns = time.time_ns()
            if agent_disk and self._agent_up():
                assert self.agent is not None
                self.agent.kill()
            self.agent = None if agent_disk else self.agent
            forgotten, losses, lost_note = 0, None, ""
            if cloud_disk:
                if self.cloud.alive():
                    self.cloud.kill()
                self._cloud_killed = True
                self._acked_before_cut = dict(self.commit_log.read(sorted(self.logs.glob("cloud-*.log"))))
                forgotten += self.disks.cloud.cut(torn=torn, seed=seed).bytes_forgotten
                self.disks.cloud.mount()
            if agent_disk:
                before = dir_readings(self.capture_dir)
                for key, r in before.items():
                    self.ledger.note(key, r.method, r.requested_ns, "before power cut", self.cycle)
                forgotten += self.disks.agent.cut(torn=torn, seed=seed).bytes_forgotten
                self.disks.agent.mount()
                losses = classify_cut_losses(before, dir_readings(self.capture_dir), cut_ns,
                                             self.s.fsync_interval_secs)
                for key, r in losses.allowed.items():
                    self.ledger.allowed[key] = Seen(r.method, r.requested_ns, "power cut", self.cycle)
                self.cut_must_survive += [
                    f"cycle {self.cycle}: {key} {r.method} taken {(cut_ns - r.received_ns) / 1e9:.3f} s before the cut"
                    for key, r in sorted(losses.must_survive.items())]
                lost_note = f", {len(losses.allowed)} readings forgotten within the bound" + (
                    f", {len(losses.must_survive)} OLDER (up to {losses.oldest_must_survive_s:.2f} s)"
                    if losses.must_survive else "")
        name = "agent during start-up" if target == "agent" and self._starting else target
        self.counts.power_cuts[name] += 1
        self.counts.torn_cuts += torn
        self.counts.bytes_forgotten += forgotten
        self.power_cuts.append(PowerCut(self.cycle, name, torn, forgotten,
                                        len(losses.allowed) if losses else 0,
                                        len(losses.must_survive) if losses else 0, 0))
        return f"power cut of {name}{' (torn)' if torn else ''}: {forgotten} unsynced bytes forgotten{lost_note}"

    def power_cut_at_start(self) -> str:
        """SIGKILL the agent, start it again and cut the power of its disk within its first second
        (while it recovers `.prog` files and starts up)."""
        first = self.kill_agent(power_loss=False)
        self.agent = self._spawn_agent()
        self._starting = True
        try:
            time.sleep(self.rng.uniform(0.0, 1.0))
            return f"{first}, then {self.power_cut('agent')}"
        finally:
            self._starting = False

    def _cloud_files(self) -> list[dict]:
        """The cloud's file list, retried while a cloud just started answers slowly."""
        for attempt in range(5):
            try:
                return self.reader.files()
            except httpx.HTTPError:
                if attempt == 4:
                    raise
                time.sleep(1)
        raise AssertionError("unreachable")

    # --- one cycle --------------------------------------------------------------------------------

    def _network_events(self, kind: str, length: float) -> list[tuple[float, str, Callable[[], Any]]]:
        rng, p = self.rng, self.proxy
        t = rng.uniform(0, 0.6 * length)
        d = rng.uniform(0.3, max(0.4, min(3.0, 0.7 * length)))
        if kind == "none":
            return []
        self.counts.proxy[kind] += 1
        if kind == "cut":
            rst = rng.random() < 0.7
            return [(t, f"cut ({'RST' if rst else 'FIN'})", lambda: p.cut(rst=rst))]
        if kind == "partition":
            return [(t, f"partition {d:.1f} s", lambda: p.partition(d))]
        if kind == "stall":
            return [(t, f"stall {d:.1f} s", lambda: p.stall(d))]
        if kind == "slow_link":
            rate = rng.choice((2_000, 8_000, 32_000))
            return [(t, f"slow link {rate // 1000} KB/s", lambda: p.throttle(rate)),
                    (t + d, "link speed back", lambda: p.throttle(None))]
        if kind == "reset_mid_body":
            n = rng.randint(0, 30_000)
            return [(t, f"reset after {n} bytes upstream", lambda: p.reset_after_upstream(n))]
        if kind == "drop_answers":
            return [(t, "answers held", lambda: p.throttle(1, direction="down")),
                    (t + d, "cut with answers pending", lambda: (p.cut(), p.throttle(None)))]
        raise ValueError(kind)

    def _process_events(self, kind: str, length: float) -> list[tuple[float, str, Callable[[], Any]]]:
        rng = self.rng
        ta, tc = rng.uniform(0, 0.8 * length), rng.uniform(0, 0.8 * length)
        down_a, down_c = rng.uniform(0, 0.5), rng.uniform(0, min(2.5, 0.6 * length))
        agent_pl = rng.random() < 0.5
        ev: list[tuple[float, str, Callable[[], Any]]] = []
        if kind in ("agent_kill", "agent_power_loss", "both_kill"):
            pl = kind == "agent_power_loss" or (kind == "both_kill" and agent_pl)
            ev += [(ta, "", lambda: self.kill_agent(power_loss=pl)), (ta + down_a, "", self.restart_agent)]
        if kind == "agent_kill_at_start":
            ev += [(ta, "", lambda: self.kill_agent_at_start(power_loss=agent_pl)),
                   (ta + down_a, "", self.restart_agent)]
        if kind == "agent_sigterm":
            ev += [(ta, "", self.sigterm_agent), (ta + down_a, "", self.restart_agent)]
        if kind in ("cloud_kill", "both_kill"):
            ev += [(tc, "", self.kill_cloud), (tc + down_c, "", self.restart_cloud)]
        if kind in ("agent_power_cut", "cloud_power_cut", "both_power_cut"):
            target = kind.removesuffix("_power_cut")
            ev += [(ta, "", lambda: self.power_cut(target))]
            ev += [(ta + down_a, "", self.restart_agent)] if target != "cloud" else []
            ev += [(ta + down_c, "", self.restart_cloud)] if target != "agent" else []
        if kind == "agent_power_cut_at_start":
            ev += [(ta, "", self.power_cut_at_start), (ta + down_a, "", self.restart_agent)]
        return ev

    def run_cycle(self) -> None:
        """One cycle: draw a process scenario and a network fault, play them at their moments, then
        lift every fault and bring back whatever is down."""
        self.cycle += 1
        self.scanner.cycle = self.cycle
        length = self.s.cycle_seconds * self.rng.uniform(0.7, 1.3)
        proc_kind, net_kind = self._proc_bag.draw(), self._net_bag.draw()
        events = self._process_events(proc_kind, length) + self._network_events(net_kind, length)
        events.sort(key=lambda e: e[0])
        start = time.monotonic()
        done = []
        for at, label, action in events:
            time.sleep(max(0.0, start + at - time.monotonic()))
            out = action()
            done.append(f"{at:.1f}s {label or out}")
        time.sleep(max(0.0, start + length - time.monotonic()))
        self.proxy.clear()
        self._check_unexpected()
        if self.agent is None:
            self.restart_agent()
        if not self.cloud.alive():
            self.restart_cloud()
        if self.scanner.error is not None:
            raise self.scanner.error
        if self.after_cycle is not None:
            self.after_cycle(self)
        if self.cycle % max(1, self.s.cloud_snapshot_every) == 0:
            self.snapshot_cloud()
        self.counts.cycles = self.cycle
        self.say(f"cycle {self.cycle}/{self.s.cycles} ({length:.1f} s, {proc_kind}, {net_kind}): "
                 + ("; ".join(done) or "no faults"))

    def snapshot_cloud(self) -> None:
        """Add every key of every committed file (from the cloud's file list) to the ledger."""
        try:
            files = self.reader.files()
        except httpx.HTTPError as exc:  # a slow answer from a cloud just restarted: next time
            self.say(f"cloud file list not read: {exc!r}")
            return
        with self.ledger.lock:
            for f in files:
                if f["kind"] == "capture":
                    for i in range(f["records"] or 0):
                        self.ledger.note((f["file_id"], i), None, None, "cloud file list", self.cycle)

    # --- drain and account ------------------------------------------------------------------------

    def drain(self) -> tuple[bool, float]:
        """Lift every fault, keep both processes up, and wait until no capture file created before
        now is left locally (set-aside files excepted). Returns (drained, seconds)."""
        self.proxy.clear()
        self._check_unexpected()
        if self.agent is None:
            self.restart_agent()
        begin_ns, t0 = time.time_ns(), time.monotonic()
        deadline = t0 + self.s.drain_timeout_s
        failed_dir = self.capture_dir / "failed"

        def old_files() -> list[Path]:
            out = []
            for p in local_capture_files(self.capture_dir):
                if failed_dir in p.parents:
                    continue
                try:
                    created = read_capture(p).header.created_ns
                except (CaptureFormatError, FileNotFoundError):
                    continue
                if created < begin_ns:
                    out.append(p)
            return out

        left = old_files()
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = old_files()
            self._check_unexpected()
            if self.agent is None:
                self.restart_agent()
        drained = not left
        if drained:
            wait_unchanged(lambda: self.cloud.log.stat().st_size, 0.4, 30, "a quiet moment between sync passes")
        else:
            self.problems.append(f"backlog not drained after {self.s.drain_timeout_s:g} s: {len(left)} files, "
                                 f"e.g. {left[0]}")
        return drained, time.monotonic() - t0

    def account(self, drained: bool, drain_s: float) -> ChaosReport:
        """Compare what was captured with what the cloud committed; build the report."""
        ledger = self.ledger
        cloud_rows = self.reader.records()
        files = self.reader.files()
        for r in cloud_rows:
            ledger.note(r.key, r.method, r.requested_ns, "cloud", self.cycle)
        final_local: dict[Key, tuple[str, int]] = {}
        for path in local_capture_files(self.capture_dir):
            for key, method, req in file_keys(path):
                final_local[key] = (method, req)
                ledger.note(key, method, req, "final local", self.cycle)

        key_counts = Counter(r.key for r in cloud_rows)
        cloud_keys = set(key_counts)
        by_reading: dict[tuple[str, int], set[Key]] = defaultdict(set)
        for r in cloud_rows:
            by_reading[(r.method, r.requested_ns)].add(r.key)
        dup_keys = sum(n - 1 for n in key_counts.values())
        dup_readings = sum(len(keys) - 1 for keys in by_reading.values())
        dup_examples = [f"key {k} listed {n} times" for k, n in key_counts.items() if n > 1]
        dup_examples += [f"{m} at {t} under keys {sorted(ks)}" for (m, t), ks in by_reading.items() if len(ks) > 1]

        rows_per_file = Counter(r.file_id for r in cloud_rows)
        short = [f for f in files if f["kind"] == "capture" and rows_per_file[f["file_id"]] < (f["records"] or 0)]
        for f in short:
            self.problems.append(f"committed file {f['file_id']} lists {rows_per_file[f['file_id']]} of "
                                 f"{f['records']} records")

        destroyed = set(ledger.destroyed) | set(ledger.allowed)
        back = destroyed & (cloud_keys | set(final_local))
        if back:
            self.problems.append(f"{len(back)} readings counted as destroyed by power loss or cut are still there, "
                                 f"e.g. {sorted(back)[:3]}")
        captured = set(ledger.seen)
        lost = captured - cloud_keys - set(final_local) - destroyed
        lost_examples = [f"{k}: {ledger.seen[k]}" for k in sorted(lost, key=lambda k: (ledger.seen[k].cycle, k))]

        points: dict[str, dict[int, Key]] = defaultdict(dict)
        for key, seen in list(ledger.seen.items()) + list(ledger.destroyed.items()) + list(ledger.allowed.items()):
            if seen.method is not None and seen.requested_ns is not None:
                points[seen.method][seen.requested_ns] = key
        holes = grid_holes(points, PERIODS)

        disk_rule = sum(int(r.get("files_deleted", 0)) for log in sorted(self.logs.glob("agent-*.log"))
                        for r in log_lines(log) if r.get("msg") == "disk nearly full: deleted every Nth capture file")
        stats = self.proxy.statistics()
        self.counts.resets_fired = stats.resets_fired
        self.counts.connections_cut = stats.connections_cut
        self.counts.connections_refused = stats.connections_refused
        return ChaosReport(
            settings=self.s, counts=self.counts, wall_s=time.monotonic() - self._t0, drain_s=drain_s,
            drained=drained, captured=len(captured),
            first_seen=Counter(seen.where for seen in ledger.seen.values()), committed=len(cloud_keys),
            still_local=len(final_local),
            lost=len(lost), duplicated_keys=dup_keys, duplicated_readings=dup_readings, destroyed=len(ledger.destroyed),
            allowed_losses=len(ledger.allowed), cut_must_survive=self.cut_must_survive, commits_lost=self.commits_lost,
            power_cuts=self.power_cuts,
            deleted_by_disk_rule_files=disk_rule, committed_and_local=len(cloud_keys & set(final_local)),
            set_aside=len(set_aside_files(self.capture_dir)) if self.capture_dir.exists() else 0,
            cloud_rows_short=len(short), holes=holes, cuts=self.cuts,
            lost_examples=lost_examples, duplicate_examples=dup_examples, problems=self.problems, root=self.root,
        )

    # --- everything -------------------------------------------------------------------------------

    def run(self) -> ChaosReport:
        """Start the cloud, the proxy and the agent; run every cycle; drain; account. Stops every
        process it started, whatever happens."""
        self._t0 = time.monotonic()
        self.logs.mkdir(parents=True, exist_ok=True)
        self._proc_bag = _Bag(PROCESS_SCENARIOS | (POWER_CUT_SCENARIOS if self.s.power_cuts else {}), self.rng)
        self._net_bag = _Bag(NETWORK_FAULTS, self.rng)
        self.scanner = LocalScanner(self.capture_dir, self.ledger, self.s.scan_interval_s)
        if self.disks is not None:
            self.disks.mount()
        try:
            return self._run()
        finally:
            if self.disks is not None:
                self.disks.close()

    def _run(self) -> ChaosReport:
        with ProcessKit(self.root) as self.kit:
            self.cloud = self._start_cloud()
            secret = add_part(self.cloud.data_dir)
            with ProxyThread("127.0.0.1", self.cloud.port) as self.proxy, \
                    CloudReader(self.cloud.url, secret) as self.reader:
                self.config = chaos_config(self.root, self.proxy.url, secret, self.s.sync_interval_mins,
                                           self.s.fsync_interval_secs)
                self._start_agent()
                self.scanner.start()
                self.say(f"cloud on {self.cloud.url}, proxy on {self.proxy.url}, agent running; "
                         f"{self.s.cycles} cycles of ~{self.s.cycle_seconds:g} s, seed {self.s.seed}")
                try:
                    for _ in range(self.s.cycles):
                        self.run_cycle()
                    self.say("draining: every fault lifted, waiting for the backlog to empty")
                    drained, drain_s = self.drain()
                    self.say(f"drained in {drain_s:.1f} s" if drained else "NOT drained")
                finally:
                    self.scanner.stop()
                if self.agent is not None:
                    code = self.agent.terminate(timeout=30)
                    if code != 0:
                        self.problems.append(f"agent exited {code} on the final SIGTERM; log {self.agent.log}")
                    self.agent = None
                self.scanner.scan("final")
                return self.account(drained, drain_s)


def run_chaos(root: Path, settings: ChaosSettings, say: Callable[[str], None] | None = None,
              after_cycle: Callable[[ChaosRun], None] | None = None) -> ChaosReport:
    """Run chaos under `root` (created if needed) and return the report (see ChaosRun)."""
    root.mkdir(parents=True, exist_ok=True)
    return ChaosRun(root, settings, say, after_cycle).run()


def remove_run_dir(root: Path) -> None:
    """Delete a run's dir (logs, capture dir, cloud data)."""
    shutil.rmtree(root, ignore_errors=True)
