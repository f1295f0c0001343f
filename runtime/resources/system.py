"""The `system` sensor model: the health of the computer the agent runs on, through psutil.

`Readings` returns CPU use (whole machine and per CPU, since the previous reading), load
averages, memory and swap, disk usage of the configured paths, network counters, temperatures
where the kernel exposes them, uptime, and the agent process's own CPU and memory. CPU
percentages are measured between two readings of this sensor (its own baseline, so two `system`
sensors do not disturb each other); the first reading measures since the sensor was built.

Attributes (all optional):

- `disk_paths`: list of mount points to report (default `["/"]`); a missing path is reported as
  an `error` entry for that path, not a failed capture;
- `per_cpu`: include `cpu_percent_per_cpu` (default true);
- `per_interface`: include per-interface network counters under `net_interfaces` (default false);
- `temperatures`: include `temperatures_c` (default true; `{}` where the kernel has none);
- `process`: include the agent process's own `process_cpu_percent` and `process_rss_bytes` (default true).
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil
import trio

from .registry import ResourceLookup, register_model
from .resource import ResourceError

MODEL = "system"


def _busy_total(t: Any) -> tuple[float, float]:
    """(busy seconds, total seconds) of a psutil cpu_times tuple; idle and iowait are not busy."""
    total = sum(t)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


def _percent(before: tuple[float, float], after: tuple[float, float]) -> float:
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return 0.0
    return round(min(max(100.0 * busy / total, 0.0), 100.0), 1)


def _flag(attributes: dict, key: str, default: bool) -> bool:
    value = attributes.get(key, default)
    if not isinstance(value, bool):
        raise ResourceError(f"attribute {key!r} must be true or false, got {value!r}")
    return value


class SystemSensor:
    """A sensor whose `Readings` describe this computer (CPU, memory, disk, load, temperatures, network)."""

    type = "sensor"
    model = MODEL

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        self.name = name
        paths = attributes.get("disk_paths", ["/"])
        if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
            raise ResourceError(f"attribute 'disk_paths' must be a list of paths, got {paths!r}")
        self.disk_paths = list(paths)
        self.per_cpu = _flag(attributes, "per_cpu", True)
        self.per_interface = _flag(attributes, "per_interface", False)
        self.temperatures = _flag(attributes, "temperatures", True)
        self.process = _flag(attributes, "process", True)
        self._proc = psutil.Process()
        self._cpu = _busy_total(psutil.cpu_times())
        self._cpus = [_busy_total(t) for t in psutil.cpu_times(percpu=True)]
        self._proc_cpu = (self._proc_seconds(), time.monotonic())
        self._lock = trio.Lock()

    def _proc_seconds(self) -> float:
        t = self._proc.cpu_times()
        return t.user + t.system

    async def capture(self, method: str, params: dict) -> dict:
        """`Readings` -> a dict of the machine's current figures (gathered in a worker thread)."""
        if method != "Readings":
            raise ResourceError(f"sensor {self.name!r} ({MODEL}) has no method {method!r}; it has Readings")
        async with self._lock:  # the CPU baselines are updated by each reading
            return await trio.to_thread.run_sync(self.readings)

    def readings(self) -> dict[str, Any]:
        """The figures, synchronously (psutil reads /proc and /sys)."""
        out: dict[str, Any] = {}
        cpu = _busy_total(psutil.cpu_times())
        out["cpu_percent"], self._cpu = _percent(self._cpu, cpu), cpu
        out["cpu_count"] = psutil.cpu_count() or 0
        if self.per_cpu:
            cpus = [_busy_total(t) for t in psutil.cpu_times(percpu=True)]
            if len(cpus) == len(self._cpus):
                out["cpu_percent_per_cpu"] = [_percent(a, b) for a, b in zip(self._cpus, cpus, strict=True)]
            self._cpus = cpus
        freq = _safe(psutil.cpu_freq)
        if freq is not None:
            out["cpu_freq_mhz"] = round(freq.current, 1)
        if hasattr(os, "getloadavg"):
            out["load_1"], out["load_5"], out["load_15"] = (round(x, 2) for x in os.getloadavg())
        mem, swap = psutil.virtual_memory(), psutil.swap_memory()
        out["memory"] = {"total_bytes": mem.total, "available_bytes": mem.available,
                         "used_bytes": mem.total - mem.available, "percent": mem.percent}
        out["swap"] = {"total_bytes": swap.total, "used_bytes": swap.used, "percent": swap.percent}
        out["disks"] = {p: self._disk(p) for p in self.disk_paths}
        net = psutil.net_io_counters()
        out["net"] = _net(net) if net is not None else {}
        if self.per_interface:
            out["net_interfaces"] = {n: _net(c) for n, c in sorted(psutil.net_io_counters(pernic=True).items())}
        if self.temperatures:
            out["temperatures_c"] = _temperatures()
        out["uptime_s"] = round(time.time() - psutil.boot_time(), 1)
        out["process_count"] = len(psutil.pids())
        if self.process:
            now, cpu_s = time.monotonic(), self._proc_seconds()
            last_s, last_t = self._proc_cpu
            out["process_cpu_percent"] = round(100.0 * (cpu_s - last_s) / (now - last_t), 1) if now > last_t else 0.0
            self._proc_cpu = (cpu_s, now)
            out["process_rss_bytes"] = self._proc.memory_info().rss
        return out

    @staticmethod
    def _disk(path: str) -> dict[str, Any]:
        try:
            d = psutil.disk_usage(path)
        except OSError as exc:
            return {"error": f"{path}: {exc.strerror or exc}"}
        return {"total_bytes": d.total, "used_bytes": d.used, "free_bytes": d.free, "percent": d.percent}

    async def close(self) -> None:
        """Nothing to release."""


def _safe(fn: Any) -> Any:
    try:
        return fn()
    except (OSError, RuntimeError, NotImplementedError, AttributeError):
        return None


def _net(c: Any) -> dict[str, int]:
    return {"bytes_sent": c.bytes_sent, "bytes_recv": c.bytes_recv, "packets_sent": c.packets_sent,
            "packets_recv": c.packets_recv, "errin": c.errin, "errout": c.errout,
            "dropin": c.dropin, "dropout": c.dropout}


def _temperatures() -> dict[str, float]:
    """`{"<chip>/<label>": °C}` for every sensor the kernel exposes; {} where there are none."""
    fn = getattr(psutil, "sensors_temperatures", None)
    found = _safe(fn) if fn is not None else None
    out: dict[str, float] = {}
    for chip, entries in (found or {}).items():
        for i, e in enumerate(entries):
            label = e.label or str(i)
            if e.current is not None:
                out[f"{chip}/{label}"] = round(float(e.current), 1)
    return out


register_model("sensor", MODEL, SystemSensor)
