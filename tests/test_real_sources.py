"""The real data sources: `system` (psutil), `wifi-rssi`, `image-dir` and `command`, and the example
configs that use them. Real clock; the system sensor test burns CPU for a couple of seconds."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import threading
from pathlib import Path

import psutil
import pytest
import trio
from PIL import Image

from capsync.actors.agent import Agent
from capsync.runtime.config import load_config, parse_config
from capsync.runtime.resources.registry import ResourceRegistry, build_resource
from capsync.runtime.resources.resource import ResourceError
from capsync.runtime.resources.wifi_rssi import parse_wireless
from tests.helpers import records_by_method, robot_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def build(type_: str, model: str, **attributes):
    """One resource of `model`, built the way the agent builds it."""
    return build_resource(type_, "r", model, attributes, ResourceRegistry())


# -- system -----------------------------------------------------------------------------


async def test_system_readings_are_plausible():
    sensor = build("sensor", "system", disk_paths=["/", "/no/such/mount"], per_interface=True)
    await trio.sleep(0.2)
    r = await sensor.capture("Readings", {})
    assert 0.0 <= r["cpu_percent"] <= 100.0 and r["cpu_count"] == psutil.cpu_count()
    assert len(r["cpu_percent_per_cpu"]) == psutil.cpu_count()
    assert r["load_1"] >= 0 and r["uptime_s"] > 0 and r["process_count"] > 1
    mem = r["memory"]
    assert mem["total_bytes"] > mem["available_bytes"] > 0 and 0 < mem["percent"] < 100
    assert r["disks"]["/"]["total_bytes"] > 0 and "error" in r["disks"]["/no/such/mount"]
    assert r["net"]["bytes_recv"] >= 0 and "lo" in r["net_interfaces"]
    assert isinstance(r["temperatures_c"], dict)  # {} where the kernel has no sensors (as here, in a VM)
    assert r["process_rss_bytes"] > 10_000_000
    json.dumps(r, allow_nan=False)  # tabular: JSON-like values only
    with pytest.raises(ResourceError, match="Readings"):
        await sensor.capture("Position", {})
    with pytest.raises(ResourceError, match="disk_paths"):
        build("sensor", "system", disk_paths="/")


def _burn(stop: threading.Event) -> None:
    """Burn a CPU without holding the GIL for long (hashlib releases it), so the agent keeps its rate."""
    block = b"x" * (1 << 20)
    while not stop.is_set():
        hashlib.sha256(block).digest()


async def test_system_sensor_at_1hz_follows_cpu_load(tmp_path):
    comps = [{"name": "host", "type": "sensor", "model": "system", "attributes": {},
              "service_configs": [{"type": "data_manager", "attributes": {"capture_methods": [
                  {"method": "Readings", "capture_frequency_hz": 1}]}}]}]
    agent = Agent(parse_config(json.dumps(robot_config(tmp_path / "cap", comps, sync_disabled=True))), control=False)
    cpus = psutil.cpu_count() or 1
    stop = threading.Event()
    burners = [threading.Thread(target=_burn, args=(stop,), daemon=True) for _ in range(min(cpus, 8))]
    try:
        async with trio.open_nursery() as n:
            await n.start(agent.run)
            await trio.sleep(2.2)  # readings at 0, 1 and 2 s without load
            for t in burners:
                t.start()
            await trio.sleep(2.5)  # readings at 3 and 4 s under load
            n.cancel_scope.cancel()
    finally:
        stop.set()
        for t in burners:
            t.join()
    recs = [r.payload for r in records_by_method(tmp_path / "cap")["sensor/host/Readings"]]
    assert len(recs) >= 5
    idle, loaded = recs[1:3], recs[-2:]
    cpu = lambda rs, key: [r[key] for r in rs]  # noqa: E731
    print(f"system cpu_percent idle {cpu(idle, 'cpu_percent')} -> loaded {cpu(loaded, 'cpu_percent')}; "
          f"agent process cpu {cpu(idle, 'process_cpu_percent')} -> {cpu(loaded, 'process_cpu_percent')} "
          f"({len(burners)} burner threads, {cpus} cpus)")
    # the agent's own process: burning threads show up whatever else the machine is doing
    assert min(cpu(loaded, "process_cpu_percent")) >= max(cpu(idle, "process_cpu_percent")) + 15
    # the whole machine: busy under load; higher than before unless other work had it saturated already
    assert max(cpu(loaded, "cpu_percent")) >= 60.0 * len(burners) / cpus
    if max(cpu(idle, "cpu_percent")) < 85:
        assert max(cpu(loaded, "cpu_percent")) > max(cpu(idle, "cpu_percent")) + 10
    assert recs[-1]["net"]["bytes_recv"] >= recs[0]["net"]["bytes_recv"]


# -- wifi-rssi --------------------------------------------------------------------------

WIRELESS = """Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE
 face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22
 wlan0: 0000   54.  -56.  -256        0      0      0      3      7        2
  wlp3s0: 0000   70   195   161        1      0      0      0      0        0
