"""`capsync cloud serve --workers N`: N cloud processes on one machine, so that one node uses its cores.

One `serve` process runs the app on one event loop, and a loaded cloud is bound by that one core
(HTTP parsing, CBOR parsing and row encoding are Python). With `--workers N` the `serve` process
becomes a parent that:

- binds the listening socket itself, so a port in use fails once and plainly, and port 0 is one port;
- starts N workers, `python -m capsync cloud serve ... --worker K --listen-fd FD` (K = 0..N-1), that
  inherit that socket and accept from it (the kernel hands each new connection to one of them);
- prints `capsync cloud listening on URL` once every worker listens, and exits 1 if one cannot start;
- restarts a worker that dies, after a backoff, and says so in an error line;
- on SIGINT or SIGTERM stops every worker gracefully (each finishes its requests in flight), then
  exits 0; a second signal kills them and exits 130. The workers run in sessions of their own, so
  that a terminal's Ctrl-C reaches only the parent; a worker stops on its first SIGTERM and ignores
  SIGINT and further SIGTERMs (the parent owns the hard stop).

The workers share what a cloud keeps: the database (SQLite in WAL mode in --data-dir, or --store)
and the file bytes (the data dir, which LocalBlobs makes safe to share, or --blobs), exactly as
several cloud processes on one PostgreSQL and one object store do (docs/cloud.md). What stays per
worker: the sign-in failure budget, the 2 s usage cache behind quotas, and group commit (each
worker groups its own commits; SQLite serializes the workers' transactions). Only worker 0 runs the
retention sweep. `/metrics` answers for all workers together (prometheus_client's multiprocess
mode). A worker whose parent dies stops on its own: it watches its stdin, a pipe from the parent.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import trio

from capsync.cloud.metrics import MULTIPROCESS_DIR_ENV
from capsync.runtime.backoff import Backoff
from capsync.runtime.second_signal import exit_on_second_signal

log = logging.getLogger("capsync.cloud.workers")

#: Seconds a stopping worker gets (its own graceful stop is 5 s) before it is killed.
STOP_TIMEOUT_S = 15.0
#: A worker that ran this long before it died restarts after the shortest backoff again.
HEALTHY_AFTER_S = 60.0
_RESTARTS = Backoff(initial=0.5, cap=30.0)
#: How `serve` announces its URL on stdout (a worker's line marks it ready for the parent).
LISTENING_PREFIX = "capsync cloud listening on "


def bind_listener(host: str, port: int) -> socket.socket:
    """The listening TCP socket every worker accepts from (raises OSError, e.g. EADDRINUSE)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def worker_argv(args: argparse.Namespace, index: int, fd: int) -> list[str]:
    """The command line of worker `index`: every `serve` option of `args`, plus --worker and --listen-fd.

    tests/test_cloud_workers.py checks that it carries every option `serve` has."""
    argv = [sys.executable, "-m", "capsync", "cloud", "serve", "--data-dir", str(args.data_dir),
            "--host", args.host, "--port", str(args.port), "--workers", str(args.workers),
            "--worker", str(index), "--listen-fd", str(fd)]
    for name in ("tls_cert", "tls_key", "store", "mongodb_uri", "blobs"):
        value = getattr(args, name)
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    for name in ("max_inflight_bytes", "max_inflight_uploads", "max_stored_bytes", "min_free_bytes",
                 "upload_expiry_days", "log_format", "log_level"):
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for proxy in args.trusted_proxy:
        argv += ["--trusted-proxy", proxy]
    return argv


def become_worker(index: int) -> None:
    """In worker `index`: add `worker=K` to every log line (the workers' lines interleave), and
    leave SIGINT to the parent, which stops the workers with one SIGTERM each."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def add(record: logging.LogRecord) -> bool:
        record.worker = index
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(add)


async def stop_when_parent_dies(cancel: trio.CancelScope) -> None:
    """In a worker: cancel `cancel` (a graceful stop) once stdin, the parent's pipe, reaches its end."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stream:
        while await stream.receive_some(1024):
            pass
    log.warning("the parent `serve` process is gone; stopping")
    cancel.cancel()


@dataclass
class _Worker:
    index: int
    argv: list[str]
    process: trio.Process | None = None
    started_at: float = 0.0
    attempt: int = 0
    ready: trio.Event = field(default_factory=trio.Event)


