"""Real processes on real sockets: start, stop and kill `capsync cloud serve` and `capsync run`, and
account for every captured record across the cloud and the capture dir.

Shared by tests/test_sync_process.py and scripts/e2e_sync.py. Everything here is synchronous
(subprocess + httpx.Client); a test keeps one `ProcessKit` open and every process it starts is
stopped when the kit closes, whatever happened.

Accounting: the cloud's committed records (by file id and record index, from the query API)
plus the records in local `.capture`/`.prog` files must equal everything captured (the agent's
"stopped" log lines), with no record in both places and none twice in the cloud. As a cross
check, each capture method's requested times form a gap-free 1/f grid per agent run, so the
union of both sides is checked for duplicated times, missing ticks and grid breaks (restarts).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import httpx

from capsync.runtime.capture_file import CAPTURE_SUFFIX, PROG_SUFFIX, CaptureFormatError, read_capture
from capsync.runtime.sync_files import FAILED_DIR
from tests.helpers import fake_component, robot_config, write_config

REPO = Path(__file__).resolve().parents[1]
PART = "part-a"
_LISTENING = re.compile(r"capsync cloud listening on (https?://\S+)")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy (returned); AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def wait_unchanged(probe: Callable[[], Any], quiet_s: float, timeout: float, what: str) -> None:
    """Poll `probe` until its value has not changed for `quiet_s`; AssertionError naming `what` at the deadline.

    Used to stop the agent between sync passes (cloud log or proxy byte counts quiet), so a stop
    does not land in the middle of a commit (see test_shutdown_while_the_commit_is_answered_...).
    """
    deadline = time.monotonic() + timeout
    last, since = probe(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
        now = probe()
        if now != last:
            last, since = now, time.monotonic()


def log_lines(log: Path) -> list[dict]:
    """The JSON log lines of a process log (other lines, such as the cloud's URL, are skipped)."""
    out = []
    if not log.exists():
        return out
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


# --- processes ----------------------------------------------------------------------------------


def child_env(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment for a child, unbuffered, with `extra` set over it (a None value unsets)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for name, value in (extra or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


class Process:
    """One child process whose stdout and stderr go to `log` (appended); `env` is set over ours."""

    def __init__(self, argv: list[str], log: Path, env: Mapping[str, str | None] | None = None) -> None:
        self.argv = argv
        self.log = log
        self.env = dict(env or {})
        env = child_env(env)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=out, env=env, cwd=REPO)

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.proc.pid

    def alive(self) -> bool:
        """True while the child runs."""
        return self.proc.poll() is None

    def text(self) -> str:
        """Everything the child logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL and reap (no-op if it already exited)."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; SIGKILL (and AssertionError) if it does not exit in `timeout`. Returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.argv[3:5]} did not stop within {timeout:g} s of SIGTERM:\n{self.text()[-3000:]}")


class CloudProcess(Process):
    """`capsync cloud serve` on 127.0.0.1; `url` and `port` once it listens. `args` are more options
    of `serve` (say `--store URL --blobs s3://...`), `env` more environment (say AWS_*). It logs at
    debug, so that tests see each upload and commit (routine lines a default cloud keeps quiet)."""

    def __init__(self, data_dir: Path, log: Path, port: int = 0, args: Sequence[str] = (),
                 env: Mapping[str, str | None] | None = None) -> None:
        self.data_dir = data_dir
        self.args = tuple(args)
        self._from = log.stat().st_size if log.exists() else 0
        super().__init__([sys.executable, "-m", "capsync", "cloud", "serve", "--data-dir", str(data_dir),
                          "--port", str(port), "--log-format", "json", "--log-level", "debug", *self.args], log, env)
        self.url = ""
        self.port = port

    def wait_listening(self, timeout: float = 30.0) -> bool:
        """Wait for the "listening on" line; False if the process exited first (e.g. port still in use)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = _LISTENING.search(self.text()[self._from:])
            if m:
                self.url = m.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                return True
            if not self.alive():
                return False
            time.sleep(0.02)
        raise AssertionError(f"cloud did not start listening within {timeout:g} s:\n{self.text()[-3000:]}")


def old_file(path: Path, size: int) -> str:
    """Write `size` random bytes with an mtime a minute ago (past the agent's 10 s rule for
    additional_sync_paths); returns their sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path.write_bytes(data)
    past = time.time() - 60
    os.utime(path, (past, past))
    return hashlib.sha256(data).hexdigest()


def add_part(data_dir: Path, part_id: str = PART, args: Sequence[str] = ()) -> str:
    """`capsync cloud add-part`: register `part_id` in the cloud's data dir (or the store `args` name,
    say `--store URL`); returns its secret."""
    out = subprocess.run([sys.executable, "-m", "capsync", "cloud", "add-part", "--data-dir", str(data_dir), *args,
                          part_id], capture_output=True, text=True, timeout=30, cwd=REPO, check=True)
    return out.stdout.strip()


class AgentProcess(Process):
    """`capsync run CONFIG --log-format json`."""

    def __init__(self, config: Path, log: Path, env: Mapping[str, str | None] | None = None,
                 args: Sequence[str] = ()) -> None:
        self._runs_before = self._runs(log)
        super().__init__([sys.executable, "-m", "capsync", "run", str(config), "--log-format", "json",
                          "--status-interval", "0", *args], log, env)

    @staticmethod
    def _runs(log: Path) -> int:
        """How many agent runs `log` holds so far ("agent running" lines)."""
        return sum(1 for r in log_lines(log) if r.get("msg") == "agent running")

    def wait_running(self, timeout: float = 30.0) -> None:
        """Wait for this run's "agent running" line."""
        def running() -> bool:
            assert self.alive(), f"agent exited early:\n{self.text()[-3000:]}"
            return self._runs(self.log) > self._runs_before
        wait_for(running, timeout, "the agent to start")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, expect exit 0; returns what the run reported as captured in its "stopped" line."""
        code = self.terminate(timeout)
        assert code == 0, f"agent exited {code}:\n{self.text()[-3000:]}"
        stopped = [r for r in log_lines(self.log) if r.get("msg") == "stopped"]
        assert stopped, f"no 'stopped' line:\n{self.text()[-3000:]}"
        return int(stopped[-1]["captured"])


class ProcessKit:
    """Starts clouds and agents under `root`, and stops every one of them on close (a context manager).

    Logs go to `root/cloud.log` and `root/agent.log` (appended across restarts).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[Process] = []

    def __enter__(self) -> ProcessKit:
        """The kit itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """close() it: no child outlives the kit."""
        self.close()

    def close(self) -> None:
        """SIGTERM every child still running (SIGKILL those that do not stop)."""
        for p in reversed(self.procs):
            if p.alive():
                try:
                    p.terminate(timeout=10)
                except AssertionError:
                    pass

    def spawn_cloud(self, data_dir: Path | None = None, port: int = 0, *, args: Sequence[str] = (),
                    env: Mapping[str, str | None] | None = None, log: Path | None = None) -> CloudProcess:
        """Start a cloud without waiting for it (`wait_listening()` does); see start_cloud."""
        cloud = CloudProcess(data_dir or self.root / "cloud", log or self.root / "cloud.log", port, args, env)
        self.procs.append(cloud)
        return cloud

    def start_cloud(self, data_dir: Path | None = None, port: int = 0, *, retry_bind_s: float = 15.0,
                    args: Sequence[str] = (), env: Mapping[str, str | None] | None = None,
                    log: Path | None = None) -> CloudProcess:
        """Start a cloud and wait until it listens. With a fixed `port` still held (a killed
        predecessor's), retry binding for up to `retry_bind_s`. `args` and `env` go to `serve`
        (CloudProcess); `log` defaults to `root/cloud.log`."""
        deadline = time.monotonic() + retry_bind_s
        while True:
            cloud = self.spawn_cloud(data_dir, port, args=args, env=env, log=log)
            if cloud.wait_listening():
                return cloud
            cloud.proc.wait(timeout=10)
            if port == 0 or time.monotonic() >= deadline:
                raise AssertionError(f"cloud did not start on port {port}:\n{cloud.text()[-3000:]}")
            time.sleep(0.2)

    def wait_between_passes(self, cloud: CloudProcess, quiet_s: float = 0.4, timeout: float = 20.0) -> None:
        """Wait until the cloud has logged nothing (no upload started, no commit) for `quiet_s`."""
        wait_unchanged(lambda: cloud.log.stat().st_size, quiet_s, timeout, "a quiet moment between sync passes")

    def restart_cloud(self, old: CloudProcess) -> CloudProcess:
        """Start a cloud on the port, data dir, options, environment and log of `old` (which has stopped)."""
        assert not old.alive()
        return self.start_cloud(old.data_dir, old.port, args=old.args, env=old.env, log=old.log)

    def spawn_agent(self, config: Path, *, log: Path | None = None,
                    env: Mapping[str, str | None] | None = None, args: Sequence[str] = ()) -> AgentProcess:
        """Start the agent on `config` without waiting (`wait_running()` does); see start_agent."""
        agent = AgentProcess(config, log or self.root / "agent.log", env, args)
        self.procs.append(agent)
        return agent

    def start_agent(self, config: Path, *, log: Path | None = None,
                    env: Mapping[str, str | None] | None = None, args: Sequence[str] = ()) -> AgentProcess:
        """Start the agent on `config` and wait until it says it is running; `log` defaults to
        `root/agent.log`, `env` is set over this process's environment, `args` are more options of `run`."""
        agent = self.spawn_agent(config, log=log, env=env, args=args)
        agent.wait_running()
        return agent


# --- configs ------------------------------------------------------------------------------------


def agent_config(root: Path, cloud_url: str, secret: str, *, sensor_hz: float = 20, camera_hz: float = 2,
                 interval_mins: float = 0.02, part_id: str = PART, sync_paths: Iterable[Path] = (),
                 **dm: Any) -> Path:
    """Write `root/robot.json`: a fake sensor (Readings) and a fake camera (ReadImage) at the given
    rates (0 leaves one out), syncing every `interval_mins` to `cloud_url` as `part_id`."""
    comps = []
    if sensor_hz:
        comps.append(fake_component("env", "sensor", [{"method": "Readings", "capture_frequency_hz": sensor_hz}]))
    if camera_hz:
        comps.append(fake_component("cam", "camera", [{"method": "ReadImage", "capture_frequency_hz": camera_hz,
                                                       "additional_params": {"mime_type": "image/jpeg"}}]))
    cfg = robot_config(root / "capture", comps, sync_interval_mins=interval_mins,
                       additional_sync_paths=[str(p) for p in sync_paths], **dm)
    cfg["cloud"] = {"id": part_id, "secret": secret, "app_address": cloud_url}
    return write_config(root / "robot.json", cfg)


# --- what is where ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One captured record, wherever it is: its identity and where it sits on its method's grid."""

    file_id: str
    index: int
    method: str  # "type/name/method"
    requested_ns: int
    received_ns: int = 0

    @property
    def key(self) -> tuple[str, int]:
        """(file_id, record index): what the cloud keys rows by."""
        return (self.file_id, self.index)


class CloudReader:
    """Reads a part's committed data back through the query API (HTTP Basic auth)."""

    def __init__(self, url: str, secret: str, part_id: str = PART, verify: Any = True) -> None:
        self._http = httpx.Client(base_url=url, auth=(part_id, secret), timeout=30, verify=verify)

    def __enter__(self) -> CloudReader:
        """The reader itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close its HTTP client."""
        self._http.close()

    def pages(self, path: str, **params: Any) -> list[dict]:
        """Every item of a paginated endpoint."""
        items: list[dict] = []
        cursor = None
        while True:
            q = dict(params, limit=1000, **({"cursor": cursor} if cursor else {}))
            resp = self._http.get(path, params=q)
            resp.raise_for_status()
            body = resp.json()
            items += body["items"]
            cursor = body["next_cursor"]
            if not cursor:
                return items

    def files(self) -> list[dict]:
        """Every committed file (`GET /v1/files`)."""
        return self.pages("/v1/files")

    def records(self) -> list[Record]:
        """Every record of every committed capture file (tabular rows and binary items), as listed (duplicates kept)."""
        rows = self.pages("/v1/tabular") + [b for b in self.pages("/v1/binary") if b["resource_type"]]
        return [Record(r["file_id"], r["record_index"], f"{r['resource_type']}/{r['resource_name']}/{r['method']}",
                       r["requested_ns"], r["received_ns"]) for r in rows]


def local_capture_files(capture_dir: Path) -> list[Path]:
    """`.capture` and `.prog` files under the capture dir, set-aside ones included."""
    return sorted(p for p in capture_dir.rglob("*") if p.suffix in (CAPTURE_SUFFIX, PROG_SUFFIX))


def local_records(capture_dir: Path) -> list[Record]:
    """Every good record in the local capture files."""
    out = []
    for path in local_capture_files(capture_dir):
        try:
            c = read_capture(path)
        except (CaptureFormatError, FileNotFoundError):
            continue
        h = c.header
        method = f"{h.resource_type}/{h.resource_name}/{h.method}"
        out += [Record(h.file_id, i, method, r.requested_ns, r.received_ns) for i, r in enumerate(c.records)]
    return out


def created_ns(path: Path) -> int | None:
    """When the capture file at `path` was opened (its header's created_ns); None if it is gone or
    has no readable header yet (a writer is creating it right now)."""
    try:
        return read_capture(path).header.created_ns
    except (CaptureFormatError, FileNotFoundError):
        return None


def set_aside_files(capture_dir: Path) -> list[Path]:
    """Files the agent moved to the `failed/` folder."""
    return sorted(p for p in (capture_dir / FAILED_DIR).rglob("*") if p.is_file())


@dataclass(frozen=True)
class GridCheck:
    """One capture method's records (cloud and local together) against its 1/f tick grid."""

    method: str
    records: int
    duplicated_times: int  # records whose requested time another record already has
    missing_ticks: int  # holes inside a grid run (lost records, or ticks the collector missed)
    grid_runs: int  # separate grids: 1 + agent restarts
    run_lengths: tuple[int, ...]  # records in each grid run, in time order


def grid_check(records: Iterable[Record], periods_ns: dict[str, int]) -> list[GridCheck]:
    """Check each method in `periods_ns` (method -> period) against its grid."""
    by_method: dict[str, list[int]] = {}
    for r in records:
        by_method.setdefault(r.method, []).append(r.requested_ns)
    out = []
    for method, period in periods_ns.items():
        times = sorted(by_method.get(method, []))
        dups = len(times) - len(set(times))
        uniq = sorted(set(times))
        missing, lengths = 0, [1] if uniq else []
        for a, b in zip(uniq, uniq[1:]):
            rem = (b - a) % period
            if min(rem, period - rem) <= 2_000:  # on the grid: the ticks between are missing
                missing += round((b - a) / period) - 1
                lengths[-1] += 1
            else:
                lengths.append(1)  # a new grid: the agent restarted
        out.append(GridCheck(method, len(times), dups, missing, len(lengths), tuple(lengths)))
    return out


@dataclass(frozen=True)
class Accounting:
    """Where every captured record is, and what went wrong."""

    captured: int | None  # from the agents' "stopped" lines; None when a run was killed
    committed: int  # distinct records in the cloud
    local: int  # distinct records in local files
    duplicated_in_cloud: int  # cloud rows listed more than once
    in_both: int  # records in the cloud and still local
    grid: tuple[GridCheck, ...] = field(default=())

    @property
    def lost(self) -> int | None:
        """Captured but in neither place (None when `captured` is unknown)."""
        if self.captured is None:
            return None
        return self.captured - (self.committed + self.local - self.in_both)

    @property
    def duplicated(self) -> int:
        """Records held twice: twice in the cloud, in both places, or twice by requested time."""
        return self.duplicated_in_cloud + self.in_both + sum(g.duplicated_times for g in self.grid)

    def summary(self) -> str:
        """One line for test failures and the e2e script."""
        grid = "; ".join(f"{g.method}: {g.records} recs, {g.missing_ticks} missing ticks, {g.grid_runs} grid runs"
                         for g in self.grid)
        return (f"captured {self.captured} committed {self.committed} local {self.local} lost {self.lost} "
                f"duplicated {self.duplicated} (cloud twice {self.duplicated_in_cloud}, both {self.in_both}) | {grid}")


SENSOR = "sensor/env/Readings"
CAMERA = "camera/cam/ReadImage"


def account(cloud: CloudReader, capture_dir: Path, captured: int | None = None,
            periods_ns: dict[str, int] | None = None) -> Accounting:
    """Count what the cloud committed and what is still local, against `captured`."""
    in_cloud = cloud.records()
    local = local_records(capture_dir)
    cloud_keys = Counter(r.key for r in in_cloud)
    local_keys = {r.key for r in local}
    union = {r.key: r for r in in_cloud + local}
    return Accounting(
        captured=captured,
        committed=len(cloud_keys),
        local=len(local_keys),
        duplicated_in_cloud=sum(n - 1 for n in cloud_keys.values()),
        in_both=len(set(cloud_keys) & local_keys),
        grid=tuple(grid_check(union.values(), periods_ns or {})),
    )
