"""Capture to MongoDB through the whole agent (acceptance, short form, real time).

- a fake sensor at 10 Hz for 10 s writes 100 +- 2 documents of the documented shape;
- with the stand-in stopped midway, the capture files still hold every reading and the agent
  logs the failures without crashing;
- a 100 Hz capture is not slowed when MongoDB answers each insert slowly (the figure is printed).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import trio

from capsync.actors.agent import Agent
from capsync.runtime.config import parse_config
from capsync.runtime.mongo_documents import FIELDS, ns_to_datetime
from tests.helpers import fake_component, leftover_progs, records_by_method, robot_config
from tests.mongo_standin import mongo_target  # noqa: F401 (fixture)


def _agent(tmp_path: Path, target, hz: float, *, with_camera: bool = False) -> Agent:
    comps = [fake_component("env", "sensor", [{"method": "Readings", "capture_frequency_hz": hz}])]
    if with_camera:  # binary: never written to MongoDB
        comps.append(fake_component("cam", "camera", [{"method": "ReadImage", "capture_frequency_hz": 2}]))
    cfg = robot_config(tmp_path / "capture", comps, sync_disabled=True, tags=["dash"],
                       mongo_capture_config={"uri": target.uri, "database": target.database})
    return Agent(parse_config(json.dumps(cfg)))


async def _run(agent: Agent, seconds: float, midway=None) -> float:
    t0 = time.monotonic()
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        if midway is not None:
            await trio.sleep(seconds / 2)
            midway()
            await trio.sleep(seconds / 2)
        else:
            await trio.sleep(seconds)
        n.cancel_scope.cancel()
    return time.monotonic() - t0


def _restarts(agent: Agent) -> int:
    return sum(s.total_restarts for s in agent.statistics().supervisors)


async def test_10hz_for_10s_writes_100_documents_of_the_documented_shape(tmp_path, mongo_target):
    agent = _agent(tmp_path, mongo_target, 10, with_camera=True)
    children: list[str] = []
    # 10 s of ticks at 0.0, 0.1, ... 9.9; collectors start a little before the agent reports ready
    # and stop a little after the cancel, hence the 50 ms less.
    await _run(agent, 10.0 - 0.05, midway=lambda: children.extend(agent._root.child_names()))
    assert children.index("mongo_sink") < children.index("capture")  # starts before capture, stops after it
    stats = agent.statistics()
    docs = sorted(mongo_target.documents("readings"), key=lambda d: d["time_requested"])
    (on_disk,) = [r for k, r in records_by_method(tmp_path / "capture").items() if k.startswith("sensor/")]
    print(f"\n10 Hz for 10 s: {len(docs)} documents, {len(on_disk)} records on disk, mongo {stats.mongo}")
    assert 98 <= len(docs) <= 102
    assert len(docs) == len(on_disk) == stats.mongo.written
    assert stats.mongo.dropped == stats.mongo.failed == 0
    for doc, r in zip(docs, on_disk, strict=True):
        assert set(doc) == {"_id", *FIELDS}
        assert (doc["part_id"], doc["component_type"], doc["component_name"], doc["method_name"]) == (
            "test-part", "sensor", "env", "Readings")
        assert doc["method_parameters"] == {} and doc["tags"] == ["dash"]
        assert doc["time_requested"] == ns_to_datetime(r.requested_ns).replace(tzinfo=None)
        assert doc["time_received"] == ns_to_datetime(r.received_ns).replace(tzinfo=None)
        assert doc["data"] == r.payload
    assert _restarts(agent) == 0


async def test_mongodb_stopped_midway_capture_files_keep_every_reading(tmp_path, mongo_target, caplog):
    standin = mongo_target.require_standin()
    agent = _agent(tmp_path, mongo_target, 20)
    with caplog.at_level(logging.INFO, logger="capsync"):
        await _run(agent, 4.0, midway=standin.stop)
    stats = agent.statistics()
    (on_disk,) = records_by_method(tmp_path / "capture").values()
    written = len(standin.documents(mongo_target.database, "readings"))
    print(f"\nstand-in stopped after 2 s of 4 s: {stats.captured} captured, {len(on_disk)} on disk, "
          f"{written} in MongoDB, mongo {stats.mongo}")
    assert len(on_disk) == stats.captured >= 0.95 * 4.0 * 20  # every reading, at full rate
    assert not leftover_progs(tmp_path / "capture")
    m = stats.mongo
    assert 0 < written < stats.captured and m.failed_writes >= 1
    assert m.written + m.failed + m.dropped + m.abandoned + m.queued == stats.captured  # all accounted for
    errors = [r for r in caplog.records if r.name == "capsync.mongo" and r.levelno == logging.ERROR]
    assert errors and all(r.error for r in errors)  # the failures are logged, with the error
    assert len(errors) <= 3  # once per change of state, not once per batch
    assert _restarts(agent) == 0


async def test_100hz_capture_is_not_slowed_when_mongodb_answers_slowly(tmp_path, mongo_target):
    standin = mongo_target.require_standin()
    standin.insert_delay_s = 1.0
    agent = _agent(tmp_path, mongo_target, 100)
    seconds = 4.0
    await _run(agent, seconds)
    stats = agent.statistics()
    (c,) = stats.collectors
    m = stats.mongo
    print(f"\n100 Hz with every MongoDB insert taking {standin.insert_delay_s:.1f} s: captured {c.captured} "
          f"in {seconds:.1f} s ({c.captured / seconds:.1f}/s of 100), late {c.late_ticks}, missed {c.missed_ticks}, "
          f"max lateness {c.max_lateness_s * 1000:.1f} ms; MongoDB written {m.written}, queued {m.queued}, "
          f"dropped {m.dropped}, inserts {standin.commands.count('insert')}")
    # Of the ticks that came due once the collector ran (the agent's start-up is not MongoDB's doing,
    # and on a loaded machine it takes a good part of a second of the window): 97 % captured.
    assert c.captured >= 0.97 * (c.captured + c.missed_ticks) and c.captured >= 0.85 * 100 * seconds
    assert c.missed_ticks <= 0.02 * 100 * seconds
    assert m.written < c.captured  # MongoDB really was the slow part
    assert _restarts(agent) == 0
