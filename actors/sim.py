"""The simulation harness: a whole agent and an in-process cloud under Trio's virtual clock.

Users import it in their own tests (see docs/simulation.md):

    async def test_a_day_offline(tmp_path, autojump_clock):
        async with Simulation(tmp_path, config) as sim:
            sim.cloud_down()
            await sim.advance(24 * 3600)
            sim.cloud_up()
            await sim.drain()
            report = await sim.accounting()
            assert report.lost == 0 and report.duplicated == 0

The cloud is the real cloud app over an in-process transport whose link the test switches off and
on; the disk is simulated (`SimDisk`) so a disk-full episode is one call; faults come from a
`FaultPlan`. Blocking work runs inline, so virtual time only moves when every task waits on a
timer, and an hour of outage or a day of 1 Hz capture takes seconds of real time.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
import trio

from capsync.actors.agent import Agent
from capsync.actors.agent_stats import AgentStats
from capsync.cloud.app import create_app
from capsync.cloud.auth import new_secret
from capsync.runtime.blocking import inline_blocking, without_fsync
from capsync.runtime.capture_file import CAPTURE_SUFFIX, PROG_SUFFIX, read_capture
from capsync.runtime.config import parse_config
from capsync.runtime.faults import FaultPlan
from capsync.runtime.sim_parts import SimDisk, SwitchableTransport

CLOUD_URL = "http://cloud.sim"


@dataclass(frozen=True)
class Accounting:
    """Where every reading the agent wrote is now, and what went wrong (lost and duplicated must be 0)."""

    captured: int  # records appended to capture files, per the agent's own ledger
    on_disk: int
    committed: int
    deleted_by_disk_rule: int
    lost: int
    duplicated: int
    lost_files: tuple[str, ...] = ()


class Simulation:
    """An agent built from `config` (a dict in the documented format) plus a cloud, under the current
    Trio clock. Use as `async with Simulation(...) as sim:` inside a test run with a MockClock."""

    def __init__(
        self,
        root: Path,
        config: dict[str, Any],
        *,
        faults: FaultPlan | None = None,
        disk_total: int = 64 * 1024**3,
        part_id: str = "sim-part",
        governor_interval_s: float = 5.0,
    ) -> None:
        self.root = Path(root)
        self.capture_dir = self.root / "capture"
        self.part_id = part_id
        self.faults = faults if faults is not None else FaultPlan()
        self.disk = SimDisk(self.capture_dir, disk_total)
        self.ledger: Counter[str] = Counter()  # file id -> records the agent appended
        self.deleted_by_governor: Counter[str] = Counter()  # file id -> records the disk rule removed
        self.agent: Agent | None = None
        self._config = copy.deepcopy(config)
        self._governor_interval_s = governor_interval_s
        self._stack = AsyncExitStack()
        self._agent_scope: trio.CancelScope | None = None
        self._agent_done: trio.Event | None = None
        self._retired_restarts: Counter[str] = Counter()
        #: Replaces the agent's uploader when set (a test can swap in a broken one).
        self.upload: Callable[..., Any] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Simulation:
        self._stack.enter_context(inline_blocking())
        self._stack.enter_context(without_fsync())
        self.app = create_app(self.root / "cloud")
        self.secret = new_secret()
        await self.app.state.cloud.store.add_part(self.part_id, self.secret)
        self.link = SwitchableTransport(httpx.ASGITransport(app=self.app))
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        await self._start_agent()
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        await self._stop_agent()
        self._nursery.cancel_scope.cancel()
        return await self._stack.__aexit__(*exc_info)

    def _robot_config(self) -> dict[str, Any]:
        cfg = copy.deepcopy(self._config)
        services = cfg.setdefault("services", [])
        dm = next((s for s in services if s.get("type") == "data_manager"), None)
        if dm is None:
            dm = {"name": "data_manager", "type": "data_manager", "attributes": {}}
            services.append(dm)
        dm.setdefault("attributes", {})["capture_dir"] = str(self.capture_dir)
        cfg["cloud"] = {"id": self.part_id, "secret": self.secret, "app_address": CLOUD_URL}
        return cfg

    async def _start_agent(self) -> None:
        agent = Agent(parse_config(json.dumps(self._robot_config())), cloud_transport=self.link, control=False,
                      faults=self.faults, disk_usage=self.disk.usage, governor_interval_s=self._governor_interval_s,
                      ledger=self.ledger)
        if agent.governor is not None:
            agent.governor.on_delete = self._note_deletion
        if agent.sync is not None and self.upload is not None:
            agent.sync.upload = self.upload
        scope, done = trio.CancelScope(), trio.Event()

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await agent.run(task_status=task_status)
            finally:
                done.set()

        await self._nursery.start(run)
        self.agent, self._agent_scope, self._agent_done = agent, scope, done

    async def _stop_agent(self) -> None:
        if self._agent_scope is None or self.agent is None:
            return
        for s in self.agent.statistics().supervisors:
            for c in s.children:
                self._retired_restarts[c.name] += c.restarts
        self._agent_scope.cancel()
        assert self._agent_done is not None
        await self._agent_done.wait()
        self._agent_scope = None

    def _note_deletion(self, path: Path) -> None:
        """Called by the governor right before it deletes `path`."""
        try:
            c = read_capture(path)
        except Exception:
            return
        self.deleted_by_governor[c.header.file_id] += len(c.records)

    # -- what a test does ----------------------------------------------------------------

    async def advance(self, seconds: float) -> None:
        """Let `seconds` of virtual time pass."""
        await trio.sleep(seconds)

    def cloud_down(self) -> None:
        """Cut the link to the cloud: every request fails like a refused connection."""
        self.link.down = True

    def cloud_up(self) -> None:
        """Restore the link to the cloud."""
        self.link.down = False

    async def restart_agent(self) -> None:
        """Stop the agent (cleanly: every open file is finished) and build a new one over the same dirs."""
        await self._stop_agent()
        await self._start_agent()

    async def reload(self, edit: Callable[[dict[str, Any]], None]) -> None:
        """Apply `edit` to the config (a function that changes the dict) and reload the running agent."""
        edit(self._config)
        assert self.agent is not None
        await self.agent.apply_config(parse_config(json.dumps(self._robot_config())))

    async def sync_now(self):
        """Run a sync pass now and return its PassResult."""
        assert self.agent is not None and self.agent.sync is not None
        return await self.agent.sync.sync_now()

    async def drain(self, max_wait_s: float = 2 * 3600) -> None:
        """Sync until nothing is left on disk, waiting out backoffs for up to `max_wait_s` virtual seconds."""
        deadline = trio.current_time() + max_wait_s
        while True:
            await self.sync_now()
            if not self.disk_records() or trio.current_time() >= deadline:
                return
            await trio.sleep(5.0)

    # -- what a test reads back ----------------------------------------------------------

    def status(self) -> AgentStats:
        """The running agent's statistics."""
        assert self.agent is not None
        return self.agent.statistics()

    def restarts(self) -> dict[str, int]:
        """Restarts per actor name since the simulation started (across agent restarts)."""
        out = Counter(self._retired_restarts)
        if self.agent is not None:
            for s in self.agent.statistics().supervisors:
                for c in s.children:
                    out[c.name] += c.restarts
        return dict(out)

    def disk_records(self) -> Counter[str]:
        """File id -> records held in capture files (finished, open, or set aside) on disk now."""
        out: Counter[str] = Counter()
        for path in list(self.capture_dir.rglob("*")):
            if path.suffix not in (CAPTURE_SUFFIX, PROG_SUFFIX) or not path.is_file():
                continue
            try:
                c = read_capture(path)
            except Exception:
                continue
            if c.records:  # a file opened ahead holds none yet
                out[c.header.file_id] += len(c.records)
        return out

    async def cloud_records(self) -> Counter[str]:
        """File id -> records the cloud has committed for this part (tabular rows and binary items)."""
        out: Counter[str] = Counter()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=CLOUD_URL,
                                     auth=(self.part_id, self.secret)) as client:
            for route in ("/v1/tabular", "/v1/binary"):
                cursor = None
                while True:
                    params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
                    body = (await client.get(route, params=params)).raise_for_status().json()
                    for item in body["items"]:
                        out[item["file_id"]] += 1
                    cursor = body["next_cursor"]
                    if not cursor:
                        break
        return out

    async def accounting(self) -> Accounting:
        """Compare the agent's ledger with the disk and the cloud. A file may be both on disk and in
        the cloud for a moment (committed, not yet deleted); that is not a duplicate."""
        ledger = Counter(self.ledger)  # first: records appended after this are not expected anywhere yet
        disk = self.disk_records()
        cloud = await self.cloud_records()  # after the disk: a file that moved meanwhile is seen in the cloud
        lost = duplicated = 0
        lost_files = []
        for file_id, n in ledger.items():
            held = max(disk.get(file_id, 0), cloud.get(file_id, 0), self.deleted_by_governor.get(file_id, 0))
            if held < n:
                lost += n - held
                lost_files.append(file_id)
            if cloud.get(file_id, 0) > n:
                duplicated += cloud[file_id] - n
        duplicated += sum(n for f, n in cloud.items() if f not in self.ledger)
        return Accounting(
            captured=sum(ledger.values()),
            on_disk=sum(disk.values()),
            committed=sum(cloud.values()),
            deleted_by_disk_rule=sum(self.deleted_by_governor.values()),
            lost=lost,
            duplicated=duplicated,
            lost_files=tuple(lost_files),
        )
