"""The capture methods each resource type supports, as documented, and what each one produces.

This table is the single source of truth for "which methods does a type have" (plus `DoCommand`,
which every type has): the config
validator uses it to reject an unknown method, the collector uses it to tell tabular methods
from binary ones, and the fake models implement exactly these.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class DataKind(str, Enum):
    """Whether a capture method yields structured readings (tabular) or files such as images (binary)."""

    TABULAR = "tabular"
    BINARY = "binary"


@dataclass(frozen=True)
class MethodSpec:
    """One capture method of one resource type: its data kind and the additional_params it requires."""

    name: str
    kind: DataKind
    required_params: tuple[str, ...] = ()


def _tab(name: str, *required: str) -> MethodSpec:
    return MethodSpec(name, DataKind.TABULAR, required)


def _bin(name: str, *required: str) -> MethodSpec:
    return MethodSpec(name, DataKind.BINARY, required)


#: resource type -> method name -> spec. Types are the API type names used in configs.
METHODS: dict[str, dict[str, MethodSpec]] = {
    t: {m.name: m for m in specs}
    for t, specs in {
        "arm": [_tab("EndPosition"), _tab("JointPositions")],
        "board": [_tab("Analogs", "reader_name"), _tab("Gpios", "pin_name")],
        "camera": [_bin("GetImages"), _bin("ReadImage"), _bin("NextPointCloud")],
        "encoder": [_tab("TicksCount")],
        "gantry": [_tab("Lengths"), _tab("Position")],
        "motor": [_tab("Position"), _tab("IsPowered")],
        "movement_sensor": [
            _tab("AngularVelocity"),
            _tab("CompassHeading"),
            _tab("LinearAcceleration"),
            _tab("LinearVelocity"),
            _tab("Orientation"),
            _tab("Position"),
        ],
        "sensor": [_tab("Readings")],
        "servo": [_tab("Position")],
        "vision": [_bin("CaptureAllFromCamera", "camera_name")],
    }.items()
}


#: `DoCommand` is a capture method of every resource type, those above and any other (`generic`
#: components, services): its `additional_params` are the command, its answer a tabular reading.
DO_COMMAND_SPEC = MethodSpec("DoCommand", DataKind.TABULAR)


def method_spec(resource_type: str, method: str) -> MethodSpec | None:
    """The spec of `method` on `resource_type`, or None when that type has no such capture method."""
    if method == DO_COMMAND_SPEC.name:
        return DO_COMMAND_SPEC
    return METHODS.get(resource_type, {}).get(method)


def methods_of(resource_type: str) -> list[str]:
    """The capture methods of `resource_type`, DoCommand last (every type has it)."""
    return [*METHODS.get(resource_type, {}), DO_COMMAND_SPEC.name]
