"""The `wifi-rssi` sensor model: Wi-Fi signal strength from the Linux kernel's `/proc/net/wireless`.

`Readings` returns, for one wireless interface, `{"interface", "link_quality", "signal_dbm",
"noise_dbm", "status", "discarded_packets", "missed_beacons"}`. `signal_dbm` is the RSSI.
Where the kernel has no wireless statistics (no Wi-Fi hardware or driver, not Linux, a container
without it) or the interface is not there, the capture fails with a ResourceError that says so;
the collector counts it and keeps trying, so the readings start when Wi-Fi comes up.

Attributes (optional): `interface` (default: the first one listed), `path` (default
`/proc/net/wireless`; another file in the same format, e.g. for tests).
"""

from __future__ import annotations

from typing import Any

import trio

from .registry import ResourceLookup, register_model
from .resource import ResourceError

MODEL = "wifi-rssi"
WIRELESS_PATH = "/proc/net/wireless"


def _number(token: str) -> float:
    """'70.' or '-40.' or '-256' -> float (the kernel marks updated values with a trailing dot)."""
    return float(token.rstrip("."))


def parse_wireless(text: str) -> dict[str, dict[str, Any]]:
    """`/proc/net/wireless` content -> {interface: readings}. Lines that do not parse are skipped."""
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines()[2:]:  # two header lines
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 9:
            continue
        try:
            link, level, noise = _number(fields[1]), _number(fields[2]), _number(fields[3])
            discarded = sum(int(f) for f in fields[4:9])
            missed = int(fields[9]) if len(fields) > 9 else 0
        except ValueError:
            continue
        out[name.strip()] = {
            "interface": name.strip(), "status": fields[0], "link_quality": link,
            # some drivers report level/noise as unsigned 8-bit values: 256 - x is the dBm
            "signal_dbm": level - 256 if level > 63 else level,
            "noise_dbm": None if noise in (-256.0, 0.0) else (noise - 256 if noise > 63 else noise),
            "discarded_packets": discarded, "missed_beacons": missed,
        }
    return out


class WifiRssi:
    """A sensor whose `Readings` are the signal figures of one Wi-Fi interface."""

    type = "sensor"
    model = MODEL

    def __init__(self, name: str, attributes: dict, lookup: ResourceLookup) -> None:
        self.name = name
        interface = attributes.get("interface")
        if interface is not None and (not isinstance(interface, str) or not interface):
            raise ResourceError(f"attribute 'interface' must be an interface name, got {interface!r}")
        self.interface: str | None = interface
        path = attributes.get("path", WIRELESS_PATH)
        if not isinstance(path, str) or not path:
            raise ResourceError(f"attribute 'path' must be a file path, got {path!r}")
        self.path = path

    async def capture(self, method: str, params: dict) -> dict:
        """`Readings` -> the interface's signal figures; ResourceError where there are none."""
        if method != "Readings":
            raise ResourceError(f"sensor {self.name!r} ({MODEL}) has no method {method!r}; it has Readings")
        try:
            text = await trio.Path(self.path).read_text()
        except FileNotFoundError:
            raise ResourceError(f"no wireless statistics: {self.path} does not exist (no Wi-Fi hardware or "
                                "driver, or not Linux)") from None
        except OSError as exc:
            raise ResourceError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        found = parse_wireless(text)
        if not found:
            raise ResourceError(f"no wireless interface in {self.path} (Wi-Fi is down or absent)")
        if self.interface is None:
            return next(iter(found.values()))
        if self.interface not in found:
            raise ResourceError(f"wireless interface {self.interface!r} not in {self.path} "
                                f"(interfaces: {', '.join(found)})")
        return found[self.interface]

    async def close(self) -> None:
        """Nothing to release."""


register_model("sensor", MODEL, WifiRssi)
