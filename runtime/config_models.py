"""The typed parts of a robot config: capsync's own sections, the errors, and pydantic error translation.

`capsync.runtime.config_build` walks the whole JSON document and validates the sections we own with the
pydantic models below; every problem, from bad JSON to an unknown capture method, is reported as
a `ConfigIssue` with the JSON path of the offending value, collected into one `ConfigError`.

Our sections are strict: unknown keys are errors (with a did-you-mean suggestion), numbers must
be JSON numbers and booleans JSON booleans, as in the reference implementation. `null` for an
optional attribute means "use the default".
"""

from __future__ import annotations

import difflib
import json
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

DEFAULT_CAPTURE_DIR = "~/.viam/capture"
DEFAULT_APP_ADDRESS = "http://127.0.0.1:8787"
DEFAULT_BIND_ADDRESS = "127.0.0.1:8791"
TAG_PATTERN = r"^[A-Za-z0-9_-]+$"


def default_sync_threads() -> int:
    """Half the logical CPUs, at least one: the documented default of maximum_num_sync_threads."""
    return max(1, (os.cpu_count() or 1) // 2)


# ---------------------------------------------------------------------------------------------
# Issues and the error


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config: where it is (a JSON path, "" for the whole document), what, and how to fix it.

    Syntax errors have no JSON path (path ""); their message names the file, and they carry `line`
    and `column` (1-based).
    """

    path: str
    message: str
    hint: str = ""
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return text + (f" ({self.hint})" if self.hint else "")


class ConfigError(Exception):
    """A config that cannot be used. `.issues` lists every problem found; str() gives one line per issue."""

    def __init__(self, issues: list[ConfigIssue], source: str = "<config>") -> None:
        self.issues = list(issues)
        self.source = source
        super().__init__("\n".join(str(i) for i in self.issues))


# ---------------------------------------------------------------------------------------------
# Models


class _Section(BaseModel):
    """Base of our strict sections: unknown keys are errors; `null` for an optional attribute means its default."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            fields = cls.model_fields
            return {k: v for k, v in data.items() if not (v is None and k in fields and not fields[k].is_required())}
        return data


NonNegInt = Annotated[int, Field(ge=0)]
Tag = Annotated[str, StringConstraints(pattern=TAG_PATTERN)]


class RetentionPolicy(_Section):
    """How long the cloud keeps the data of a capture method. All limits optional; sizes in whole gigabytes."""

    days: NonNegInt | None = None
    binary_limit_gb: NonNegInt | None = None
    tabular_limit_gb: NonNegInt | None = None

    def as_dict(self) -> dict[str, int] | None:
        """The limits that are set, or None when none is."""
        d = self.model_dump(exclude_none=True)
        return d or None


class MongoCaptureConfig(_Section):
    """Where tabular data is also written when `uri` is set. Empty database/collection mean the defaults."""

    uri: str = ""
    database: str = "sensorData"
    collection: str = "readings"

    @field_validator("database", "collection")
    @classmethod
    def _empty_is_default(cls, v: str, info: Any) -> str:
        return v or cls.model_fields[info.field_name].default


class CaptureControlSensor(_Section):
    """`capture_control_sensor`: the sensor whose reading under `key` overrides capture at run time."""

    name: str = Field(min_length=1)
    key: str = Field(min_length=1)


class DataManagerAttributes(_Section):
    """The `attributes` of the data_manager service: the documented ones, then capsync's extensions."""

    capture_disabled: bool = False
    capture_dir: str = DEFAULT_CAPTURE_DIR
    tags: list[Tag] = Field(default_factory=list)
    sync_disabled: bool = False
    additional_sync_paths: list[str] = Field(default_factory=list)
    sync_interval_mins: float = Field(0.1, gt=0)
    delete_every_nth_when_disk_full: int = Field(5, ge=1)
    maximum_num_sync_threads: int = Field(default_factory=default_sync_threads, ge=1)
    mongo_capture_config: MongoCaptureConfig = Field(default_factory=MongoCaptureConfig)
    selective_syncer_name: str = ""
    capture_control_sensor: CaptureControlSensor | None = None
    cache_size_kb: float | None = None  # viam-micro-server only: accepted and ignored
    # capsync extensions
    max_file_size_kb: float = Field(64.0, gt=0)
    max_binary_file_size_kb: float = Field(0.0, ge=0)
    max_file_age_secs: float = Field(60.0, gt=0)
    fsync_interval_secs: float = Field(1.0, ge=0)
    resource_timeout_secs: float = Field(5.0, gt=0)

    @field_validator("capture_dir")
    @classmethod
    def _empty_dir_is_default(cls, v: str) -> str:
        return v or DEFAULT_CAPTURE_DIR

    def capture_dir_path(self) -> Path:
        """The capture directory with `~` expanded."""
        return Path(self.capture_dir).expanduser()

    @property
    def sync_interval_secs(self) -> float:
        """sync_interval_mins in seconds."""
        return self.sync_interval_mins * 60.0


class CaptureMethodEntry(_Section):
    """One entry of `capture_methods`. `name` only matters on remotes ("rdk:component:board/my-esp32")."""

    method: str = Field(min_length=1)
    capture_frequency_hz: float = Field(ge=0)
    additional_params: dict[str, Any] = Field(default_factory=dict)
    disabled: bool = False
    retention_policy: RetentionPolicy | None = None
    cache_size_kb: float | None = None  # viam-micro-server only: accepted and ignored
    name: str = ""


class DataCaptureAttributes(_Section):
    """The `attributes` of a resource's data_manager service_config."""

    capture_methods: list[CaptureMethodEntry] = Field(default_factory=list)
    retention_policy: RetentionPolicy | None = None


class DataCaptureServiceConfig(_Section):
    """A `{"type": "data_manager", "attributes": {...}}` entry of a resource's service_configs."""

    type: str
    attributes: DataCaptureAttributes = Field(default_factory=DataCaptureAttributes)


class CloudConfig(_Section):
    """capsync's `cloud` section: this part's identity and where the cloud side is."""

    id: str = ""
    secret: str = ""
    app_address: str = DEFAULT_APP_ADDRESS

    @field_validator("app_address")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
        return v.rstrip("/")


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")


class NetworkConfig(_Section):
    """capsync's `network` section: where the local control endpoint listens, which browser origins
    it accepts, and the certificate it serves `wss://` with."""

    bind_address: str = DEFAULT_BIND_ADDRESS
    allowed_origins: list[str] = Field(default_factory=list)
    tls_certificate_file: str = ""
    tls_key_file: str = ""

    @field_validator("bind_address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected host:port (e.g. {DEFAULT_BIND_ADDRESS!r}), got {v!r}")
        return v

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if not _ORIGIN.match(origin):
                raise ValueError(f"expected origins as scheme://host[:port] with no path "
                                 f"(e.g. 'https://dashboard.example'), got {origin!r}")
        return [o.lower() for o in v]

    @model_validator(mode="after")
    def _tls_pair(self) -> "NetworkConfig":
        if bool(self.tls_certificate_file) != bool(self.tls_key_file):
            raise ValueError("tls_certificate_file and tls_key_file go together: set both to serve wss://, "
                             "or neither")
        return self

    @property
    def host(self) -> str:
        """The host part, without IPv6 brackets."""
        return self.bind_address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        """The port number."""
        return int(self.bind_address.rpartition(":")[2])


# ---------------------------------------------------------------------------------------------
# Paths, suggestions and pydantic error translation


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def join_path(prefix: str, part: str | int) -> str:
    """Extend a JSON path: `a` + 0 -> `a[0]`, `a` + `b` -> `a.b`, odd keys as `a["x y"]`."""
    if isinstance(part, int):
        return f"{prefix}[{part}]"
    if not _IDENT.match(part):
        return f"{prefix}[{json.dumps(part)}]"
    return f"{prefix}.{part}" if prefix else part


def show(value: Any) -> str:
    """A short human rendering of a JSON value for messages: 'abc', 5, true, null, a list, an object."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def suggest(word: str, choices: typing.Iterable[str]) -> str | None:
    """The closest of `choices` to `word` (difflib), or None when nothing is close."""
    choices = list(choices)
    lower = {c.lower(): c for c in choices}
    if word.lower() in lower:
        return lower[word.lower()]
    m = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return m[0] if m else None


def unknown_key_issue(path: str, key: str, known: typing.Iterable[str], what: str = "attribute") -> ConfigIssue:
    """The issue for an unknown key at `path`, with a did-you-mean suggestion when one is close."""
    known = sorted(known)
    close = suggest(key, known)
    msg = f"unknown {what} {key!r}" + (f"; did you mean {close!r}?" if close else "")
    return ConfigIssue(path, msg, "known: " + ", ".join(known))


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class found by following `loc` field names from `model` (list indexes skipped)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _first_model(field.annotation)
    return current


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


_EXPECTED = {
    "float_type": ("a number", "write a JSON number without quotes, e.g. 0.5"),
    "int_type": ("a whole number", "write a JSON integer without quotes, e.g. 5"),
    "bool_type": ("true or false", "write true or false without quotes"),
    "string_type": ("a string", "put the value in double quotes"),
    "list_type": ("a list", "use a JSON array: [...]"),
    "dict_type": ("an object", "use a JSON object: {...}"),
    "model_type": ("an object", "use a JSON object: {...}"),
    "model_attributes_type": ("an object", "use a JSON object: {...}"),
}


def translate(exc: ValidationError, model: type[BaseModel], prefix: str) -> list[ConfigIssue]:
    """pydantic errors of validating `model` at JSON path `prefix` as ConfigIssues with human messages."""
    issues = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = prefix
        for part in loc:
            path = join_path(path, part)
        kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
        if kind == "missing":
            issues.append(ConfigIssue(path, f"required attribute {loc[-1]!r} is missing", f"add {json.dumps(loc[-1])}"))
        elif kind == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            known = owner.model_fields if owner else []
            issues.append(unknown_key_issue(path, str(loc[-1]), known))
        elif kind in _EXPECTED:
            expected, hint = _EXPECTED[kind]
            if kind == "int_type" and isinstance(value, float) and not isinstance(value, bool):
                hint = "drop the fractional part"
            issues.append(ConfigIssue(path, f"expected {expected}, got {show(value)}", hint))
        elif kind in ("greater_than_equal", "greater_than"):
            op, bound = (">=", ctx.get("ge")) if kind == "greater_than_equal" else (">", ctx.get("gt"))
            bound = f"{bound:g}" if isinstance(bound, (int, float)) else bound
            issues.append(ConfigIssue(path, f"must be {op} {bound}, got {show(value)}", _bound_hint(path, op, bound)))
        elif kind == "finite_number":
            issues.append(ConfigIssue(path, f"expected a finite number, got {show(value)}", "use an ordinary number"))
        elif kind == "string_pattern_mismatch":
            issues.append(ConfigIssue(path, f"tag {show(value)} has characters other than letters, digits, '_' and '-'",
                                      "use only A-Z, a-z, 0-9, '_' and '-' in tags"))
        elif kind == "string_too_short":
            issues.append(ConfigIssue(path, "must not be empty", "give a value"))
        elif kind == "value_error":
            issues.append(ConfigIssue(path, str(ctx.get("error", err["msg"]))))
        else:
            issues.append(ConfigIssue(path, f"{err['msg']}, got {show(value)}"))
    return issues


def _bound_hint(path: str, op: str, bound: Any) -> str:
    if path.endswith("capture_frequency_hz"):
        return "use 0 to turn the method off, or a positive rate in Hz"
    if path.endswith("sync_interval_mins"):
        return "use a positive number of minutes, e.g. 0.1 for every 6 seconds"
    return f"use a value {op} {bound}"


M = typing.TypeVar("M", bound=BaseModel)


def validate_section(model: type[M], data: Any, path: str, issues: list[ConfigIssue]) -> M | None:
    """`model` validated from `data`, or None with the problems (at JSON path `path`) added to `issues`."""
    if not isinstance(data, dict):
        issues.append(ConfigIssue(path, f"expected an object, got {show(data)}", "use a JSON object: {...}"))
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        issues.extend(translate(exc, model, path))
        return None
