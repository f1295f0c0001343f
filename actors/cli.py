"""The `capsync` command line: run the agent, validate a config, inspect capture files.

Exit codes: 0 success, 1 runtime failure, 2 bad input (bad config, unreadable file, bad usage),
130 interrupted again while stopping.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

import trio

from capsync import __version__
from capsync.actors.agent import Agent
from capsync.actors.backlog_report import backlog_json, render_backlog
from capsync.actors.service_notify import notify_service_manager
from capsync.actors.status_line import status_line
from capsync.actors.status_report import render_status
from capsync.runtime import rpc
from capsync.cloud.cli import add_cloud_commands
from capsync.runtime.backlog import read_backlog, retry_set_aside
from capsync.runtime.capture_file import CaptureFormatError, contents_as_json_lines
from capsync.runtime.config import (ConfigError, DataManagerAttributes, control_target, load_config, log_warnings,
                                    parse_config)
from capsync.runtime.logs import LOG_LEVELS, configure_logging, log_level
from capsync.runtime.sd_notify import SdNotifier
from capsync.runtime.second_signal import EXIT_INTERRUPTED, exit_on_second_signal

log = logging.getLogger("capsync.cli")

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_CONTROL_ADDRESS = "127.0.0.1:8791"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `capsync` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    return args.func(args)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="capsync", description="Capture robot data and sync it to the cloud.")
    p.add_argument("--version", action="version", version=f"capsync {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent on a config until SIGINT/SIGTERM")
    run.add_argument("config", type=Path)
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    run.add_argument("--log-level", default="INFO", type=log_level, choices=LOG_LEVELS)
    run.add_argument("--status-interval", type=float, default=30.0, metavar="SECS",
                     help="log a status line this often (0: never)")
    run.add_argument("--strict", action="store_true", help="refuse to start when the config has warnings")
    run.add_argument("--metrics-address", type=_address, metavar="HOST:PORT",
                     help="serve Prometheus /metrics and /v1/health over HTTP there (default: off; "
                          "127.0.0.1:9791 keeps them on this machine)")
    run.add_argument("--notify", action="store_true",
                     help="speak sd_notify to systemd (a Type=notify unit): READY, STATUS, WATCHDOG, STOPPING")
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="check a config; exit 0 if good, 2 with every problem if not")
    val.add_argument("config", type=Path, nargs="+")
    val.add_argument("--strict", action="store_true", help="treat warnings as problems (exit 2)")
    val.set_defaults(func=cmd_validate)

    ins = sub.add_parser("inspect", help="print capture files as JSON lines (header, then records)")
    ins.add_argument("files", type=Path, nargs="+")
    ins.add_argument("--payload", action="store_true", help="include binary payloads (base64)")
    ins.set_defaults(func=cmd_inspect)

    for name, func, helptext in (
        ("status", cmd_status, "show what a running agent is doing"),
        ("sync", cmd_sync, "make a running agent sync now; waits for the pass and prints what it uploaded"),
    ):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("config", type=Path, nargs="?",
                       help="the agent's config: its network.bind_address and cloud.secret are used")
        c.add_argument("--address", help="HOST:PORT of the agent's control endpoint (default 127.0.0.1:8791)")
        c.add_argument("--secret", help="the part secret (needed when the agent is not on loopback)")
        c.add_argument("--json", action="store_true", help="print JSON instead of text")
        c.set_defaults(func=func)

    bl = sub.add_parser("backlog", help="list what waits to sync and what was set aside in failed/, with why")
    bl.add_argument("config", type=Path, nargs="?",
                    help="the agent's config (its capture_dir and additional_sync_paths); default: the default capture dir")
    bl.add_argument("--retry-failed", action="store_true",
                    help="put the files set aside in failed/ back to sync (safe while the agent runs)")
    bl.add_argument("--json", action="store_true", help="print JSON instead of text")
    bl.set_defaults(func=cmd_backlog)

    add_cloud_commands(sub)
    return p


def _address(value: str) -> tuple[str, int]:
    from capsync.actors.metrics_endpoint import split_address  # late: its HTTP server is only loaded when used

    try:
        return split_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_validate(args: argparse.Namespace) -> int:
    """`capsync validate CONFIG...`: print every problem with its JSON path."""
    code = EXIT_OK
    for path in args.config:
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            print(f"{path}: invalid", file=sys.stderr)
            for issue in exc.issues:
                print(f"  {issue}", file=sys.stderr)
            code = EXIT_BAD_INPUT
            continue
        plans = cfg.capture_plan()
        enabled = f"{len(plans)} capture method{'s' if len(plans) != 1 else ''} enabled"
        if cfg.warnings and args.strict:
            print(f"{path}: invalid with --strict ({enabled}; {_count(cfg.warnings, 'warning')})", file=sys.stderr)
            code = EXIT_BAD_INPUT
        else:
            print(f"{path}: ok ({enabled}" + (f"; {_count(cfg.warnings, 'warning')})" if cfg.warnings else ")"))
        for issue in cfg.warnings:
            print(f"  warning: {issue}", file=sys.stderr)
    return code


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''}"


def cmd_inspect(args: argparse.Namespace) -> int:
    """`capsync inspect FILE...`: header and records as JSON lines; damage is reported, not fatal."""
    code = EXIT_OK
    for path in args.files:
        try:
            for line in contents_as_json_lines(path, include_payload=args.payload):
                print(line)
        except (CaptureFormatError, OSError) as exc:
            print(f"capsync inspect: {exc}", file=sys.stderr)
            code = EXIT_BAD_INPUT
    return code


def _call_agent(args: argparse.Namespace, method: str) -> tuple[int, object]:
    """Call `method` on the agent that `args` names; (exit code, answer). With a config, the agent
    must be the one running that config file, not another agent on the same address."""
    try:
        target = control_target(args.config) if args.config is not None else None
    except ConfigError as exc:
        print(f"capsync {method}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT, None
    if target is not None and target.problems:
        print(f"capsync {method}: note: {args.config} has problems now ({target.problems[0]}); the agent keeps "
              "running its last good revision. Asking it with the file's network and cloud sections.",
              file=sys.stderr)
    address = args.address or (target.address if target else None) or DEFAULT_CONTROL_ADDRESS
    secret = args.secret or (target.secret if target else None)

    async def call() -> object:
        async with rpc.connect(address, secret=secret) as client:
            if target is not None:
                running = (await client.call("status")).get("config") or {}
                if running.get("path") and Path(running["path"]) != target.path:
                    raise WrongAgent(f"the agent at {address} runs {running['path']}, not {target.path}: another "
                                     "agent holds that address (give each agent its own network.bind_address)")
            return await client.call(method)

    try:
        return EXIT_OK, trio.run(call)
    except WrongAgent as exc:
        print(f"capsync {method}: {exc}", file=sys.stderr)
        return EXIT_FAILURE, None
    except rpc.RpcError as exc:
        hint = " (is `capsync run` running with this config?)" if exc.type == "Unreachable" else ""
        print(f"capsync {method}: {exc}{hint}", file=sys.stderr)
        return EXIT_FAILURE, None


class WrongAgent(Exception):
    """The agent answering at the config's address runs another config file."""


