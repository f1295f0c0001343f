"""Two `capsync cloud serve` processes behind one load balancer, as real processes (issue 14).

Both processes share one PostgreSQL schema (tests/postgres_kit.py: a real server) and one bucket of
the S3 stand-in (tests/s3_standin.py: moto's server mode, not S3), and run behind nginx on the
example config users are given (configs/nginx-capsync-cloud.conf, via tests/nginx_kit.py; TLS
terminated there). Where nginx cannot run, a small Python round-robin TCP proxy stands in
(tests/roundrobin_proxy.py) and the checks that read nginx's per-request log are left out; the
test says which balancer it used. `CAPSYNC_TEST_BALANCER=python` forces the stand-in.

Three agents (`capsync run`, each its own part, capture dir and config) capture a fake sensor and
camera and sync through the balancer; the third also syncs one big plain file over a link
throttled by the fault proxy, so its resumable upload is under way for seconds. While a chunk of
it is being received, the process receiving it is SIGKILLed; the balancer routes everything to the
survivor, the upload resumes there from the offset held in the object store, and the killed
process is restarted on its port and gets requests again. Then the agents stop capturing (a
config edit), drain, and stop. The test checks every record each agent captured is in the cloud
exactly once and none is left on the robots, the big file is committed once with its sha256, and
that the retention sweeps both processes run at start (at the same moment) deleted each expired
file once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import httpx
import psutil
import pytest
import trio

from capsync.runtime.faultproxy import ProxyThread
from tests.helpers import free_port
from tests.nginx_kit import Nginx, NginxUnavailable, start_nginx
from tests.postgres_kit import PostgresServer, postgres_server  # noqa: F401
from tests.processkit import (
    CAMERA, SENSOR, CloudProcess, CloudReader, ProcessKit, account, add_part, agent_config, local_capture_files,
    log_lines, old_file, set_aside_files, wait_for,
)
from tests.roundrobin_proxy import RoundRobinProxy
from tests.s3_standin import S3StandIn, s3_bucket, s3_standin  # noqa: F401

pytestmark = pytest.mark.skipif(os.name != "posix", reason="sends POSIX signals to child processes")

MIB = 1024 * 1024
BIG = 8 * MIB  # eight 1 MiB chunks
LINK_BYTES_PER_S = 2 * MIB  # the third robot's uplink: a chunk takes half a second
SENSOR_HZ, CAMERA_HZ = 10, 1
PERIODS = {SENSOR: 1_000_000_000 // SENSOR_HZ, CAMERA: 1_000_000_000 // CAMERA_HZ}
PARTS = ("robot-1", "robot-2", "robot-3")
RETENTION_PART, RETENTION_SECRET = "retention-part", "retention-part-secret"
BLOBS_PREFIX = "fleet"
#: Bytes an open connection must have brought in to be a chunk of the big file (a capture file of
#: these robots is a few KiB; a camera frame of the fake camera about 10 KiB).
MID_CHUNK_BYTES = 256 * 1024


# --- the shared store and object store ------------------------------------------------------------


@dataclass(frozen=True)
class Shared:
    """What both cloud processes share: the store URL, the object store address and the S3 environment."""

    store_url: str
    blobs_uri: str
    pg: PostgresServer
    schema: str
    s3: S3StandIn
    bucket: str

    def serve_args(self) -> list[str]:
        """The options every `serve` (and every part command) gets."""
        return ["--store", self.store_url, "--blobs", self.blobs_uri]


@pytest.fixture
def shared(postgres_server: PostgresServer, s3_standin: S3StandIn, s3_bucket: str) -> Iterator[Shared]:  # noqa: F811
    """A fresh PostgreSQL schema and a fresh bucket (each fixture skips, saying why, if its server cannot start)."""
    with postgres_server.fresh_schema() as schema:
        yield Shared(f"{postgres_server.url()}?schema={schema}", f"s3://{s3_bucket}/{BLOBS_PREFIX}", postgres_server,
                     schema, s3_standin, s3_bucket)


def register_parts(shared: Shared, data_dir: Path) -> dict[str, str]:
    """`capsync cloud add-part --store ...` for every robot's part, at once; part -> secret."""
    with ThreadPoolExecutor(len(PARTS)) as pool:
        secrets = pool.map(lambda part: add_part(data_dir, part, ["--store", shared.store_url]), PARTS)
        return dict(zip(PARTS, secrets))


