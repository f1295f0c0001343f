"""The demo: runs the agent on `configs/demo.json` and prints a live one-line status every second.

Run it with `./scripts/demo`; stop it with Ctrl-C (every open capture file is finished first).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import trio

from actors.agent import Agent
from actors.status_line import status_line
from runtime.config import ConfigError, load_config
from runtime.logs import configure_logging

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.json"


async def _show_status(agent: Agent, out, interval: float = 1.0) -> None:
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


async def _demo(config_path: Path, out) -> None:
    agent = Agent(load_config(config_path))
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            out.write(f"capsync demo: capturing into {agent.capture_dir} (Ctrl-C to stop)\n")
            nursery.start_soon(_show_status, agent, out)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    stats = agent.statistics()
    out.write(f"\nstopped cleanly: {status_line(stats)}\n")


def main(argv: list[str] | None = None) -> int:
    """Run the demo until Ctrl-C."""
    p = argparse.ArgumentParser(prog="capsync-demo", description=__doc__)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    args = p.parse_args(argv)
    configure_logging("text", "WARNING")
    try:
        trio.run(_demo, args.config, sys.stdout)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
