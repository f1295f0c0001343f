"""Robot configs: parse the JSON robot developers already write, validate what capsync uses, derive the capture plan.

The config has top-level `components`, `services` and `remotes` (plus keys such as `modules` or
`agent` that capsync ignores), and capsync's own `cloud` and `network` sections. The data manager
is the service with type `data_manager`; every resource (component or service) and every remote
may carry `service_configs` with a data_manager entry listing its `capture_methods`.

Every problem is reported, with its JSON path, in one `ConfigError`. `//` and `/* */` comments
outside strings are accepted; typographic quotes are not (they are reported with line and column).
The pydantic models and the error types live in `capsync.runtime.config_models`, the derived view and the
validating walk in `capsync.runtime.config_build`; docs/config.md is the reference.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsync.runtime.capture_control import CaptureOverride
from capsync.runtime.config_build import Builder, CaptureMethodPlan, ConfiguredMethod, RemoteConfig, ResourceRef
from capsync.runtime.config_structure import structure_warnings
from capsync.runtime.config_models import (
    CloudConfig,
    ConfigError,
    ConfigIssue,
    DataManagerAttributes,
    MongoCaptureConfig,
    NetworkConfig,
    RetentionPolicy,
)
from capsync.runtime.resources.methods import DataKind

__all__ = [
    "CaptureMethodPlan", "CloudConfig", "ConfigError", "ConfigIssue", "DataKind", "DataManagerAttributes",
    "MongoCaptureConfig", "NetworkConfig", "RemoteConfig", "ResourceRef", "RetentionPolicy", "RobotConfig",
    "ControlTarget", "control_target", "load_config", "log_warnings", "parse_config", "validate_file",
]


@dataclass(frozen=True)
class RobotConfig:
    """A valid robot config: what capsync reads from it, plus the document as parsed (`raw`)."""

    source: str
    raw: dict
    data_manager: DataManagerAttributes | None
    cloud: CloudConfig
    network: NetworkConfig
    remotes: list[RemoteConfig]
    warnings: list[ConfigIssue]  # allowed but probably not meant, e.g. capture methods but no data manager
    _resources: tuple[ResourceRef, ...] = ()
    _methods: tuple[ConfiguredMethod, ...] = ()
    #: What the capture control sensor asks for now (see with_overrides); () follows the file.
    overrides: tuple[CaptureOverride, ...] = ()

    @property
    def capture_off_reason(self) -> str | None:
        """Why nothing is captured at all, or None when capture is on."""
        if self.data_manager is None:
            return "no data_manager service is configured"
        if self.data_manager.capture_disabled:
            return "capture_disabled is true on the data_manager service"
        return None

    @property
    def capture_enabled(self) -> bool:
        """True when there is a data manager and it has capture on."""
        return self.capture_off_reason is None

    @property
    def sync_enabled(self) -> bool:
        """True when there is a data manager and it has sync on."""
        return self.data_manager is not None and not self.data_manager.sync_disabled

    def resources(self) -> list[ResourceRef]:
        """Local components and services with a model (not the data manager), then remote resources that capture."""
        return list(self._resources)

    def capture_plan(self) -> list[CaptureMethodPlan]:
        """Every enabled capture method in config order, with the overrides applied; empty when
        capture is off for the whole part."""
        if not self.capture_enabled:
            return []
        if not self.overrides:
            return [m.plan() for m in self._methods if m.enabled]
        wanted = {(o.resource_name, o.method): o for o in self.overrides}
        plans = []
        for m in self._methods:
            o = wanted.get((m.resource.name, m.entry.method))
            hz = m.entry.capture_frequency_hz if o is None or o.frequency_hz is None else o.frequency_hz
            if not m.entry.disabled and hz > 0:
                plans.append(m.plan(hz, o.tags if o is not None else None))
        return plans

    def with_overrides(self, overrides: tuple[CaptureOverride, ...]) -> RobotConfig:
        """This config with the capture control sensor's `overrides` in place of any earlier ones."""
        return dataclasses.replace(self, overrides=tuple(overrides))

    def unmatched(self, overrides: tuple[CaptureOverride, ...]) -> list[CaptureOverride]:
        """The overrides that name no configured capture method (of a local or remote resource)."""
        known = {(m.resource.name, m.entry.method) for m in self._methods}
        return [o for o in overrides if (o.resource_name, o.method) not in known]


# ---------------------------------------------------------------------------------------------
# Entry points


def load_config(path: str | Path) -> RobotConfig:
    """Read and parse the config file at `path`. Raises ConfigError for anything unusable, including I/O."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read {path}: {exc.strerror or exc}")], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue("", f"{path} is not UTF-8 text (byte {exc.start})",
                                       "save the file as UTF-8")], str(path)) from None
    return parse_config(text, str(path))


def log_warnings(config: RobotConfig, logger: logging.Logger, **extra: Any) -> None:
    """Log each of `config`'s warnings (allowed but probably not meant) as one structured line."""
    for w in config.warnings:
        logger.warning("config warning", extra={"config": config.source, "where": w.path or "(document)",
                                                "problem": w.message, "fix": w.hint, **extra})