@dataclass(frozen=True)
class Seeded:
    """Files committed before the clouds start: some past their retention, one not."""

    expired: frozenset[str]
    kept: str


def seed_retention(shared: Shared, scratch: Path) -> Seeded:
    """Commit files of RETENTION_PART straight into the shared store and bucket, as a third cloud
    process would have: three committed two days ago with `days: 1` (due), one with `days: 30`."""
    from capsync.cloud.postgres_store import PostgresStore
    from tests.test_cloud_retention import DAY, commit
    from tests.test_cloud_support import TEST_SCRYPT_N

    store = PostgresStore(shared.pg.url(), schema=shared.schema, scrypt_n=TEST_SCRYPT_N, pool_size=2)
    env = SimpleNamespace(store=store, blobs=shared.s3.blobs(shared.bucket, scratch, prefix=BLOBS_PREFIX))
    try:
        store.add_part_sync(RETENTION_PART, RETENTION_SECRET)
        old = time.time_ns() - 2 * DAY

        async def seed() -> Seeded:
            due = [await commit(env, scratch, committed_ns=old, policy={"days": 1}, part=RETENTION_PART)
                   for _ in range(3)]
            kept = await commit(env, scratch, committed_ns=old, policy={"days": 30}, part=RETENTION_PART)
            return Seeded(frozenset(f.file_id for f in due), kept.file_id)

        return trio.run(seed)
    finally:
        store.close_sync()


@contextmanager
def expire_held(shared: Shared) -> Iterator[None]:
    """Hold the store's `expire` row lock (docs/cloud.md, "Retention runs once") from here, a third
    session: a cloud that starts a sweep meanwhile takes the `sweep` lock and waits inside it, so
    the other cloud, starting at the same moment, finds a sweep running. Released on leaving."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(shared.pg.url()) as db:  # a transaction until the block ends
        lock = sql.SQL("SELECT 1 FROM {}.locks WHERE name = 'expire' FOR UPDATE")
        db.execute(lock.format(sql.Identifier(shared.schema)))
        yield
        db.rollback()


def sweeps_skipped(clouds: list[CloudProcess]) -> list[Path]:
    """The logs of the clouds that skipped a retention sweep because another process was sweeping."""
    return [c.log for c in clouds if any(r.get("msg", "").startswith("retention sweep skipped")
                                        for r in log_lines(c.log))]


def retention_lines(clouds: list[CloudProcess]) -> list[str]:
    """File ids of RETENTION_PART in the "retention expired file" lines of the clouds' logs (every run)."""
    logs = {c.log for c in clouds}
    return [r["file_id"] for log in logs for r in log_lines(log)
            if r.get("msg") == "retention expired file" and r.get("part") == RETENTION_PART]


def object_exists(shared: Shared, part: str, file_id: str) -> bool:
    """Whether the committed object of (part, file) is in the bucket."""
    from botocore.exceptions import ClientError

    try:
        shared.s3.client().head_object(Bucket=shared.bucket, Key=f"{BLOBS_PREFIX}/files/{part}/{file_id}")
        return True
    except ClientError:
        return False


# --- the clouds and the balancer ------------------------------------------------------------------


def start_clouds(kit: ProcessKit, shared: Shared, root: Path) -> list[CloudProcess]:
    """Two `serve` processes on fixed free ports, each its own data dir (scratch only) and log, started together."""
    clouds = [kit.spawn_cloud(root / f"cloud-{i}", free_port(), args=shared.serve_args(), env=shared.s3.env(),
                              log=root / f"cloud-{i}.log") for i in (1, 2)]
    for c in clouds:
        assert c.wait_listening(), f"cloud did not start:\n{c.text()[-3000:]}"
    return clouds


