"""The servers of the sync benchmark besides a plain `capsync cloud serve`: nginx as the transport
baseline (PUT onto the same disk), and several cloud processes on PostgreSQL + an object store
behind an nginx load balancer (the multi-process mode). Used by scripts/bench/sync.py.

nginx is Debian's (`apt-get install nginx`, installed here on first use when running as root); the
object store is moto's server mode, a stand-in for S3 (there is no real S3 here), in its own
process; PostgreSQL is a throwaway cluster from Debian's packages (tests/postgres_kit.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

NGINX = "/usr/sbin/nginx"
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_nginx() -> str | None:
    """Why nginx cannot be used here, or None once it is installed (apt-get as root, best effort)."""
    if os.path.exists(NGINX):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "nginx is not installed (apt-get install nginx)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx"],
                ["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx"]):
        subprocess.run(cmd, env=env, capture_output=True, timeout=600)
        if os.path.exists(NGINX):
            return None
    return "nginx could not be installed with apt-get"


def _wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout_s:g} s") from None
            time.sleep(0.05)


def _nginx_conf(root: Path, port: int, workers: int, server_block: str) -> Path:
    conf = root / "nginx.conf"
    # As root, nginx's workers would run as an unprivileged user that cannot write the temp dirs here.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(f"""
{user}
worker_processes {workers};
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        {server_block}
    }}
}}
""")
    return conf


@contextmanager
def nginx(root: Path, server_block: str, *, workers: int = 1, upstream: str = "") -> Iterator[str]:
    """nginx in `root` on a free port serving `server_block`; yields its base URL."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = _nginx_conf(root, port, workers, server_block)
    if upstream:
        conf.write_text(conf.read_text().replace("http {", "http {\n" + upstream, 1))
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(root)], stdout=subprocess.DEVNULL,
                            stderr=open(root / "stderr.log", "wb"))
    try:
        _wait_http(f"http://127.0.0.1:{port}/")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def nginx_put_server(root: Path, *, workers: int = 1) -> Iterator[str]:
    """The transport baseline: nginx taking `PUT /<path>` onto `root/files` (its WebDAV module), on
    the same disk as the cloud's data dir. It does not fsync what it writes; the cloud does."""
    (root / "files").mkdir(parents=True, exist_ok=True)
    block = f"location / {{ root {root}/files; dav_methods PUT; create_full_put_path on; }}"
    with nginx(root, block, workers=workers) as url:
        yield url


@dataclass
class Fleet:
    """Cloud processes sharing one PostgreSQL schema and one bucket, behind one load balancer."""

    url: str  # the load balancer's
    data_dir: Path  # the first process's (for add-part)
    pids: list[int]
    env: dict[str, str]
    store: str


def _start_moto(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=open(root / "moto.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    _wait_http(url)
    return proc, url


@contextmanager
def fleet(root: Path, processes: int) -> Iterator[Fleet]:
    """`processes` cloud processes on a fresh PostgreSQL cluster and a moto S3 stand-in, behind nginx."""
    sys.path.insert(0, str(REPO))
    from tests import postgres_kit

    with ExitStack() as stack:
        pg = postgres_kit.start()
        stack.callback(pg.stop)
        moto, endpoint = _start_moto(root)
        stack.callback(lambda: (moto.terminate(), moto.wait(timeout=10)))
        env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_REGION": "us-east-1"}
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                     aws_secret_access_key="bench").create_bucket(Bucket="bench")
        store = f"{pg.url()}?schema=bench"
        ports, pids = [], []
        for i in range(processes):
            data_dir = root / f"cloud{i}"
            port = free_port()
            log = open(root / f"cloud{i}.log", "wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "capsync", "cloud", "serve", "--data-dir", str(data_dir), "--port", str(port),
                 "--store", store, "--blobs", "s3://bench/cloud", "--log-format", "json"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            stack.callback(lambda p=proc: (p.terminate(), p.wait(timeout=20)))
            _wait_http(f"http://127.0.0.1:{port}/v1/health")
            ports.append(port)
            pids.append(proc.pid)
        servers = "".join(f"server 127.0.0.1:{p};" for p in ports)
        upstream = f"upstream clouds {{ {servers} keepalive 64; }}"
        block = ("location / { proxy_pass http://clouds; proxy_http_version 1.1; proxy_set_header Connection \"\"; "
                 "proxy_request_buffering off; proxy_read_timeout 120s; }")
        url = stack.enter_context(nginx(root / "lb", block, workers=1, upstream=upstream))
        yield Fleet(url, root / "cloud0", pids, env, store)


def add_fleet_part(f: Fleet, part: str) -> str:
    """Register `part` in the fleet's database; its secret."""
    out = subprocess.run([sys.executable, "-m", "capsync", "cloud", "add-part", "--data-dir", str(f.data_dir),
                          "--store", f.store, part], capture_output=True, text=True, timeout=60, cwd=REPO,
                         check=True, env=f.env)
    return out.stdout.strip()
