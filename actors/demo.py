"""The demo: an embedded cloud plus an agent on `configs/demo.json` (or `--config` another), with a live
one-line status. The cloud keeps its port and the part its secret from one run to the next.

Run it with `./scripts/demo`; stop it with Ctrl-C (every open capture file is finished first).
Data lives under `.demo/`: the cloud's store in `.demo/cloud`, capture files in `.demo/capture`.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import socket
import sys
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import trio

from capsync.actors.agent import Agent
from capsync.actors.status_line import status_line
from capsync.cloud.app import DB_NAME
from capsync.cloud.auth import new_secret
from capsync.cloud.part_admin import PartAdmin
from capsync.cloud.server import serve
from capsync.cloud.sqlite_store import SqliteStore
from capsync.runtime.config import ConfigError, RobotConfig, load_config
from capsync.runtime.logs import configure_logging

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "demo.json"
DEMO_DIR = Path(".demo")  # in the current dir, like the example configs' capture_dir (scripts/demo runs from the repo)
DEFAULT_PORT = 8787


async def register_part(data_dir: Path, part_id: str, secret: str | None) -> str:
    """Make `part_id` in the cloud store at `data_dir` answer to `secret`, and return the secret.

    The secret stays the same from one demo run to the next, so a browser tab or a `capsync run`
    of the same config keeps working: the config's `cloud.secret` when it has one, else one made
    at the first run and kept in `<data_dir>/demo-secrets/<part_id>`.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)  # the demo's own cloud dir holds part secrets: its owner's only, as serve makes it
    if not secret:
        kept = data_dir / "demo-secrets" / part_id
        if not kept.exists():
            kept.parent.mkdir(mode=0o700, exist_ok=True)
            kept.write_text(new_secret())
            kept.chmod(0o600)
        secret = kept.read_text().strip()
    store = SqliteStore(data_dir / DB_NAME)
    try:
        if not await store.verify_part(part_id, secret):
            exists = await PartAdmin(store).lookup(part_id) is not None
            await store.add_part(part_id, secret, rotate=exists)
    finally:
        store.close_sync()
    return secret


def demo_port(config: RobotConfig, asked: int | None) -> int:
    """The cloud's port: `--port`, else the port of the config's loopback `app_address`, else 8787."""
    if asked is not None:
        return asked
    url = urlsplit(config.cloud.app_address or "")
    if url.hostname in ("127.0.0.1", "localhost", "::1") and url.port:
        return url.port
    return DEFAULT_PORT


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is free
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


async def _demo(config_path: Path, asked_port: int | None, out: TextIO) -> None:
    config = load_config(config_path)
    part_id = config.cloud.id or "demo-part"
    secret = await register_part(DEMO_DIR / "cloud", part_id, config.cloud.secret)
    port = demo_port(config, asked_port)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            if port and not _port_free(port):  # taken (another demo?): any free one will do
                out.write(f"capsync demo: port {port} is in use; the cloud takes another one\n")
                port = 0
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
    p.add_argument("--port", type=int, default=None,
                   help="cloud port (default: the config's loopback app_address port, else 8787; 0: any free port)")
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