def start_balancer(kit: ProcessKit, root: Path, ports: list[int]) -> Nginx | RoundRobinProxy:
    """nginx on the example config if it runs here, else the Python round-robin TCP proxy."""
    if os.environ.get("CAPSYNC_TEST_BALANCER") == "python":
        why = "CAPSYNC_TEST_BALANCER=python"
    else:
        try:
            return start_nginx(kit, root / "nginx", ports, free_port())
        except NginxUnavailable as exc:
            why = f"nginx cannot run here: {exc}"
    warnings.warn(f"{why}; the Python round-robin TCP proxy stands in for nginx, and the checks of "
                  "nginx's access log are left out", stacklevel=2)
    return RoundRobinProxy(ports)


def tls_verify(balancer: Nginx | RoundRobinProxy) -> Any:
    """What an httpx client needs to trust the balancer: the test CA behind nginx, nothing over plain TCP."""
    return ssl.create_default_context(cafile=str(balancer.pki.ca)) if isinstance(balancer, Nginx) else True


def agent_env(balancer: Nginx | RoundRobinProxy) -> dict[str, str]:
    """The agents trust the test CA as docs/security.md says: SSL_CERT_FILE."""
    return {"SSL_CERT_FILE": str(balancer.pki.ca)} if isinstance(balancer, Nginx) else {}


# --- in flight ------------------------------------------------------------------------------------


def _inbound_bytes_ss(port: int) -> list[int] | None:
    """Bytes received so far by each open connection to `port` (`ss -ti`, the kernel's tcp_info); None without ss."""
    if shutil.which("ss") is None:
        return None
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, timeout=10).stdout
    return [int(n) for n in re.findall(r"bytes_received:(\d+)", out)]


def _open_requests(cloud: CloudProcess) -> set[tuple[str, int]]:
    """Peers of the connections open to the cloud's port right now (without upstream keepalive: requests)."""
    conns = psutil.Process(cloud.pid).net_connections(kind="tcp")
    return {tuple(c.raddr) for c in conns if c.status == psutil.CONN_ESTABLISHED and c.raddr
            and c.laddr.port == cloud.port}


def receiving_a_big_chunk(clouds: list[CloudProcess]) -> CloudProcess | None:
    """The cloud in the middle of receiving a chunk of the big file right now, if one is.

    With `ss`: the cloud with the open connection that brought in the most, if that is more than
    any small file holds (behind nginx a connection carries one request; behind the TCP proxy it
    carries a robot's kept-alive connection, and the third robot's has brought in megabytes).
    Without `ss`: a connection open across two looks 0.2 s apart (small requests take
    milliseconds; a throttled chunk half a second).
    """
    best: tuple[int, CloudProcess] | None = None
    for cloud in clouds:
        received = _inbound_bytes_ss(cloud.port)
        if received is None:
            before = _open_requests(cloud)
            time.sleep(0.2)
            if before & _open_requests(cloud):
                return cloud
        elif received and max(received) >= MID_CHUNK_BYTES and (best is None or max(received) > best[0]):
            best = (max(received), cloud)
    return best[1] if best else None


def big_upload_id(clouds: list[CloudProcess]) -> str | None:
    """The file id the big file's upload was declared with (the clouds log "upload started" with its size)."""
    for c in clouds:
        for r in log_lines(c.log):
            if r.get("msg") == "upload started" and r.get("part") == PARTS[2] and r.get("size") == BIG:
                return r["file_id"]
    return None


def held_offset(url: str, verify: Any, secret: str, file_id: str) -> int:
    """Bytes the cloud holds of an upload of the third robot (`GET /v1/files/{id}`), over a fresh connection."""
    with httpx.Client(base_url=url, auth=(PARTS[2], secret), verify=verify, timeout=10) as c:
        return int(c.get(f"/v1/files/{file_id}").raise_for_status().json()["offset"])


def served_again(balancer: Nginx | RoundRobinProxy, port: int, since_s: float, verify: Any) -> bool:
    """Whether the process on `port` answered a request through the balancer that began after `since_s`.

    nginx spreads the robots' requests, so their traffic shows it. The TCP proxy spreads
    connections, and the robots keep theirs: a fresh connection of the test's own asks.
    """
    if isinstance(balancer, Nginx):
        return any(r.served_by == port and r.status < 500 and r.start_s > since_s for r in balancer.requests())
    with httpx.Client(verify=verify, timeout=10) as c:
        c.get(f"{balancer.url}/v1/health")
    return any(conn.upstream == port and conn.start_s > since_s for conn in balancer.connections())


