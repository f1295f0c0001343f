"""nginx (Debian's package) in front of test processes, on the example config users run.

`start_nginx(kit, root, upstream_ports)` renders configs/nginx-capsync-cloud.conf with the test's
ports, a certificate made here by `openssl` (a throwaway CA, `make_pki`) and an access log in
`root`, includes it from a main config of its own (no daemon, pid, error log and temp files in
`root`, nothing in /etc or /var), checks it with `nginx -t`, and runs nginx as a child of the
ProcessKit (stopped with it). `Nginx.requests()` reads the access log back: which process served
each request, or failed it. `NginxUnavailable` says why nginx cannot run here (not installed, no
openssl, a config or start failure); the caller falls back to tests/roundrobin_proxy.py.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.processkit import REPO, Process, ProcessKit

EXAMPLE = REPO / "configs" / "nginx-capsync-cloud.conf"
_START_TIMEOUT_S = 15.0
#: nginx's temp folders (each would default to /var/lib/nginx/...).
_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class NginxUnavailable(RuntimeError):
    """nginx cannot run here; the message says why."""


@dataclass(frozen=True)
class Pki:
    """A CA and a certificate it signed for 127.0.0.1 and localhost (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_pki(directory: Path) -> Pki:
    """Make a throwaway CA and a server certificate for 127.0.0.1 and localhost with `openssl`."""
    if shutil.which("openssl") is None:
        raise NginxUnavailable("no openssl to make the test certificate")
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=capsync test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")
    return Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key")


def _rewrite(text: str, pattern: str, replacement: str) -> str:
    """Replace the one line of the example that matches `pattern`; AssertionError if not exactly one."""
    new, n = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert n == 1, f"{EXAMPLE.name}: expected one line matching {pattern!r}, found {n} (keep the 'test rewrites' lines)"
    return new


def render_site(text: str, *, upstream_ports: list[int], listen_port: int, pki: Pki, access_log: Path) -> str:
    """The example site config with the test's ports, certificate and access log; nothing else changed."""
    first, second = upstream_ports
    text = _rewrite(text, r"server 127\.0\.0\.1:8787 ", f"server 127.0.0.1:{first} ")
    text = _rewrite(text, r"server 127\.0\.0\.1:8788 ", f"server 127.0.0.1:{second} ")
    text = _rewrite(text, r"listen 443 ssl;", f"listen 127.0.0.1:{listen_port} ssl;")
    text = _rewrite(text, r"ssl_certificate +\S+;", f"ssl_certificate {pki.cert};")
    text = _rewrite(text, r"ssl_certificate_key +\S+;", f"ssl_certificate_key {pki.key};")
    return _rewrite(text, r"access_log /var/log/nginx/capsync-access\.log ", f"access_log {access_log} ")


def _main_config(root: Path, site: Path) -> str:
    """nginx.conf of the test: in the foreground, everything it writes under `root`, the site included."""
    user = ""
    if os.geteuid() == 0:  # workers would run as nobody, who cannot enter pytest's 0700 temp dirs
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
    paths = "\n".join(f"    {kind}_temp_path {root / 'temp' / kind};" for kind in _TEMP_KINDS)
    return (f"{user}worker_processes 1;\ndaemon off;\npid {root / 'nginx.pid'};\n"
            f"error_log {root / 'error.log'} notice;\nevents {{ worker_connections 512; }}\n"
            f"http {{\n{paths}\n    access_log off;\n    include {site};\n}}\n")


@dataclass(frozen=True)
class ProxiedRequest:
    """One line of the access log (format `capsync_upstream` of the example config)."""

    end_s: float  # wall clock, when nginx logged it
    duration_s: float
    status: int  # what the client got
    method: str
    uri: str
    upstreams: tuple[int, ...]  # the ports tried, in order (more than one: the first failed)
    upstream_statuses: tuple[str, ...]  # each one's status ("502" when it failed), as nginx logs them
    request_length: int  # bytes read from the client: request line, headers and body (so far, if cut)

    @property
    def start_s(self) -> float:
        """When nginx began reading the request (wall clock)."""
        return self.end_s - self.duration_s

    @property
    def served_by(self) -> int | None:
        """The port of the process that answered last (None: none did)."""
        return self.upstreams[-1] if self.upstreams else None


_LINE = re.compile(r'^(\S+) (\S+) (\d+) "(\S+) (\S+)" upstream=(.*) upstream_status=(.*) request_length=(\d+)$')


def _ports(field: str) -> tuple[int, ...]:
    """`127.0.0.1:8787, 127.0.0.1:8788` -> (8787, 8788); `-` -> ()."""
    return tuple(int(a.rsplit(":", 1)[1]) for a in re.split(r"\s*[,:]\s+", field.strip()) if ":" in a)


class Nginx:
    """A running nginx on the example config; `url` is what robots are given."""

    def __init__(self, process: Process, root: Path, listen_port: int, pki: Pki) -> None:
        self.process, self.root, self.port, self.pki = process, root, listen_port, pki
        self.access_log = root / "access.log"

    @property
    def url(self) -> str:
        """`https://127.0.0.1:PORT`."""
        return f"https://127.0.0.1:{self.port}"

    def requests(self) -> list[ProxiedRequest]:
        """Every request logged so far, in the order logged."""
        if not self.access_log.exists():
            return []
        out = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            m = _LINE.match(line)
            if m:
                end, took, status, method, uri, ups, statuses, length = m.groups()
                out.append(ProxiedRequest(float(end), float(took), int(status), method, uri, _ports(ups),
                                          tuple(s for s in re.split(r"\s*[,:]\s+", statuses.strip()) if s != "-"),
                                          int(length)))
        return out


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def start_nginx(kit: ProcessKit, root: Path, upstream_ports: list[int], listen_port: int) -> Nginx:
    """Run nginx on the example config in front of `upstream_ports`; NginxUnavailable if it cannot."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if binary is None:
        raise NginxUnavailable("nginx is not installed (apt-get install nginx; ./scripts/test tries)")
    root.mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)  # nginx's default log folder under its prefix
    for kind in _TEMP_KINDS:
        (root / "temp" / kind).mkdir(parents=True, exist_ok=True)
    pki = make_pki(root / "pki")
    site = root / "capsync-cloud.conf"
    site.write_text(render_site(EXAMPLE.read_text(), upstream_ports=upstream_ports, listen_port=listen_port,
                                pki=pki, access_log=root / "access.log"))
    conf = root / "nginx.conf"
    conf.write_text(_main_config(root, site))
    argv = [binary, "-p", f"{root}/", "-c", str(conf)]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise NginxUnavailable(f"nginx -t refused the config: {check.stderr.strip()[-1000:]}")
    process = Process(argv, root / "nginx.log")
    kit.procs.append(process)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not _accepts(listen_port):
        if not process.alive() or time.monotonic() > deadline:
            process.kill()
            log = (root / "error.log").read_text(errors="replace") if (root / "error.log").exists() else ""
            raise NginxUnavailable(f"nginx did not start: {process.text()[-1000:]} {log[-1000:]}")
        time.sleep(0.05)
    return Nginx(process, root, listen_port, pki)
