"""Structure typos: keys and types that look like a config's structure but are spelled so that nothing is captured.

The robot config is shared with other software, so capsync accepts keys it does not know (a module's
`packages`, the agent's `agent`, ...). A misspelled *structural* key is then silently ignored:
`"service_config"` on a component or `"service"` at the top level drops every capture method in it,
and `"type": "data-manager"` is some other service. This module finds keys and types that are close
to a structural one and not a key of the wider robot config format, and returns one warning each,
with its JSON path and the spelling capsync reads (`capsync validate --strict` makes them errors).
"""

from __future__ import annotations

import difflib
from typing import Any

from capsync.runtime.config_build import DATA_MANAGER
from capsync.runtime.config_models import ConfigIssue, join_path

#: Top-level keys capsync reads, and keys of the robot config format it knowingly ignores.
TOP_LEVEL_READ = ("components", "services", "remotes", "cloud", "network")
TOP_LEVEL_OTHER = ("modules", "processes", "packages", "agent", "auth", "debug", "jobs", "fragments",
                   "fragment_mods", "log", "revision", "maintenance", "tracing", "disable_partial_start",
                   "enable_web_profile", "global_log_configuration", "disable_log_deduplication",
                   "overwrite_fragment_status")
#: Keys of a component, service or remote that capsync reads, and other keys of the format.
RESOURCE_READ = ("name", "type", "api", "model", "attributes", "service_configs")
RESOURCE_OTHER = ("namespace", "depends_on", "frame", "log_configuration", "implicit_depends_on",
                  "address", "secret", "tls_ca_file", "prefix", "auth", "insecure", "managed",
                  "connection_check_interval", "reconnect_interval", "remotes")
SERVICE_CONFIG_READ = ("type", "attributes")


def structure_warnings(doc: dict) -> list[ConfigIssue]:
    """One warning per near-miss structural key or data-manager type in the parsed config `doc`."""
    found: list[ConfigIssue] = []
    _near_misses(doc, "", TOP_LEVEL_READ, TOP_LEVEL_OTHER, found)
    for section in ("components", "services", "remotes"):
        for i, obj in _items(doc.get(section)):
            path = f"{section}[{i}]"
            _near_misses(obj, path, RESOURCE_READ, RESOURCE_OTHER, found)
            if section == "services":
                _data_manager_type(obj, path, found)
            for j, sc in _items(obj.get("service_configs")):
                sc_path = f"{path}.service_configs[{j}]"
                _near_misses(sc, sc_path, SERVICE_CONFIG_READ, (), found)
                _data_manager_type(sc, sc_path, found)
    return found


def _items(value: Any) -> list[tuple[int, dict]]:
    return [(i, v) for i, v in enumerate(value) if isinstance(v, dict)] if isinstance(value, list) else []


def _near_misses(obj: dict, path: str, read: tuple[str, ...], other: tuple[str, ...], found: list) -> None:
    known = set(read) | set(other)
    for key in obj:
        if not isinstance(key, str) or key in known:
            continue
        close = _closest(key, read)
        if close is not None and _closest(key, other) is None:
            found.append(ConfigIssue(join_path(path, key), f"unknown key {key!r} is ignored, so nothing in it "
                                     f"is used; did you mean {close!r}?", f'rename it to "{close}"'))


def _data_manager_type(obj: dict, path: str, found: list) -> None:
    raw = obj.get("type") if obj.get("type") is not None else obj.get("api")
    if not isinstance(raw, str):
        return
    short = raw.rsplit(":", 1)[-1]
    if short != DATA_MANAGER and _closest(short, (DATA_MANAGER,)) is not None:
        key = "type" if obj.get("type") is not None else "api"
        found.append(ConfigIssue(join_path(path, key), f"type {raw!r} is not the data manager, so it is "
                                 f"ignored; did you mean {DATA_MANAGER!r}?", f'write "{key}": "{DATA_MANAGER}"'))


def _closest(word: str, choices: tuple[str, ...]) -> str | None:
    """The choice `word` is a misspelling of: same letters ignoring case, '-', '_' and spaces, or 80 % alike."""
    squashed = _squash(word)
    for c in choices:
        if _squash(c) == squashed or _squash(c).rstrip("s") == squashed.rstrip("s"):
            return c
    m = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.8)
    return m[0] if m else None


def _squash(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch not in "-_ ")
