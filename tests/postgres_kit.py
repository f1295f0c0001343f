"""A throwaway PostgreSQL server for the tests: Debian's binaries, a temp cluster, a free port.

`server()` starts one cluster per test process on first use (initdb into a temp dir, run as a
non-root user because PostgreSQL refuses root: the `postgres` user Debian's package creates, else
`nobody`), listening on 127.0.0.1 at a free port with its unix socket in the temp dir, and stops it
when the process exits. The `postgres_server` fixture is the same server, session-scoped. A test
skips, with the reason, only when no server can be started here (no binaries, no non-root user).

Logins: local (unix socket) connections are trusted; TCP connections need a password
(scram-sha-256), so the store's per-part SQL logins are tested with real passwords. The cluster
has a superuser `postgres` and a store role `capsync` (LOGIN CREATEROLE, owner of the database
`capsync`): the privileges docs/cloud.md says the store needs, no more.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

STORE_ROLE, STORE_PASSWORD, DATABASE = "capsync", "capsync-test-password", "capsync"
_START_TIMEOUT_S = 30.0


def _bindir() -> Path | None:
    """The newest installed PostgreSQL's bin dir (Debian: /usr/lib/postgresql/<version>/bin)."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    if found:
        return max(found, key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as: ourselves when not root, else `postgres` or `nobody`."""
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    return None


@dataclass
class PostgresServer:
    """A running throwaway cluster: where it listens and how to reach it."""

    root: Path
    port: int
    process: subprocess.Popen
    bindir: Path = Path()
    as_user: dict = field(default_factory=dict)
    last_error: str = ""
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def launch(self) -> None:
        """Start the server process on the cluster (again, after a stop that kept its files)."""
        with open(self.root / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.root / "data"), "-p", str(self.port),
                 "-k", self.socket_dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200",
                 "-c", "shared_buffers=32MB"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True, **self.as_user)

    def wait_ready(self, first_use=None) -> bool:
        """Wait until the server takes connections (running `first_use(self)` once it does)."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if first_use is not None:
                    first_use(self)
                else:
                    self.admin().close()
                return True
            except Exception as exc:  # not accepting connections yet
                self.last_error = str(exc)
                time.sleep(0.1)
        return False

    def kill_process(self) -> None:
        """Stop the server at once (fast shutdown: every session is cut), keeping its files."""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=20)

    @property
    def socket_dir(self) -> str:
        """The directory of its unix socket."""
        return str(self.root / "sock")

    def url(self, user: str = STORE_ROLE, password: str | None = STORE_PASSWORD, database: str = DATABASE) -> str:
        """A postgresql:// URL over TCP (127.0.0.1) for `user`."""
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def admin(self, database: str = "postgres"):
        """A psycopg connection as the superuser over the unix socket (autocommit)."""
        import psycopg

        return psycopg.connect(host=self.socket_dir, port=self.port, user="postgres", dbname=database,
                               autocommit=True)

    @contextmanager
    def fresh_schema(self) -> Iterator[str]:
        """A schema name no test used yet; afterwards its tables, its SQL schema and its roles are dropped."""
        name = self.unique("t")
        try:
            yield name
        finally:
            self.drop_schema(name)

    def drop_schema(self, schema: str) -> None:
        """Drop a store's schema, its `<schema>_sql` schema and the SQL roles it created."""
        from psycopg import sql

        with self.admin(DATABASE) as db:
            roles: list[str] = []
            if db.execute("SELECT to_regclass(%s)", (f"{schema}.sql_roles",)).fetchone()[0] is not None:
                roles = [r[0] for r in db.execute(sql.SQL("SELECT role_name FROM {}.sql_roles").format(
                    sql.Identifier(schema)))]
                roles += [r[0] for r in db.execute(sql.SQL("SELECT value FROM {}.meta WHERE key = 'sql_group'").format(
                    sql.Identifier(schema)))]
            for name in (schema, f"{schema}_sql"):
                db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
            for role in roles:
                db.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

    def unique(self, prefix: str) -> str:
        """A name no other test of this process has used (for schemas, databases, roles)."""
        return f"{prefix}_{os.getpid()}_{next(self._counter)}"

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove the cluster's files."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _setup(srv: PostgresServer) -> None:
    with srv.admin() as db:
        db.execute(f"CREATE ROLE {STORE_ROLE} LOGIN CREATEROLE PASSWORD '{STORE_PASSWORD}'")
        db.execute(f"CREATE DATABASE {DATABASE} OWNER {STORE_ROLE}")


def start() -> PostgresServer:
    """initdb a new cluster in a temp dir and start it; raises RuntimeError with the reason if it cannot."""
    bindir = _bindir()
    if bindir is None:
        raise RuntimeError("no PostgreSQL binaries (apt-get install postgresql; ./scripts/test does it)")
    who = _run_as()
    if who is None:
        raise RuntimeError("running as root and no `postgres` or `nobody` user to run PostgreSQL as")
    uid, gid = who
    # Not under pytest's tmp dir: that is 0700 root's, which the server's user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="capsync-pg-"))
    (root / "sock").mkdir()
    pwfile = root / "pw"
    pwfile.write_text("postgres-test-password\n")
    for p in (root, root / "sock", pwfile):
        os.chown(p, uid, gid)
    as_user = {"user": uid, "group": gid, "extra_groups": []} if os.geteuid() == 0 else {}
    try:
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--pwfile", str(pwfile),
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"],
            check=True, capture_output=True, timeout=120, cwd=root, **as_user)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        out = getattr(exc, "stderr", b"") or b""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {exc} {out.decode(errors='replace')[-500:]}") from None
    last_error = ""
    for _ in range(5):  # a free port can be taken between finding it and binding it
        srv = PostgresServer(root, _free_port(), None, bindir=bindir, as_user=as_user)  # type: ignore[arg-type]
        srv.launch()
        if srv.wait_ready(_setup):
            return srv
        if srv.process.poll() is None:
            srv.process.kill()
            srv.process.wait()
        last_error = (root / "server.log").read_text(errors="replace")[-500:] or srv.last_error
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"PostgreSQL did not start: {last_error}")


_lock = threading.Lock()
_server: PostgresServer | None = None
_failure: str | None = None


def server() -> PostgresServer:
    """This test process's server, started on first use; skips the calling test when it cannot start."""
    global _server, _failure
    with _lock:
        if _server is None and _failure is None:
            try:
                _server = start()
                atexit.register(_server.stop)
            except RuntimeError as exc:
                _failure = str(exc)
        if _server is None:
            pytest.skip(f"no PostgreSQL server for the tests: {_failure}")
        return _server


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """The throwaway PostgreSQL server (session-scoped; stopped when the test process ends)."""
    return server()