class WorkerPool:
    """The parent of `serve --workers N`: starts, watches, restarts and stops the workers (module doc)."""

    def __init__(self, args: argparse.Namespace, sock: socket.socket, env: dict[str, str]) -> None:
        self.sock = sock
        self.env = env
        self.workers = [_Worker(k, worker_argv(args, k, sock.fileno())) for k in range(args.workers)]
        self.stopping = False
        self.failed_to_start: int | None = None  # the exit code of a worker that never listened
        #: Set once every worker listens, or once one of them exited before it did.
        self.settled = trio.Event()

    async def run(self) -> None:
        """Keep every worker running until cancelled (or until one fails to start: `failed_to_start`)."""
        async with trio.open_nursery() as nursery:
            for w in self.workers:
                nursery.start_soon(self._keep, w, nursery.cancel_scope)
            for w in self.workers:
                await w.ready.wait()
            self.settled.set()

    async def stop(self) -> None:
        """SIGTERM every worker, and SIGKILL what still runs after STOP_TIMEOUT_S."""
        self.stopping = True
        running = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        for p in running:
            p.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT_S) as waited:
            for p in running:
                await p.wait()
        if waited.cancelled_caught:
            log.error("workers did not stop in time; killing them", extra={"timeout_s": STOP_TIMEOUT_S})
            self.kill()

    def kill(self) -> None:
        """SIGKILL every worker still running (a second Ctrl-C)."""
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                w.process.kill()

    async def _keep(self, w: _Worker, everything: trio.CancelScope) -> None:
        while True:
            code = await self._run_once(w)
            if self.stopping:
                return
            if not w.ready.is_set():  # it never listened: a bad store, an unusable data dir...
                self.failed_to_start = code
                self.settled.set()
                everything.cancel()
                return
            lived = trio.current_time() - w.started_at
            w.attempt = 0 if lived >= HEALTHY_AFTER_S else w.attempt + 1
            delay = _RESTARTS.delay(w.attempt)
            log.error("cloud worker died; restarting it", extra={"worker": w.index, "exit_code": code,
                                                                  "lived_s": round(lived, 1), "restart_in_s": round(delay, 2)})
            await trio.sleep(delay)

    async def _run_once(self, w: _Worker) -> int:
        w.started_at = trio.current_time()
        process = await trio.lowlevel.open_process(
            w.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=self.env,
            pass_fds=(self.sock.fileno(),),
            start_new_session=True)  # a terminal's Ctrl-C or a group kill reaches the parent, which stops them once
        w.process = process
        try:
            await self._read_stdout(w, process)
            return await process.wait()
        finally:
            if process.returncode is None:  # cancelled (the parent is stopping hard)
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
            if process.stdin is not None:
                with trio.CancelScope(shield=True):
                    await process.stdin.aclose()

    async def _read_stdout(self, w: _Worker, process: trio.Process) -> None:
        """Pass the worker's stdout on, except its "listening" line, which marks it ready."""
        assert process.stdout is not None
        pending = b""
        async with process.stdout:
            while chunk := await process.stdout.receive_some(4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace")
                    if text.startswith(LISTENING_PREFIX):
                        w.ready.set()
                    else:
                        print(text, flush=True)


def run_parent(args: argparse.Namespace, url_of: Callable[[int], str], say_interrupted: Callable[[], None]) -> int:
    """`serve --workers N` (N > 1): bind, run the pool until SIGINT/SIGTERM; the exit code.

    `url_of(port)` is the URL to announce; OSError when the socket cannot be bound."""
    sock = bind_listener(args.host, args.port)
    metrics_dir = tempfile.mkdtemp(prefix="capsync-metrics-")
    pool = WorkerPool(args, sock, {**os.environ, MULTIPROCESS_DIR_ENV: metrics_dir})
    try:
        return trio.run(_parent_main, pool, url_of(sock.getsockname()[1]), say_interrupted)
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


async def _parent_main(pool: WorkerPool, url: str, say_interrupted: Callable[[], None]) -> int:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run)
            nursery.start_soon(_announce, pool, url, nursery.cancel_scope)
            async for signum in signals:
                log.info("stopping", extra={"signal": signal.Signals(signum).name})

                def interrupted() -> None:
                    pool.kill()
                    say_interrupted()

                exit_on_second_signal(signals, interrupted)
                await pool.stop()
                nursery.cancel_scope.cancel()
                break
    return 1 if pool.failed_to_start is not None else 0


async def _announce(pool: WorkerPool, url: str, everything: trio.CancelScope) -> None:
    await pool.settled.wait()
    if pool.failed_to_start is not None:
        log.error("a cloud worker could not start; stopping the others", extra={"exit_code": pool.failed_to_start})
        everything.cancel()
        return
    print(f"{LISTENING_PREFIX}{url}", flush=True)
    log.info("cloud workers listening", extra={"url": url, "workers": len(pool.workers),
                                               "pids": [w.process.pid for w in pool.workers if w.process]})