@dataclass(frozen=True)
class ControlTarget:
    """Where a config's agent answers control calls, read even from a config with problems."""

    path: Path  # the config file, absolute
    address: str | None  # network.bind_address, None for the default
    secret: str | None  # cloud.secret
    problems: list[ConfigIssue]  # why the file is not a valid config now ([] when it is)


def control_target(path: str | Path) -> ControlTarget:
    """The control address and secret of the agent running the config at `path`.

    A bad edit must not stop `capsync status` from showing the running agent (which keeps its last
    good revision), so an invalid file is read for just its `network.bind_address` and
    `cloud.secret`. Raises ConfigError only when the file cannot be read or is not JSON at all.
    """
    path = Path(os.path.abspath(path))
    try:
        cfg = load_config(path)
        return ControlTarget(path, cfg.network.bind_address, cfg.cloud.secret or None, [])
    except ConfigError as exc:
        problems = exc.issues
        try:
            doc = _parse_json(path.read_bytes().decode("utf-8-sig"), str(path))
        except (ConfigError, OSError, UnicodeDecodeError):
            raise exc from None
    network, cloud = (doc.get(k) if isinstance(doc, dict) and isinstance(doc.get(k), dict) else {}
                      for k in ("network", "cloud"))
    address, secret = network.get("bind_address"), cloud.get("secret")
    return ControlTarget(path, address if isinstance(address, str) else None,
                         secret if isinstance(secret, str) and secret else None, problems)


def validate_file(path: str | Path) -> list[ConfigIssue]:
    """Every problem of the config file at `path`; [] when it is valid."""
    try:
        load_config(path)
    except ConfigError as exc:
        return exc.issues
    return []


def parse_config(text: str, source: str = "<config>") -> RobotConfig:
    """Parse and validate config JSON text. `source` names the text in messages (usually the file path)."""
    try:
        doc = _parse_json(text, source)
        b = Builder(source).build(doc)
    except RecursionError:
        raise ConfigError([ConfigIssue("", f"{source} is nested too deeply", "flatten the JSON")], source) from None
    warnings = structure_warnings(doc) + b.warnings
    return RobotConfig(source, doc, b.data_manager, b.cloud, b.network, b.remotes, warnings, b.resources, b.methods)


# ---------------------------------------------------------------------------------------------
# JSON text: comments, typographic quotes, NaN


_CURLY = "\u201c\u201d\u201e\u201f\u2018\u2019\u201a\u201b\u2033"
_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"?|//[^\n]*|/\*[\s\S]*?(?:\*/|\Z)|[' + _CURLY + r"]|\b(?:NaN|Infinity)\b")


def _line_col(text: str, pos: int) -> tuple[int, int]:
    return text.count("\n", 0, pos) + 1, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _syntax(source: str, text: str, pos: int, message: str, hint: str = "") -> ConfigIssue:
    line, col = _line_col(text, pos)
    return ConfigIssue("", f"invalid JSON in {source} at line {line}, column {col}: {message}", hint, line, col)


def _parse_json(text: str, source: str) -> Any:
    text = text.removeprefix("\ufeff")
    issues: list[ConfigIssue] = []
    out: list[str] = []
    last = 0
    curly_in_strings: list[int] = []
    for m in _TOKEN.finditer(text):
        tok, start = m.group(), m.start()
        if tok.startswith('"'):
            curly_in_strings += [start + i for i, ch in enumerate(tok) if ch in _CURLY]
            continue
        out.append(text[last:start])
        last = m.end()
        if tok.startswith("//") or tok.startswith("/*"):
            out.append(re.sub(r"[^\n]", " ", tok))
            if tok.startswith("/*") and (len(tok) < 4 or not tok.endswith("*/")):
                issues.append(_syntax(source, text, start, "unterminated /* comment", "close it with */"))
        elif tok in ("NaN", "Infinity"):
            out.append(tok)
            issues.append(_syntax(source, text, start, f"{tok} is not a JSON number", "use an ordinary number"))
        else:
            out.append(tok)
            issues.append(_syntax(source, text, start, f"typographic quote {tok} is not valid JSON",
                                  'replace it with a straight double quote "'))
    out.append(text[last:])
    if issues:
        raise ConfigError(issues, source)
    cleaned = "".join(out)
    try:
        return json.loads(cleaned)
    except json.JSONDecodeError as exc:
        hint = "check for a missing comma, an extra trailing comma, or a missing quote or bracket"
        if exc.msg.startswith("Expecting property name"):
            hint = "keys need double quotes, and the last item of an object takes no trailing comma"
        if curly_in_strings:
            line, col = _line_col(text, curly_in_strings[0])
            hint += f"; line {line}, column {col} has a typographic quote: use straight double quotes"
        raise ConfigError([_syntax(source, cleaned, exc.pos, exc.msg, hint)], source) from None
    except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
        raise ConfigError([ConfigIssue("", f"invalid JSON in {source}: {exc}")], source) from None
