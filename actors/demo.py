"""The demo: an embedded cloud plus an agent on `configs/demo.json`, with a live one-line status.

Run it with `./scripts/demo`; stop it with Ctrl-C (every open capture file is finished first).
Data lives under `.demo/`: the cloud's store in `.demo/cloud`, capture files in `.demo/capture`.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path
from typing import TextIO

import trio

from capsync.actors.agent import Agent
from capsync.actors.status_line import status_line
from capsync.cloud.app import DB_NAME
from capsync.cloud.auth import new_secret
from capsync.cloud.server import serve
from capsync.cloud.sqlite_store import SqliteStore
from capsync.runtime.config import ConfigError, load_config
from capsync.runtime.logs import configure_logging

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "demo.json"
DEMO_DIR = ROOT / ".demo"


def register_part(data_dir: Path, part_id: str) -> str:
    """Register (or re-key) `part_id` in the cloud store at `data_dir`; returns its new secret."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(data_dir / DB_NAME)
    secret = new_secret()
    try:
        try:
            store.add_part_sync(part_id, secret)
        except Exception:  # already registered by an earlier demo run: give it a fresh secret
            store.add_part_sync(part_id, secret, rotate=True)
    finally:
        store.close_sync()
    return secret


async def _show_status(agent: Agent, out: TextIO, interval: float = 1.0) -> None:
    last, last_t = 0, trio.current_time()
    live = out.isatty()
    while True:
        await trio.sleep(interval)
        stats = agent.statistics()
        now = trio.current_time()
        rate = (stats.captured - last) / (now - last_t)
        last, last_t = stats.captured, now
        line = status_line(stats, rate)
        out.write(("\r\x1b[2K" + line) if live else line + "\n")
        out.flush()


async def _demo(config_path: Path, port: int, out: TextIO) -> None:
    config = load_config(config_path)
    part_id = config.cloud.id or "demo-part"
    secret = await trio.to_thread.run_sync(register_part, DEMO_DIR / "cloud", part_id)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve, DEMO_DIR / "cloud", "127.0.0.1", port)
            url = f"http://127.0.0.1:{bound}"
            cloud = config.cloud.model_copy(update={"id": part_id, "secret": secret, "app_address": url})
            agent = Agent(dataclasses.replace(config, cloud=cloud))
            await nursery.start(agent.run)
            out.write(f"capsync demo: cloud at {url} (data in {DEMO_DIR / 'cloud'}), capturing into "
                      f"{agent.capture_dir}\n  query it: curl -u {part_id}:{secret} {url}/v1/files\n"
                      "  Ctrl-C to stop\n")
            nursery.start_soon(_show_status, agent, out)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    out.write(f"\nstopped cleanly: {status_line(agent.statistics())}\n")


def main(argv: list[str] | None = None) -> int:
    """Run the demo until Ctrl-C."""
    p = argparse.ArgumentParser(prog="capsync-demo", description=__doc__)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--port", type=int, default=0, help="cloud port (default: any free port)")
    args = p.parse_args(argv)
    configure_logging("text", "WARNING")
    try:
        trio.run(_demo, args.config, args.port, sys.stdout)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
