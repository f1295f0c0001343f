"""`capsync cloud serve` that cannot start says why in one line with the fix, and exits 1 or 2:
no traceback and no exception group (issue 16, item 11, for the cloud)."""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "capsync", "cloud", "serve", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def _error_lines(out: subprocess.CompletedProcess) -> list[str]:
    return [line for line in out.stderr.splitlines() if "ERROR" in line or "error:" in line]


def test_a_port_in_use_is_one_line_naming_the_port_and_the_fix(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = _serve("--data-dir", str(tmp_path / "cloud"), "--port", str(port))
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and "ExceptionGroup" not in out.stderr
    (line,) = _error_lines(out)
    assert f"port {port}" in line and "in use" in line and "--port" in line


@pytest.mark.skipif(sys.platform != "linux", reason="uses /proc, where nothing can be created")
def test_a_data_dir_that_cannot_be_made_is_one_line_naming_it(tmp_path: Path) -> None:
    out = _serve("--data-dir", "/proc/no-such-thing/cloud", "--port", "0")
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    (line,) = _error_lines(out)
    assert "/proc/no-such-thing" in line and "--data-dir" in line


def test_an_unknown_log_level_is_a_usage_error_listing_the_levels(tmp_path: Path) -> None:
    out = _serve("--data-dir", str(tmp_path / "cloud"), "--log-level", "verbose")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--log-level" in out.stderr and "'DEBUG', 'INFO', 'WARNING', 'ERROR'" in out.stderr


def test_routine_uploads_are_quiet_by_default_and_a_rejection_is_loud(tmp_path: Path) -> None:
    """Issue 16 item 13: no line per uploaded file at the default level; a refused file is a warning."""
    import hashlib

    import httpx

    from tests.processkit import PART, CloudReader, ProcessKit, add_part, agent_config, log_lines, wait_for

    with ProcessKit(tmp_path) as kit:
        secret = add_part(tmp_path / "cloud")
        cloud = kit.start_cloud(args=["--log-level", "info"])  # the default level; the kit's is debug
        config = agent_config(tmp_path, cloud.url, secret, camera_hz=5, max_file_age_secs=0.2, interval_mins=0.01)
        kit.start_agent(config)
        with CloudReader(cloud.url, secret) as reader:
            wait_for(lambda: len(reader.files()) >= 10, 30, "ten files to go up")
        lines = log_lines(cloud.log)
        assert len(lines) <= 3, [r["msg"] for r in lines]  # "cloud listening" and no line per file
        assert not any(r["msg"] in ("file committed", "upload started") for r in lines)

        garbage = b"not a capture file"
        r = httpx.put(f"{cloud.url}/v1/files/{'ab' * 16}", auth=(PART, secret), content=garbage,
                      params={"kind": "capture", "size": len(garbage), "sha256": hashlib.sha256(garbage).hexdigest()})
        assert r.status_code == 422, r.text
        rejected = [x for x in log_lines(cloud.log) if x.get("level") == "warning"]
        assert rejected and "rejected" in rejected[-1]["msg"], rejected


def test_a_second_ctrl_c_while_stopping_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """Ctrl-C starts a graceful stop that waits for a request in flight; a second Ctrl-C then ends
    it at once with one line, exit 130, no KeyboardInterrupt traceback."""
    secret = subprocess.run([sys.executable, "-m", "capsync", "cloud", "add-part", "--data-dir", str(tmp_path / "cloud"),
                             "p1"], capture_output=True, text=True, timeout=60, cwd=REPO, check=True).stdout.strip()
    auth = base64.b64encode(f"p1:{secret}".encode())
    proc = subprocess.Popen([sys.executable, "-m", "capsync", "cloud", "serve", "--data-dir", str(tmp_path / "cloud"),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, line + proc.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as slow:  # an upload whose body never ends
            slow.sendall(b"PUT /v1/files/01J0000000000000000000000A?kind=capture&size=1000000&sha256=" + b"0" * 64 +
                         b" HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + auth +
                         b"\r\nContent-Length: 1000000\r\n\r\n" + b"\0" * 1000)
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            time.sleep(1.0)  # the graceful stop waits up to 5 s for that request
            assert proc.poll() is None, proc.stderr.read()
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=10)
        err = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert code == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == "capsync cloud serve: interrupted while stopping"
