"""Prometheus metrics and health on the agent and the cloud, scraped over real sockets and parsed with
prometheus_client's own parser; the values are checked against activity the test caused and counted."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from capsync.actors.agent import Agent
from capsync.actors.agent_metrics import DOWN_GRACE_S, TreeHealth
from capsync.actors.metrics_endpoint import split_address
from capsync.cloud.app import DB_NAME
from capsync.cloud.server import serve
from capsync.cloud.sqlite_store import SqliteStore
from capsync.runtime.config import parse_config
from capsync.runtime.supervision import ChildStats, SupervisorStats
from tests.cloudkit import all_pages
from tests.helpers import fake_component, robot_config
from tests.test_cloud_support import TEST_SCRYPT_N

PART, SECRET = "robot-1", "pw-metrics"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition, by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """GET url over a real socket; its samples."""
    async with httpx.AsyncClient() as c:
        resp = await c.get(url)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return samples(resp.text)


def old_files(folder: Path, sizes: list[int], age_s: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    past = time.time() - age_s
    for i, size in enumerate(sizes):
        p = folder / f"blob-{i}.bin"
        p.write_bytes(os.urandom(size))
        os.utime(p, (past, past))


async def test_agent_and_cloud_metrics_count_what_happened(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cloud" / DB_NAME, scrypt_n=TEST_SCRYPT_N)
    store.add_part_sync(PART, SECRET)
    flag = tmp_path / "should-sync"
    flag.write_text("false")
    extra = tmp_path / "extra"
    old_files(extra, [1000, 2000, 3000], age_s=3600)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve(tmp_path / "cloud", "127.0.0.1", 0, store=store,
                                                             task_status=task_status))
        cloud_url = f"http://127.0.0.1:{port}"
        cfg = robot_config(tmp_path / "capture", [
            fake_component("env", "sensor", [{"method": "Readings", "capture_frequency_hz": 40}]),
            {"name": "gate", "type": "sensor", "model": "selective-syncer", "attributes": {"flag_file": str(flag)}},
        ], sync_interval_mins=60, additional_sync_paths=[str(extra)], selective_syncer_name="gate",
            max_file_age_secs=3600)
        cfg["cloud"] = {"id": PART, "secret": SECRET, "app_address": cloud_url}
        agent = Agent(parse_config(json.dumps(cfg)), control=False, metrics_address=("127.0.0.1", 0))
        await nursery.start(agent.run)
        assert agent.metrics is not None and agent.sync is not None
        while agent.metrics.bound_port is None or agent.sync.statistics().passes == 0:
            await trio.sleep(0.02)
        metrics_url = f"http://127.0.0.1:{agent.metrics.bound_port}"

        # The selective syncer said no: the three old files wait, and are the backlog.
        before = agent.statistics().captured
        m = await scrape(f"{metrics_url}/metrics")
        after = agent.statistics().captured
        collector = (("collector", "sensor/env/Readings"),)
        assert before <= m[("capsync_agent_collector_captured_total", collector)] <= after
        assert m[("capsync_agent_collector_target_hz", collector)] == 40
        assert m[("capsync_agent_backlog_files", ())] == 3
        assert m[("capsync_agent_backlog_bytes", ())] == 6000
        assert 3590 < m[("capsync_agent_oldest_unsynced_age_seconds", ())] < 3700
        assert m[("capsync_agent_sync_skipped_passes_total", ())] == 1
        assert m[("capsync_agent_sync_files_total", ())] == 0
        assert m[("capsync_agent_actor_up", (("actor", "sensor/env/Readings"), ("supervisor", "capture")))] == 1
        assert m[("capsync_agent_actor_restarts_total", (("actor", "sync"), ("supervisor", "agent")))] == 0
        assert 0 < m[("capsync_agent_disk_used_ratio", ())] <= 1
        assert m[("capsync_agent_info", (("part_id", PART), ("version", "0.1.0")))] == 1
        assert m[("process_resident_memory_bytes", ())] > 0
        async with httpx.AsyncClient() as c:
            health = await c.get(f"{metrics_url}/v1/health")
        assert health.status_code == 200 and health.json()["healthy"] is True

        # Let sync go: everything goes up, and both sides count the same files and bytes.
        flag.write_text("true")
        result = await agent.sync.sync_now()
        assert result.failed == 0 and result.uploaded >= 4  # the three files and at least one capture file
        m = await scrape(f"{metrics_url}/metrics")
        c = await scrape(f"{cloud_url}/metrics")
        assert m[("capsync_agent_backlog_files", ())] == 0
        assert m[("capsync_agent_oldest_unsynced_age_seconds", ())] == 0
        assert m[("capsync_agent_sync_files_total", ())] == result.uploaded
        assert c[("capsync_cloud_ingest_files_total", (("kind", "file"),))] == 3
        assert c[("capsync_cloud_ingest_bytes_total", (("kind", "file"),))] == 6000
        assert c[("capsync_cloud_ingest_rows_total", (("kind", "file"),))] == 3
        capture_files = c[("capsync_cloud_ingest_files_total", (("kind", "capture"),))]
        assert capture_files == result.uploaded - 3
        assert m[("capsync_agent_sync_bytes_total", ())] == (
            c[("capsync_cloud_ingest_bytes_total", (("kind", "file"),))]
            + c[("capsync_cloud_ingest_bytes_total", (("kind", "capture"),))])
        async with httpx.AsyncClient(base_url=cloud_url, auth=(PART, SECRET)) as client:
            rows = await all_pages(client, "/v1/tabular")
        assert c[("capsync_cloud_ingest_rows_total", (("kind", "capture"),))] == len(rows) > 0
        assert c[("capsync_cloud_commit_duration_seconds_count", ())] == result.uploaded
        # Small files go up in one request each; the routes are templates, never ids.
        put = (("method", "PUT"), ("route", "/v1/files/{file_id}"), ("status", "200"))
        assert c[("capsync_cloud_http_requests_total", put)] == result.uploaded

        # Refusals and unknown paths are counted under bounded labels.
        async with httpx.AsyncClient(base_url=cloud_url) as client:
            assert (await client.get("/v1/files", auth=(PART, "wrong"))).status_code == 401
            assert (await client.get("/no/such/thing")).status_code == 404
        c = await scrape(f"{cloud_url}/metrics")
        assert c[("capsync_cloud_http_requests_total", (("method", "GET"), ("route", "/v1/files"),
                                                        ("status", "401")))] == 1
        assert c[("capsync_cloud_http_requests_total", (("method", "GET"), ("route", "other"),
                                                        ("status", "404")))] == 1
        assert c[("capsync_cloud_store_errors_total", (("store", "store"),))] == 0
        nursery.cancel_scope.cancel()
    await store.aclose()


def _stats_with(child: ChildStats):
    class Stats:
        supervisors = (SupervisorStats("agent", (child,), child.restarts),)
    return Stats()


def test_a_child_that_stays_down_makes_the_agent_unhealthy_and_one_restarting_does_not() -> None:
    health = TreeHealth()
    down = ChildStats("sync", running=False, restarts=3, last_error="OSError: boom", last_error_at=0.0)
    up = ChildStats("sync", running=True, restarts=3, last_error="OSError: boom", last_error_at=0.0)
    assert health.problems(_stats_with(down), now=100.0) == []
    assert health.problems(_stats_with(down), now=100.0 + DOWN_GRACE_S / 2) == []
    problems = health.problems(_stats_with(down), now=101.0 + DOWN_GRACE_S)
    assert len(problems) == 1 and "agent/sync" in problems[0] and "OSError: boom" in problems[0]
    assert health.problems(_stats_with(up), now=200.0 + DOWN_GRACE_S) == []
    # Down again later: the grace starts over.
    assert health.problems(_stats_with(down), now=300.0 + DOWN_GRACE_S) == []


def test_metrics_address_is_host_colon_port() -> None:
    assert split_address("127.0.0.1:9791") == ("127.0.0.1", 9791)
    assert split_address("[::1]:0") == ("::1", 0)
    for bad in ("9791", "localhost:", ":9791", "host:http", "h:70000"):
        try:
            split_address(bad)
        except ValueError as exc:
            assert "HOST:PORT" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")
