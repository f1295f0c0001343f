"""PowerCutFS: mount the power-cut file system from a test, cut its power, mount it again.

    fs = PowerCutFS(tmp / "disk", tmp / "mnt")
    fs.mount()                   # its own process serves tmp/mnt over tmp/disk
    ...                          # run programs whose files live under tmp/mnt
    report = fs.cut(torn=True)   # kill those programs first: a cut unmounts under them
    fs.mount()                   # the next mount starts from the durable state

Synchronous, like the tests that drive real processes. See docs/simulation.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from capsync.runtime.powercut.model import CutReport


class PowerCutError(RuntimeError):
    """The power-cut file system could not mount or did not answer; the message says why."""


@dataclass(frozen=True)
class PowerCutStats:
    """A snapshot of a mounted power-cut file system."""

    fsyncs: int  # fsync/fdatasync of files
    dir_fsyncs: int
    writes: int
    unsynced_bytes: int  # written since each file's last fsync
    nodes: int  # files and directories the model tracks (live or still named durably)


def fuse_unavailable() -> str | None:
    """Why a FUSE file system cannot be mounted here, or None if it can (pyfuse3, /dev/fuse, root
    or fusermount3). Tests skip with this reason."""
    try:
        import pyfuse3  # noqa: F401
    except ImportError as exc:
        return (f"pyfuse3 is not installed ({exc}); ./scripts/test builds it (pip install -e '.[powercut]') "
                "where libfuse3-dev and a compiler are available")
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (no FUSE in this kernel or container)"
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "not root and no fusermount3 (apt-get install fuse3)"
    return None


class PowerCutFS:
    """The power-cut file system at `mountpoint` over `backing`, in a process of its own
    (capsync.runtime.powercut.daemon). `log` receives libfuse's and the process's stderr."""

    def __init__(self, backing: Path, mountpoint: Path, *, log: Path | None = None) -> None:
        self.backing = Path(backing)
        self.mountpoint = Path(mountpoint)
        self.log = log
        self._proc: subprocess.Popen | None = None
        self._log_file: IO[bytes] | None = None
        self._lock = threading.Lock()
        #: Power cuts so far.
        self.cuts = 0

    @property
    def mounted(self) -> bool:
        """True while its process serves the mount."""
        return self._proc is not None and self._proc.poll() is None

    def mount(self, timeout: float = 20.0) -> None:
        """Start the process and wait until the mount serves; PowerCutError if it cannot."""
        if self.mounted:
            raise PowerCutError(f"{self.mountpoint}: already mounted")
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        _force_unmount(self.mountpoint)  # left by a file system process that was killed
        if self.log is not None:
            self._log_file = open(self.log, "ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "capsync.runtime.powercut", "--backing", str(self.backing),
             "--mountpoint", str(self.mountpoint)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log_file if self._log_file is not None else subprocess.DEVNULL,
            env=_child_env())
        msg = self._read(timeout)
        if msg.get("event") != "mounted":
            self._reap()
            raise PowerCutError(f"power-cut file system did not mount {self.mountpoint}: {msg}")

    def statistics(self) -> PowerCutStats:
        """Counters of the mounted file system."""
        msg = self._ask({"cmd": "stats"}, "stats")
        return PowerCutStats(msg["fsyncs"], msg["dir_fsyncs"], msg["writes"], msg["unsynced_bytes"], msg["nodes"])

    def cut(self, torn: bool = False, seed: int | None = None, timeout: float = 60.0) -> CutReport:
        """Cut the power: freeze, unmount, and leave the backing folder holding only what was
        durable (with `torn`, each file keeps a random-length prefix of its unsynced writes, drawn
        from `seed`). Kill the programs using the mount first."""
        msg = self._ask({"cmd": "cut", "torn": torn, "seed": seed}, "cut", timeout)
        self._reap()
        self.cuts += 1
        return CutReport.from_dict(msg["report"])

    def unmount(self, timeout: float = 30.0) -> None:
        """Unmount keeping everything (a clean shutdown)."""
        if self.mounted:
            self._ask({"cmd": "unmount"}, "unmounted", timeout)
        self._reap()

    def __enter__(self) -> PowerCutFS:
        self.mount()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unmount if mounted; kill the process if it does not answer."""
        try:
            self.unmount()
        except PowerCutError:
            self._reap()

    # --- internals --------------------------------------------------------------------------------

    def _ask(self, cmd: dict, want: str, timeout: float = 30.0) -> dict:
        with self._lock:
            if not self.mounted:
                raise PowerCutError(f"{self.mountpoint}: not mounted")
            assert self._proc is not None and self._proc.stdin is not None
            self._proc.stdin.write((json.dumps(cmd) + "\n").encode())
            self._proc.stdin.flush()
            msg = self._read(timeout)
        if msg.get("event") != want:
            raise PowerCutError(f"{self.mountpoint}: {cmd['cmd']} answered {msg}")
        return msg

    def _read(self, timeout: float) -> dict:
        assert self._proc is not None and self._proc.stdout is not None
        out: list[bytes] = []
        t = threading.Thread(target=lambda: out.append(self._proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not out:
            self._kill()
            raise PowerCutError(f"{self.mountpoint}: no answer from the power-cut file system in {timeout:g} s")
        if not out[0]:
            code = self._proc.wait(timeout=10)
            return {"event": "exited", "code": code, "log": str(self.log)}
        return json.loads(out[0])

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
            for f in (self._proc.stdin, self._proc.stdout):
                if f is not None:
                    f.close()
            self._proc = None
            _force_unmount(self.mountpoint)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _child_env() -> dict[str, str]:
    """The environment with this process's import path, so the child imports the same capsync."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def _force_unmount(mountpoint: Path) -> None:
    """Detach a mount left behind at `mountpoint` (quietly: usually there is none)."""
    if not os.path.ismount(mountpoint):
        try:
            os.stat(mountpoint)
            return
        except OSError:
            pass  # "Transport endpoint is not connected": a dead FUSE mount
    for argv in (["fusermount3", "-u", "-z", str(mountpoint)], ["umount", "-l", str(mountpoint)]):
        if shutil.which(argv[0]):
            subprocess.run(argv, capture_output=True, timeout=30)
            return
