"""The agent's control API: what `capsync status`, `capsync sync` and the data manager's documented
`Sync` and `DoCommand` calls do, as handlers for the control endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from capsync.actors.status_report import plain
from capsync.runtime.rpc import RpcError

if TYPE_CHECKING:
    from capsync.actors.agent import Agent


def agent_handlers(agent: Agent) -> dict[str, Any]:
    """Method name -> async handler(params) for the control endpoint of `agent`."""

    async def status(params: dict) -> dict:
        return plain(agent.statistics())

    async def sync(params: dict) -> dict:
        if agent.sync is None:
            raise RpcError("SyncOff", f"sync is off: {agent.sync_off_reason}")
        result = await agent.sync.sync_now()
        return {**plain(result), "summary": result.summary}

    async def do_command(params: dict) -> dict:
        command = params.get("command")
        if not isinstance(command, dict) or not command:
            raise RpcError("BadCommand", 'DoCommand takes {"command": {...}}; known commands: sync, status')
        out: dict[str, Any] = {}
        for key in command:
            if key == "sync":
                out["sync"] = await sync({})
            elif key == "status":
                out["status"] = await status({})
            else:
                raise RpcError("BadCommand", f"unknown command {key!r}; known commands: sync, status")
        return out

    return {"status": status, "sync": sync, "Sync": sync, "DoCommand": do_command}
