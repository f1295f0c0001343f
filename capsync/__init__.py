"""capsync: data capture and exactly-once cloud sync for robots.

This module is the public face of the package, as small as a user of the agent as a library
needs: read and check a config, run an agent on it, write a model of your own, read capture
files. The simulation harness and the fault injectors are in :mod:`capsync.testing`. Everything
else (``capsync.actors``, ``capsync.runtime``, ``capsync.cloud``) is internal and may change
without notice.

Names are loaded on first use, so ``import capsync`` stays cheap and importing the cloud does
not drag in the agent.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

try:
    __version__: str = importlib.metadata.version("capsync")
except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

#: public name -> the internal module that defines it
_EXPORTS = {
    # configs
    "load_config": "capsync.runtime.config",
    "parse_config": "capsync.runtime.config",
    "validate_file": "capsync.runtime.config",
    "RobotConfig": "capsync.runtime.config",
    "ConfigError": "capsync.runtime.config",
    "ConfigIssue": "capsync.runtime.config",
    # the agent
    "Agent": "capsync.actors.agent",
    "AgentStats": "capsync.actors.agent_stats",
    # models of your own
    "register_model": "capsync.runtime.resources.registry",
    "registered_models": "capsync.runtime.resources.registry",
    "Binary": "capsync.runtime.resources.resource",
    "Resource": "capsync.runtime.resources.resource",
    "ResourceError": "capsync.runtime.resources.resource",
    "NoCapture": "capsync.runtime.resources.resource",
    "ResourceRegistry": "capsync.runtime.resources.registry",
    "UnknownModel": "capsync.runtime.resources.registry",
    # capture files
    "read_capture": "capsync.runtime.capture_file",
    "recover_dir": "capsync.runtime.capture_file",
    "CaptureHeader": "capsync.runtime.capture_file",
    "CaptureRecord": "capsync.runtime.capture_file",
    "CaptureFormatError": "capsync.runtime.capture_file",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'capsync' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load lazily
    from capsync.actors.agent import Agent
    from capsync.actors.agent_stats import AgentStats
    from capsync.runtime.capture_file import CaptureFormatError, CaptureHeader, CaptureRecord, read_capture, recover_dir
    from capsync.runtime.config import ConfigError, ConfigIssue, RobotConfig, load_config, parse_config, validate_file
    from capsync.runtime.resources.registry import ResourceRegistry, UnknownModel, register_model, registered_models
    from capsync.runtime.resources.resource import Binary, NoCapture, Resource, ResourceError
