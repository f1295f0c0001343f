"""The cloud as a real server: `serve` on a TCP socket (HTTP and HTTPS), and the CLI process."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from capsync.cloud.app import DB_NAME
from capsync.cloud.cli import main as cli_main
from capsync.cloud.server import serve
from capsync.cloud.sqlite_store import SqliteStore
from tests.test_cloud_support import TEST_SCRYPT_N, declaration, tabular_capture, upload

ROOT = Path(__file__).resolve().parents[1]


def _store_with_part(data_dir: Path, part: str = "robot-1", secret: str = "pw") -> SqliteStore:
    store = SqliteStore(data_dir / DB_NAME, scrypt_n=TEST_SCRYPT_N)
    store.add_part_sync(part, secret)
    return store


async def test_serve_on_port_0_uploads_over_tcp_and_shuts_down_gracefully(tmp_path: Path) -> None:
    store = _store_with_part(tmp_path / "cloud")
    fid, data = tabular_capture(tmp_path / "caps", part="robot-1", n=30)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve(tmp_path / "cloud", "127.0.0.1", 0, store=store,
                                                             task_status=task_status))
        assert isinstance(port, int) and port > 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", auth=("robot-1", "pw")) as c:
            assert (await c.get("/v1/health")).json()["ok"] is True
            r = await upload(c, fid, data, chunk=512)
            assert (r.status_code, r.json()["records"]) == (200, 30)
            rows = (await c.get("/v1/tabular", params={"limit": 1000})).json()["items"]
            assert [r["record_index"] for r in rows] == list(range(30))
            assert (await c.get("/v1/files/x")).status_code == 400
        nursery.cancel_scope.cancel()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)  # the listener is closed
    await store.aclose()


async def test_cancelling_serve_lets_a_request_in_flight_finish(tmp_path: Path) -> None:
    store = _store_with_part(tmp_path / "cloud")
    data = b"0123456789" * 100
    sent_half = trio.Event()

    async def slow_body():
        yield data[:500]
        sent_half.set()
        await trio.sleep(0.5)  # the server is told to stop while this request is in flight
        yield data[500:]

    server_scope = trio.CancelScope()
    results: list = []

    async def run_server(task_status=trio.TASK_STATUS_IGNORED) -> None:
        with server_scope:
            await serve(tmp_path / "cloud", "127.0.0.1", 0, store=store, graceful_timeout_s=5, task_status=task_status)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(run_server)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", auth=("robot-1", "pw")) as c:
            await c.post("/v1/files/slow-file-0001", json=declaration(data, kind="file"))
            async with trio.open_nursery() as requests:  # not inside the server's cancel scope
                requests.start_soon(_put, c, data, slow_body(), results)
                await sent_half.wait()
                stopped_at = trio.current_time()
                server_scope.cancel()
    assert results == [(200, len(data))]
    assert trio.current_time() - stopped_at < 3  # the server stopped once the request was done
    await store.aclose()


async def _put(c: httpx.AsyncClient, data: bytes, body, results: list) -> None:
    r = await c.put("/v1/files/slow-file-0001/data", params={"offset": 0}, content=body,
                    headers={"content-length": str(len(data))})
    results.append((r.status_code, r.json().get("offset")))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
async def test_serve_speaks_https_with_a_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    store = _store_with_part(tmp_path / "cloud")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve(
            tmp_path / "cloud", "127.0.0.1", 0, tls_cert=cert, tls_key=key, store=store, task_status=task_status))
        ctx = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", auth=("robot-1", "pw"), verify=ctx) as c:
            r = await c.post("/v1/files/tls-file-0001", json=declaration(b"hello", kind="file"))
            assert r.status_code == 200 and r.json()["state"] == "partial"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get("/v1/health")
        nursery.cancel_scope.cancel()
    await store.aclose()


def _start_cloud(data_dir: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "capsync.cloud.cli", "cloud", "serve", "--data-dir", str(data_dir),
                             "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    prefix = "capsync cloud listening on http://127.0.0.1:"
    assert line.startswith(prefix), line
    return proc, int(line[len(prefix):])


def test_add_part_prints_a_secret_and_refuses_an_existing_id(tmp_path: Path, capsys) -> None:
    def add(*args: str) -> tuple[int, str, str]:
        code = cli_main(["cloud", "add-part", "--data-dir", str(tmp_path), *args])
        out, err = capsys.readouterr()
        return code, out.strip(), err

    code, first, _ = add("robot-7")
    assert code == 0 and len(first) >= 32
    code, _, err = add("robot-7")
    assert code == 2 and "--rotate" in err
    code, rotated, _ = add("robot-7", "--rotate")
    assert code == 0 and rotated != first
    assert add("../evil")[0] == 2
    assert add("never-added", "--rotate")[0] == 2
    store = SqliteStore(tmp_path / DB_NAME)
    assert trio.run(store.verify_part, "robot-7", rotated)
    assert not trio.run(store.verify_part, "robot-7", first)
    store.close_sync()
    assert rotated not in (tmp_path / DB_NAME).read_bytes().decode("latin-1")  # only a hash is kept


def test_an_acknowledged_offset_survives_kill_9_of_the_cloud(tmp_path: Path) -> None:
    secret = "kill-9-secret"
    _store_with_part(tmp_path, "robot-1", secret).close_sync()
    fid, data = tabular_capture(tmp_path / "caps", part="robot-1", n=40)
    proc, port = _start_cloud(tmp_path)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=("robot-1", secret)) as c:
            c.post(f"/v1/files/{fid}", json=declaration(data)).raise_for_status()
            acked = c.put(f"/v1/files/{fid}/data", params={"offset": 0}, content=data[:777]).json()["offset"]
            assert acked == 777
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    proc, port = _start_cloud(tmp_path)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=("robot-1", secret)) as c:
            status = c.get(f"/v1/files/{fid}").json()
            assert (status["state"], status["offset"]) == ("partial", 777)
            c.put(f"/v1/files/{fid}/data", params={"offset": 777}, content=data[777:]).raise_for_status()
            assert c.post(f"/v1/files/{fid}/commit").json()["records"] == 40
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