def served_by_each(clouds: list[CloudProcess], part: str, secret: str, reader: CloudReader,
                   per_kind: int = 2) -> dict[str, list[bytes]]:
    """The bytes of some binary items of `part` (its first camera frames, and its plain files)
    fetched from each cloud process directly, not through the balancer: item id -> one copy per process."""
    items = reader.pages("/v1/binary")
    chosen = [b for b in items if b["resource_type"]][:per_kind] + [b for b in items if not b["resource_type"]]
    out: dict[str, list[bytes]] = {}
    for cloud in clouds:
        with httpx.Client(base_url=cloud.url, auth=(part, secret), timeout=30) as c:
            for b in chosen:
                out.setdefault(b["id"], []).append(c.get(b["url"]).raise_for_status().content)
    return out


# --- robots ---------------------------------------------------------------------------------------


def stop_capturing(config: Path) -> None:
    """Edit the agent's config as an operator would (a new file renamed over it): capture_disabled."""
    cfg = json.loads(config.read_text())
    cfg["services"][0]["attributes"]["capture_disabled"] = True
    tmp = config.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg))
    os.replace(tmp, config)


def robot_config(root: Path, url: str, part: str, secret: str, *, with_big_file: bool) -> Path:
    """`root/robot.json` of one robot syncing to `url` as `part`: the fake sensor and camera, a
    sync pass every 1.2 s, capture files finished every 2 s, two uploads at once, and with
    `with_big_file` the folder `root/extra` synced too."""
    root.mkdir(parents=True, exist_ok=True)
    return agent_config(root, url, secret, sensor_hz=SENSOR_HZ, camera_hz=CAMERA_HZ, interval_mins=0.02,
                        part_id=part, max_file_age_secs=2, maximum_num_sync_threads=2,
                        sync_paths=[root / "extra"] if with_big_file else ())


def drained(root: Path) -> bool:
    """No capture file and no file of additional_sync_paths left on the robot at `root`."""
    extra = root / "extra"
    return not local_capture_files(root / "capture") and not (extra.exists() and any(extra.iterdir()))


# --- the test -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    """The SIGKILL of the process receiving a chunk of the big upload."""

    victim: CloudProcess
    survivor: CloudProcess
    big_id: str
    at_s: float  # wall clock
    at_ns: int


def kill_mid_chunk(clouds: list[CloudProcess], url: str, verify: Any, secret: str) -> Kill:
    """Wait until the big upload is under way (two chunks held) and a process is receiving the
    next one, SIGKILL that process, and check the upload was not done yet."""
    big_id = wait_for(lambda: big_upload_id(clouds), 30, "the big file's upload to be declared")
    wait_for(lambda: held_offset(url, verify, secret, big_id) >= 2 * MIB, 30, "two chunks of the big file to be held")
    victim = wait_for(lambda: receiving_a_big_chunk(clouds), 20, "a cloud receiving a chunk of the big file")
    kill = Kill(victim, next(c for c in clouds if c is not victim), big_id, time.time(), time.time_ns())
    victim.kill()
    assert held_offset(url, verify, secret, big_id) < BIG, "the kill came too late: the upload was done"
    return kill