def cmd_status(args: argparse.Namespace) -> int:
    """`capsync status`: the running agent's collectors, sync, disk and MongoDB state."""
    code, status = _call_agent(args, "status")
    if code == EXIT_OK:
        print(json.dumps(status, indent=2) if args.json else render_status(status))
    return code


def cmd_sync(args: argparse.Namespace) -> int:
    """`capsync sync`: run a sync pass now and print what it uploaded; exit 1 unless every ready file went up."""
    code, result = _call_agent(args, "sync")
    if code == EXIT_OK:
        print(json.dumps(result, indent=2) if args.json else f"sync pass: {result['summary']}")
        if result.get("skipped") or result.get("failed") or result.get("cloud_error"):
            return EXIT_FAILURE
    return code


def cmd_backlog(args: argparse.Namespace) -> int:
    """`capsync backlog [CONFIG]`: waiting files by resource, set-aside files with why; `--retry-failed`."""
    dm = DataManagerAttributes()
    if args.config is not None:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(f"capsync backlog: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if cfg.data_manager is None:
            print(f"capsync backlog: {args.config} has no data_manager service: nothing is captured or synced",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        dm = cfg.data_manager
    capture_dir = dm.capture_dir_path()
    sync_paths = [Path(p).expanduser() for p in dm.additional_sync_paths]
    retried = retry_set_aside(capture_dir, sync_paths) if args.retry_failed else None
    backlog = read_backlog([capture_dir], sync_paths)
    print(json.dumps(backlog_json(backlog, retried), indent=2) if args.json else render_backlog(backlog, retried))
    return EXIT_FAILURE if retried and any(r.error for r in retried) else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """`capsync run CONFIG`: capture until SIGINT/SIGTERM, then finish every open file and exit 0."""
    configure_logging(args.log_format, args.log_level)
    try:
        text = args.config.read_text(encoding="utf-8")
        config = parse_config(text, source=str(args.config))
    except OSError as exc:
        log.error("cannot read config", extra={"config": str(args.config), "error": str(exc)})
        return EXIT_BAD_INPUT
    except ConfigError as exc:
        for issue in exc.issues:
            log.error("invalid config", extra={"config": str(args.config), "where": issue.path,
                                               "problem": issue.message})
        return EXIT_BAD_INPUT
    log_warnings(config, log)
    if config.warnings and args.strict:
        log.error("not starting: the config has warnings and --strict is set",
                  extra={"config": str(args.config), "warnings": len(config.warnings)})
        return EXIT_BAD_INPUT
    agent = Agent(config, config_path=args.config, config_text=text, metrics_address=args.metrics_address)
    notifier = SdNotifier() if args.notify else None
    if notifier is not None and not notifier.enabled:
        log.warning("--notify: NOTIFY_SOCKET is not set (not started by systemd as a Type=notify unit); "
                    "nothing will be sent")
    try:
        trio.run(_run_until_signal, agent, args.status_interval, notifier)
    except KeyboardInterrupt:  # a second Ctrl-C just as the stop ended (during it: _say_interrupted)
        _say_interrupted()
        return EXIT_INTERRUPTED
    except Exception:
        log.exception("agent failed")
        return EXIT_FAILURE
    return EXIT_OK


async def _run_until_signal(agent: Agent, status_interval: float, notifier: SdNotifier | None = None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            if status_interval > 0:
                nursery.start_soon(_log_status, agent, status_interval)
            if notifier is not None and notifier.enabled:
                nursery.start_soon(notify_service_manager, agent, notifier)
            async for signum in signals:
                if notifier is not None:
                    notifier.send(STOPPING=1, STATUS="stopping: finishing open capture files")
                log.info("stopping: finishing open capture files", extra={"signal": signal.Signals(signum).name})
                exit_on_second_signal(signals, _say_interrupted)
                nursery.cancel_scope.cancel()
                break
    stats = agent.statistics()
    log.info("stopped", extra={"captured": stats.captured, "failed": stats.failed,
                               "files": stats.files_finished, "bytes": stats.bytes_written})


def _say_interrupted() -> None:
    log.warning("interrupted again while stopping; the next start recovers every open capture file")


async def _log_status(agent: Agent, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        log.info(status_line(agent.statistics()))


if __name__ == "__main__":
    sys.exit(main())
