"""A small Python round-robin TCP proxy: the tests' stand-in for nginx where nginx cannot run.

It is NOT nginx and does not speak HTTP: each accepted connection goes to the next upstream in
turn (a refused one is skipped for the next), and bytes are copied both ways until either side
closes. So it spreads connections, not requests: a client's kept-alive connection stays on one
upstream until that upstream goes away. tests/test_cloud_fleet.py uses it only when nginx is not
installed or cannot start here (tests/nginx_kit.py says why), and says so.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ProxiedConnection:
    """One accepted connection: when (wall clock, s), and the upstream port it went to (None: none took it)."""

    start_s: float
    upstream: int | None


class RoundRobinProxy:
    """Listens on 127.0.0.1 (a free port); forwards each connection to the next of `upstream_ports`."""

    def __init__(self, upstream_ports: list[int]) -> None:
        self.upstream_ports = list(upstream_ports)
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._log: list[ProxiedConnection] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept_loop, name="roundrobin-accept", daemon=True).start()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` (plain TCP: no TLS here)."""
        return f"http://127.0.0.1:{self.port}"

    def connections(self) -> list[ProxiedConnection]:
        """Every connection accepted so far, in order."""
        with self._lock:
            return list(self._log)

    def close(self) -> None:
        """Stop accepting (connections being copied end when either side closes)."""
        self._closed = True
        self._listener.close()

    def _connect(self) -> tuple[socket.socket | None, int | None]:
        """A connection to the next upstream that accepts, trying each once."""
        first = next(self._turn)
        for k in range(len(self.upstream_ports)):
            port = self.upstream_ports[(first + k) % len(self.upstream_ports)]
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=2.0), port
            except OSError:
                continue
        return None, None

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream, port = self._connect()
            with self._lock:
                self._log.append(ProxiedConnection(time.time(), port))
            if upstream is None:
                client.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=self._serve, args=(client, upstream), name="roundrobin-conn", daemon=True).start()

    def _serve(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy both ways until both directions ended, then close both sockets."""
        back = threading.Thread(target=self._pump, args=(upstream, client), name="roundrobin-pump", daemon=True)
        back.start()
        self._pump(client, upstream)
        back.join()
        client.close()
        upstream.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        """Copy src -> dst until EOF (then half-close dst); an error on either side ends both directions."""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