def test_two_cloud_processes_behind_a_balancer_lose_and_duplicate_nothing_when_one_is_killed(
        shared: Shared, tmp_path: Path) -> None:
    """The whole deployment of docs/cloud.md "Running several cloud processes", with a crash."""
    with ProcessKit(tmp_path) as kit, ExitStack() as stack:
        secrets = register_parts(shared, tmp_path / "admin")
        seeded = seed_retention(shared, tmp_path / "seed")
        with expire_held(shared):  # both processes sweep retention as they start: make the sweeps overlap
            clouds = start_clouds(kit, shared, tmp_path)
            wait_for(lambda: sweeps_skipped(clouds), 20, "one cloud to find the other one sweeping")
        wait_for(lambda: set(retention_lines(clouds)) == seeded.expired, 30, "the start-up retention sweep")
        skipped = sweeps_skipped(clouds)
        balancer = start_balancer(kit, tmp_path, [c.port for c in clouds])
        verify = tls_verify(balancer)
        readers = [stack.enter_context(CloudReader(balancer.url, secrets[p], p, verify=verify)) for p in PARTS]

        # Three robots; the third syncs a big file over a slow link (the fault proxy, throttled).
        roots = [tmp_path / f"agent-{i}" for i in (1, 2, 3)]
        digest = old_file(roots[2] / "extra" / "big.bin", BIG)
        link = stack.enter_context(ProxyThread("127.0.0.1", int(balancer.url.rsplit(":", 1)[1])))
        link.throttle(LINK_BYTES_PER_S, direction="up")
        scheme = balancer.url.split(":", 1)[0]
        urls = [balancer.url, balancer.url, f"{scheme}://127.0.0.1:{link.port}"]
        configs = [robot_config(root, url, part, secrets[part], with_big_file=i == 2)
                   for i, (root, url, part) in enumerate(zip(roots, urls, PARTS))]
        agents = [kit.spawn_agent(cfg, log=root / "agent.log", env=agent_env(balancer))
                  for cfg, root in zip(configs, roots)]
        for a in agents:
            a.wait_running()

        kill = kill_mid_chunk(clouds, balancer.url, verify, secrets[PARTS[2]])
        # The survivor serves every robot meanwhile; then the killed one comes back on its port.
        for reader, part in zip(readers, PARTS):
            wait_for(lambda: any(f["committed_ns"] > kill.at_ns for f in reader.files()), 30,
                     f"{part}'s files to be committed after the kill")
        restarted = kit.restart_cloud(kill.victim)
        restarted_s = time.time()
        wait_for(lambda: served_again(balancer, restarted.port, restarted_s, verify), 30,
                 "the restarted process to be given requests again")
        wait_for(lambda: not (roots[2] / "extra" / "big.bin").exists(), 60, "the big file to be committed and deleted")
        link.throttle(None)

        # Drain: the robots stop capturing, their last files go up, then they stop.
        for cfg in configs:
            stop_capturing(cfg)
        wait_for(lambda: all(drained(root) for root in roots), 40, "every robot to have synced everything")
        captured = [a.stop() for a in agents]
        accounts = [account(reader, root / "capture", n, PERIODS) for reader, root, n in zip(readers, roots, captured)]
        big_files = [f for f in readers[2].files() if f["kind"] == "file"]
        served = {p: served_by_each([kill.survivor, restarted], p, secrets[p], reader)
                  for p, reader in zip(PARTS, readers)}
        with CloudReader(balancer.url, RETENTION_SECRET, RETENTION_PART, verify=verify) as reader:
            retention_files = {f["file_id"]: f["expired"] for f in reader.files()}
        assert kill.survivor.alive() and restarted.alive(), "a cloud process died on its own"
        swept = retention_lines([*clouds, restarted])

    # Every record every robot captured is in the cloud once, and nothing is left on the robots.
    for part, acc, root in zip(PARTS, accounts, roots):
        assert acc.lost == 0 and acc.duplicated == 0 and acc.local == 0, f"{part}: {acc.summary()}"
        assert acc.committed == acc.captured > 0, f"{part}: {acc.summary()}"
        for g in acc.grid:  # one gap-free run per method, but for ticks the collector missed under load
            # (capture timing, not sync: the counts above are exact; 9 processes share the CPUs here)
            assert g.records > 0 and g.grid_runs == 1 and g.missing_ticks <= 2 + g.records // 50, \
                f"{part}: {acc.summary()}"
        assert not set_aside_files(root / "capture"), part
    # The big file: committed once, whole.
    assert [(f["name"], f["size"], f["sha256"]) for f in big_files] == [("big.bin", BIG, digest)], big_files
    # Every process serves every file, whichever received it: the bytes are shared.
    for part, items in served.items():
        assert items and all(len(set(copies)) == 1 and copies[0] for copies in items.values()), part
    assert hashlib.sha256(served[PARTS[2]][f"{kill.big_id}-0"][0]).hexdigest() == digest
    # Retention ran once across the processes: one swept while the other found it sweeping and
    # skipped (the restarted one swept again later and found nothing).
    assert len(skipped) == 1, skipped
    assert sorted(swept) == sorted(seeded.expired), swept
    assert retention_files == {**{fid: True for fid in seeded.expired}, seeded.kept: False}, retention_files
    assert not any(object_exists(shared, RETENTION_PART, fid) for fid in seeded.expired)
    assert object_exists(shared, RETENTION_PART, seeded.kept)
    check_routing(balancer, kill, restarted_s)