"""


async def test_wifi_rssi_reads_the_kernel_table(tmp_path):
    parsed = parse_wireless(WIRELESS)
    assert parsed["wlan0"]["signal_dbm"] == -56.0 and parsed["wlan0"]["noise_dbm"] is None
    assert parsed["wlan0"]["link_quality"] == 54.0 and parsed["wlan0"]["discarded_packets"] == 10
    assert parsed["wlp3s0"]["signal_dbm"] == -61.0 and parsed["wlp3s0"]["noise_dbm"] == -95.0
    table = tmp_path / "wireless"
    table.write_text(WIRELESS)
    assert (await build("sensor", "wifi-rssi", path=str(table)).capture("Readings", {}))["interface"] == "wlan0"
    second = build("sensor", "wifi-rssi", path=str(table), interface="wlp3s0")
    assert (await second.capture("Readings", {}))["signal_dbm"] == -61.0
    with pytest.raises(ResourceError, match=r"'eth9' not in .*wlan0, wlp3s0"):
        await build("sensor", "wifi-rssi", path=str(table), interface="eth9").capture("Readings", {})
    table.write_text("\n".join(WIRELESS.splitlines()[:2]))
    with pytest.raises(ResourceError, match="no wireless interface"):
        await build("sensor", "wifi-rssi", path=str(table)).capture("Readings", {})
    with pytest.raises(ResourceError, match="does not exist.*no Wi-Fi"):
        await build("sensor", "wifi-rssi", path=str(tmp_path / "absent")).capture("Readings", {})


# -- image-dir --------------------------------------------------------------------------


def _image(path: Path, color: tuple[int, int, int], fmt: str) -> None:
    Image.new("RGB", (32, 24), color).save(path, fmt)


async def test_image_dir_replays_a_folder_in_a_loop(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    _image(folder / "001.jpg", (255, 0, 0), "JPEG")
    _image(folder / "002.png", (0, 255, 0), "PNG")
    (folder / "notes.txt").write_text("not an image")
    cam = build("camera", "image-dir", path=str(folder))
    got = [await cam.capture("ReadImage", {}) for _ in range(3)]
    assert [(b.metadata["file"], b.mime_type) for b in got] == [
        ("001.jpg", "image/jpeg"), ("002.png", "image/png"), ("001.jpg", "image/jpeg")]
    assert got[0].data == (folder / "001.jpg").read_bytes()
    _image(folder / "003.jpg", (0, 0, 255), "JPEG")  # joins at the next lap
    converted = await cam.capture("ReadImage", {"mime_type": "image/jpeg"})  # 002.png, asked for as JPEG
    assert converted.mime_type == "image/jpeg" and converted.data[:2] == b"\xff\xd8"
    with Image.open(io.BytesIO(converted.data)) as img:
        assert img.size == (32, 24) and img.getpixel((16, 12))[1] > 200
    images = await cam.capture("GetImages", {})  # a new lap: the folder is listed again
    assert [(b.metadata["file"], b.metadata["source"]) for b in images] == [("001.jpg", "r")]
    assert [(await cam.capture("ReadImage", {})).metadata["file"] for _ in range(2)] == ["002.png", "003.jpg"]
    with pytest.raises(ResourceError, match="no point clouds"):
        await cam.capture("NextPointCloud", {})
    once = build("camera", "image-dir", path=str(folder), loop=False)
    for _ in range(3):
        await once.capture("ReadImage", {})
    with pytest.raises(ResourceError, match="replay finished: all 3 images"):
        await once.capture("ReadImage", {})


async def test_image_dir_says_clearly_what_is_wrong_with_the_folder(tmp_path):
    with pytest.raises(ResourceError, match="does not exist"):
        await build("camera", "image-dir", path=str(tmp_path / "nope")).capture("ReadImage", {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResourceError, match=r"has no images \(.bmp, .gif, .jpeg, .jpg, .png, .webp\)"):
        await build("camera", "image-dir", path=str(tmp_path / "empty")).capture("ReadImage", {})
    with pytest.raises(ResourceError, match="'path'"):
        build("camera", "image-dir")


# -- command ----------------------------------------------------------------------------


def py(code: str) -> list[str]:
    """A command that runs `code` in a fresh Python."""
    return [sys.executable, "-c", code]


async def test_command_sensor_captures_json_and_explains_failures():
    ok = build("sensor", "command", command=py('print(\'{"temp_c": 41.5, "fans": [1200, 900]}\')'))
    assert await ok.capture("Readings", {}) == {"temp_c": 41.5, "fans": [1200, 900]}
    scalar = build("sensor", "command", command=f"{sys.executable} -c 'print(7)'")
    assert await scalar.capture("Readings", {}) == {"value": 7}
    cases = [
        (py("print('hello')"), r"printed no JSON .*hello"),
        (py("print('NaN')"), "printed no JSON"),
        (py("import sys; sys.stderr.write('x' * 1000 + 'sensor bus is down'); sys.exit(3)"),
         r"exited with status 3: …x+sensor bus is down$"),
        (["/no/such/probe"], "could not be started"),
    ]
    for argv, pattern in cases:
        with pytest.raises(ResourceError, match=pattern):
            await build("sensor", "command", command=argv).capture("Readings", {})
    slow = build("sensor", "command", command=py("import time; time.sleep(30)"), timeout_secs=0.5)
    t0 = trio.current_time()
    with pytest.raises(ResourceError, match="did not finish within 0.5 s and was killed"):
        await slow.capture("Readings", {})
    assert trio.current_time() - t0 < 2
    for bad in ({}, {"command": []}, {"command": "x", "timeout_secs": 0}, {"command": "x", "env": {"A": 1}}):
        with pytest.raises(ResourceError):
            build("sensor", "command", **bad)


# -- the example configs ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["system-monitor.json", "image-replay.json", "remote-main.json", "remote-board.json"])
def test_example_configs_are_valid(name):
    cfg = load_config(CONFIGS / name)
    reg = ResourceRegistry()
    refs = [r for r in cfg.resources() if r.remote is None]
    wanted = {p.resource.name for p in cfg.capture_plan() if p.resource.remote is None}
    failures = reg.reconcile(refs)
    assert not {n: str(e) for n, e in failures.items() if n in wanted}


async def test_image_replay_example_captures_the_sample_images(tmp_path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    raw = json.loads((CONFIGS / "image-replay.json").read_text())
    for svc in raw["services"]:
        if svc["type"] == "data_manager":
            svc["attributes"].update(capture_dir=str(tmp_path / "cap"), sync_disabled=True)
    raw.pop("network", None)
    agent = Agent(parse_config(json.dumps(raw)), control=False)
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        await trio.sleep(1.2)
        n.cancel_scope.cancel()
    recs = [r for key, rs in records_by_method(tmp_path / "cap").items() if key.startswith("camera/") for r in rs]
    samples = sorted(p.name for p in (CONFIGS / "sample-images").iterdir())
    assert len(recs) >= 3 and {r.metadata["file"] for r in recs} <= set(samples)
