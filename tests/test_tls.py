"""TLS on the control endpoint and `/resources`, with a private CA and a server certificate made
here by `openssl`: clients that trust the CA are served over wss://, others are refused at the
handshake, plain ws:// clients do not take the listener down, and a remote part is captured from
over wss:// with remotes[].tls_ca_file. Secrets headed for a non-loopback host in plain text are
warned about once."""

from __future__ import annotations

import json
import logging
import os
import ssl
import sys
from pathlib import Path

import pytest
import trio

from capsync.actors.agent import Agent
from capsync.runtime import rpc
from capsync.runtime.cloud_client import CloudClient
from capsync.runtime.config import parse_config
from capsync.runtime.remote import RESOURCES_PATH
from tests.helpers import free_port
from tests.nginx_kit import make_pki
from tests.test_remote import B_SECRET, part_b_config, until


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, and a certificate it signed for 127.0.0.1 and localhost (PEM files)."""
    made = make_pki(tmp_path_factory.mktemp("pki"))
    return {"ca": made.ca, "cert": made.cert, "key": made.key}


async def _tls_part_b(nursery, pki) -> tuple[Agent, int]:
    port = free_port()
    cfg = part_b_config(port)
    cfg["network"].update(tls_certificate_file=str(pki["cert"]), tls_key_file=str(pki["key"]))
    agent = Agent(parse_config(json.dumps(cfg)))
    await nursery.start(agent.run)
    await until(lambda: agent.control.bound_port is not None, 5, "part B to listen")
    return agent, port


async def test_control_and_resources_over_wss(pki, nursery):
    agent, port = await _tls_part_b(nursery, pki)
    trusting = ssl.create_default_context(cafile=str(pki["ca"]))
    async with rpc.connect(f"wss://127.0.0.1:{port}/control", ssl_context=trusting) as client:
        assert (await client.call("status"))["part_id"] == "part-b"
    async with rpc.connect(f"wss://localhost:{port}{RESOURCES_PATH}", secret=B_SECRET,
                           ssl_context=trusting) as client:
        assert {r["name"] for r in await client.call("resource.list")} >= {"my-esp32", "cam"}
    with pytest.raises(rpc.RpcError, match="Unreachable.*(CERTIFICATE_VERIFY_FAILED|certificate verify failed)"):
        async with rpc.connect(f"wss://127.0.0.1:{port}/control", ssl_context=ssl.create_default_context()):
            pass
    for garbage in (b"GET /control HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\xffhalf a hello", b""):
        stream = await trio.open_tcp_stream("127.0.0.1", port)  # plain or broken TLS: only this connection fails
        await stream.send_all(garbage)
        await stream.aclose()
    async with rpc.connect(f"wss://127.0.0.1:{port}/control", ssl_context=trusting) as client:
        assert (await client.call("status"))["part_id"] == "part-b"
    assert agent.control.scheme == "wss"
    with pytest.raises(rpc.RpcError, match="needs a wss:// address"):
        async with rpc.connect(f"127.0.0.1:{port}", timeout_s=0.5):
            pass


async def test_remote_part_over_wss_with_a_private_ca(pki, tmp_path, nursery):
    _, port = await _tls_part_b(nursery, pki)
    methods = [{"method": "Analogs", "capture_frequency_hz": 10, "name": "rdk:component:board/my-esp32",
                "additional_params": {"reader_name": "A1"}}]
    remote = {"name": "part-b", "address": f"wss://127.0.0.1:{port}", "secret": B_SECRET,
              "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": methods}}]}
    untrusted = {**remote, "name": "part-b-untrusted"}
    trusted = {**remote, "tls_ca_file": str(pki["ca"])}
    cfg = {"network": {"bind_address": f"127.0.0.1:{free_port()}"},
           "services": [{"name": "dm", "type": "data_manager",
                         "attributes": {"capture_dir": str(tmp_path / "cap"), "sync_disabled": True}}],
           "remotes": [trusted, untrusted]}
    agent = Agent(parse_config(json.dumps(cfg)))
    await nursery.start(agent.run)

    def captured() -> dict[str, int]:
        return {c.name.split(" ", 1)[1].split(":")[0]: c.captured for c in agent.statistics().collectors}

    await until(lambda: captured().get("part-b", 0) >= 5, 10, "captures over wss://")
    stats = {r.name: r for r in agent.statistics().remotes}
    assert stats["part-b"].state == "connected"
    assert stats["part-b-untrusted"].state == "unreachable" and captured()["part-b-untrusted"] == 0
    assert "certificate" in (stats["part-b-untrusted"].last_error or "").lower()


async def test_a_certificate_that_cannot_be_loaded_is_logged_and_retried(pki, tmp_path, nursery, caplog):
    port = free_port()
    cfg = part_b_config(port)
    cfg["network"].update(tls_certificate_file=str(tmp_path / "missing.pem"), tls_key_file=str(pki["key"]))
    agent = Agent(parse_config(json.dumps(cfg)))
    await nursery.start(agent.run)

    def logged() -> str:
        return " ".join(str(getattr(r, "error", "")) for r in caplog.records)

    await until(lambda: "cannot be loaded" in logged(), 5, "the certificate error to be logged")
    assert "network.tls_certificate_file" in logged() and agent.control.bound_port is None


def test_secrets_in_plain_text_to_other_hosts_are_warned_about_once(caplog, tmp_path):
    caplog.set_level(logging.WARNING)

    async def main():
        remotes = [{"name": n, "address": a, "secret": "s"} for n, a in
                   (("far", "ws://192.0.2.7:8791"), ("near", "127.0.0.1:1"), ("safe", "wss://192.0.2.8:8791"))]
        cfg = {"network": {"bind_address": f"0.0.0.0:{free_port()}"}, "cloud": {"id": "p", "secret": "s"},
               "remotes": remotes}
        agent = Agent(parse_config(json.dumps(cfg)))
        async with trio.open_nursery() as n:
            await n.start(agent.run)
            await trio.sleep(0.2)
            agent.remotes.reconfigure(parse_config(json.dumps(cfg)).remotes)  # still warned only once
            n.cancel_scope.cancel()

    trio.run(main)
    warned = sorted(r.getMessage() for r in caplog.records if "plain text" in r.getMessage())
    assert len(warned) == 2
    assert warned[0].startswith("control endpoint") and "network.tls_certificate_file" in warned[0]
    assert "192.0.2.7" in warned[1] and "wss://" in warned[1]
    caplog.clear()
    for _ in range(2):
        CloudClient("http://cloud.example:8787", "p", "s")
    CloudClient("https://cloud.example", "p", "s")
    CloudClient("http://127.0.0.1:8787", "p", "s")
    warned = [r.getMessage() for r in caplog.records if "plain text" in r.getMessage()]
    assert len(warned) == 1 and "cloud.example" in warned[0] and "https://" in warned[0]


async def test_capsync_status_over_wss_with_the_ca_in_ssl_cert_file(pki, nursery):
    _, port = await _tls_part_b(nursery, pki)
    cmd = [sys.executable, "-m", "capsync", "status", "--json", "--address", f"wss://127.0.0.1:{port}/control"]
    env = {**os.environ, "SSL_CERT_FILE": str(pki["ca"])}
    done = await trio.run_process(cmd, env=env, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["part_id"] == "part-b"
    done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)  # CA not trusted
    assert done.returncode != 0 and b"CERTIFICATE_VERIFY_FAILED" in done.stderr