def check_routing(balancer: Nginx | RoundRobinProxy, kill: Kill, restarted_s: float) -> None:
    """What the balancer saw: the kill cut a chunk, the survivor took everything until the restart,
    the upload resumed there, and the restarted process served again."""
    victim, survivor, big_id, killed_s = kill.victim.port, kill.survivor.port, kill.big_id, kill.at_s
    settle_s = 0.1  # nginx's clock is cached per event loop turn; its log has millisecond resolution
    if not isinstance(balancer, Nginx):
        conns = balancer.connections()
        outage = [c for c in conns if killed_s + settle_s < c.start_s < restarted_s]
        assert outage and all(c.upstream == survivor for c in outage), outage
        assert any(c.upstream == victim and c.start_s > restarted_s for c in conns)
        return
    reqs = balancer.requests()
    data = [r for r in reqs if r.method == "PUT" and r.uri == f"/v1/files/{big_id}/data"]
    # The chunk being received when the process was killed: cut, and the robot was told (502).
    cut = [r for r in data if r.upstreams[:1] == (victim,) and r.status == 502 and r.end_s >= killed_s - settle_s]
    assert len(cut) == 1, data
    # Every request that began after the kill was answered, by the survivor, until the restart.
    outage = [r for r in reqs if killed_s + settle_s < r.start_s and r.end_s < restarted_s]
    assert outage and all(r.served_by == survivor and r.status < 500 for r in outage), \
        [r for r in outage if r.served_by != survivor or r.status >= 500]
    # The upload went on on the survivor, from the offset held: the whole file crossed once, plus
    # what of the cut chunk had arrived (request_length counts headers too).
    assert any(r.served_by == survivor and r.status == 200 and r.start_s > killed_s for r in data)
    assert BIG < sum(r.request_length for r in data) < BIG + MIB + 64 * 1024, data
    commits = [r for r in reqs if r.uri == f"/v1/files/{big_id}/commit" and r.status == 200]
    assert commits and min(r.start_s for r in commits) > killed_s, commits
    assert any(r.served_by == victim and r.status < 500 for r in reqs if r.start_s > restarted_s)


def test_the_example_command_lines_start_what_the_nginx_example_balances() -> None:
    """configs/cloud-two-processes.sh and configs/nginx-capsync-cloud.conf describe one deployment:
    the script's `serve` lines parse, listen on the ports the upstream names, share the store and
    the object store, and keep separate data dirs."""
    import argparse
    import shlex

    from capsync.cloud.cli import add_cloud_commands
    from capsync.cloud.store_url import check as check_store_url
    from tests.nginx_kit import EXAMPLE

    script = (EXAMPLE.parent / "cloud-two-processes.sh").read_text()
    values = dict(re.findall(r"^(STORE|BLOBS)='([^']*)'", script, flags=re.MULTILINE))
    parser = argparse.ArgumentParser(prog="capsync")
    add_cloud_commands(parser.add_subparsers(required=True))
    serves = []
    for line in script.replace("\\\n", " ").splitlines():
        if line.startswith("capsync cloud serve"):
            words = shlex.split(line.replace('"$STORE"', shlex.quote(values["STORE"]))
                                .replace('"$BLOBS"', shlex.quote(values["BLOBS"])))
            words = words[:next((i for i, w in enumerate(words) if w[0] in ">&" or w[:2] == "2>"), len(words))]
            serves.append(parser.parse_args(words[1:]))
    upstream = [int(p) for p in re.findall(r"^\s*server 127\.0\.0\.1:(\d+) ", EXAMPLE.read_text(), flags=re.MULTILINE)]
    assert sorted(a.port for a in serves) == sorted(upstream) == [8787, 8788]
    assert {a.store for a in serves} == {values["STORE"]} and {a.blobs for a in serves} == {values["BLOBS"]}
    check_store_url(values["STORE"])
    assert len({a.data_dir for a in serves}) == len(serves)
