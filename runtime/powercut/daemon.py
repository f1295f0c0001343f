"""The power-cut file system's own process: mounts, serves, and obeys its controller.

    python -m capsync.runtime.powercut --backing DIR --mountpoint DIR

It prints one JSON line when mounted (``{"event": "mounted"}``), then reads one JSON command per
line on stdin and answers each with one JSON line on stdout:

- ``{"cmd": "stats"}`` -> ``{"event": "stats", ...}``: fsyncs, directory fsyncs, writes, unsynced bytes;
- ``{"cmd": "cut", "torn": true, "seed": 7}`` -> freeze, unmount, leave the backing folder holding only
  the durable state (a torn write per file with "torn"), answer ``{"event": "cut", "report": {...}}``, exit;
- ``{"cmd": "unmount"}`` (or end of stdin) -> unmount keeping everything, answer, exit.

It runs in a process of its own because FUSE requests must be served while the programs under
test (and the test itself) do file I/O on the mount.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

import pyfuse3
import trio

from capsync.runtime.powercut.fs import PowerCutOperations
from capsync.runtime.powercut.model import DurableModel


def _say(msg: dict) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


async def _control(ops: PowerCutOperations, outcome: dict) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buf = b""
    while True:
        chunk = await stdin.receive_some(4096)
        if not chunk:
            outcome["cmd"] = {"cmd": "unmount"}
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                cmd = json.loads(line)
            except ValueError:
                _say({"event": "error", "error": f"not JSON: {line[:80]!r}"})
                continue
            if cmd.get("cmd") == "stats":
                m = ops.model
                _say({"event": "stats", "fsyncs": m.fsyncs, "dir_fsyncs": m.dir_fsyncs, "writes": ops.writes,
                      "unsynced_bytes": m.unsynced_bytes(), "nodes": len(m.nodes)})
            elif cmd.get("cmd") in ("cut", "unmount"):
                outcome["cmd"] = cmd
                ops.freeze()
                pyfuse3.terminate()
                return
            else:
                _say({"event": "error", "error": f"unknown command {cmd!r}"})
    ops.freeze()
    pyfuse3.terminate()


async def _serve(ops: PowerCutOperations, outcome: dict) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_control, ops, outcome)
        _say({"event": "mounted", "pid": os.getpid()})
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    """Mount, serve until told to cut or unmount, do it, exit 0."""
    p = argparse.ArgumentParser(prog="python -m capsync.runtime.powercut", description=__doc__.split("\n\n")[0])
    p.add_argument("--backing", required=True, help="folder that holds the files")
    p.add_argument("--mountpoint", required=True, help="empty folder to mount on")
    p.add_argument("--debug", action="store_true", help="libfuse debug output on stderr")
    args = p.parse_args(argv)
    model = DurableModel(os.fsencode(args.backing))
    ops = PowerCutOperations(model)
    options = set(pyfuse3.default_options) | {"fsname=capsync-powercut", "subtype=powercut"}
    if args.debug:
        options.add("debug")
    try:
        pyfuse3.init(ops, args.mountpoint, options)
    except RuntimeError as exc:
        _say({"event": "error", "error": f"cannot mount {args.mountpoint}: {exc}"})
        return 1
    outcome: dict = {}
    try:
        trio.run(_serve, ops, outcome)
    finally:
        pyfuse3.close(unmount=True)
        ops.close_files()
    cmd = outcome.get("cmd", {"cmd": "unmount"})
    if cmd["cmd"] == "cut":
        report = model.cut(random.Random(cmd.get("seed")) if cmd.get("torn") else None)
        _say({"event": "cut", "report": report.to_dict()})
    else:
        model.discard()
        _say({"event": "unmounted"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
