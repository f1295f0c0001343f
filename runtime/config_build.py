"""The derived view of a robot config (resources, capture methods), and the walk that validates and builds it.

`Builder` checks every section capsync owns, collects every problem, and yields the material of a
`capsync.runtime.config.RobotConfig`. Problems are
`ConfigIssue`s with JSON paths such as `components[2].service_configs[0].attributes.capture_methods[1].method`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from capsync.runtime.config_models import (
    CaptureMethodEntry,
    CloudConfig,
    ConfigError,
    ConfigIssue,
    DataCaptureAttributes,
    DataCaptureServiceConfig,
    DataManagerAttributes,
    NetworkConfig,
    join_path,
    show,
    suggest,
    validate_section,
)
from capsync.runtime.resources.methods import DO_COMMAND_SPEC, METHODS, DataKind, method_spec, methods_of

DATA_MANAGER = "data_manager"
#: Names that end up in capture file paths: no separators, no "." / "..".
RESOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TYPE = re.compile(r"^[A-Za-z0-9_-]+$")


# ---------------------------------------------------------------------------------------------
# The derived view: resources and capture methods


@dataclass(frozen=True)
class ResourceRef:
    """A resource capture reads from. `remote` is the remote part's name, None for a local resource."""

    type: str
    name: str
    model: str
    attributes: dict
    remote: str | None = None


@dataclass(frozen=True)
class CaptureMethodPlan:
    """One enabled capture method, as the collector runs it."""

    key: str  # "<remote or ''>|<type>/<name>/<method>|<canonical json of params>": stable and unique
    resource: ResourceRef
    method: str
    kind: DataKind
    frequency_hz: float
    params: dict
    retention_policy: dict | None
    config_path: str  # JSON path of the capture_methods entry, for messages
    tags: tuple[str, ...] | None = None  # set by a capture control override: replaces the part's tags


@dataclass(frozen=True)
class RemoteConfig:
    """A remote part. `service_configs` are kept as written; their capture methods are in the capture plan."""

    name: str
    address: str
    secret: str = ""
    service_configs: list = field(default_factory=list)
    tls_ca_file: str = ""  # CA certificates (PEM) to trust for a wss:// address, for a private CA


@dataclass(frozen=True)
class ConfiguredMethod:
    """A valid capture_methods entry (enabled or not) with its resource and effective retention policy."""

    resource: ResourceRef
    entry: CaptureMethodEntry
    kind: DataKind
    retention_policy: dict | None
    path: str

    @property
    def enabled(self) -> bool:
        """Not disabled and a frequency above 0."""
        return not self.entry.disabled and self.entry.capture_frequency_hz > 0

    def plan(self, frequency_hz: float | None = None, tags: tuple[str, ...] | None = None) -> CaptureMethodPlan:
        """The plan a collector runs for this entry (at `frequency_hz` and with `tags` when a
        capture control override sets them)."""
        r, e = self.resource, self.entry
        params = dict(e.additional_params)
        canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return CaptureMethodPlan(
            key=f"{r.remote or ''}|{r.type}/{r.name}/{e.method}|{canonical}", resource=r, method=e.method,
            kind=self.kind, frequency_hz=e.capture_frequency_hz if frequency_hz is None else frequency_hz,
            params=params, retention_policy=self.retention_policy, config_path=self.path, tags=tags)


# ---------------------------------------------------------------------------------------------
# Building the config


def normalize_type(value: str) -> str | None:
    """'movement_sensor' or 'rdk:component:movement_sensor' -> 'movement_sensor'; None when malformed."""
    parts = value.split(":")
    if len(parts) == 3 and parts[0] and parts[1] in ("component", "service"):
        value = parts[2]
    elif len(parts) != 1:
        return None
    return value if _TYPE.match(value) else None


def normalize_model(value: str) -> str:
    """'rdk:builtin:fake' -> 'fake'; other models as written."""
    return value.removeprefix("rdk:builtin:")


@dataclass(frozen=True)
class Built:
    """What a valid document yields."""

    data_manager: DataManagerAttributes | None
    cloud: CloudConfig
    network: NetworkConfig
    remotes: list[RemoteConfig]
    warnings: list[ConfigIssue]
    resources: tuple[ResourceRef, ...]
    methods: tuple[ConfiguredMethod, ...]


class Builder:
    """Validates one parsed document; `build` raises ConfigError with every issue, or returns a `Built`."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.issues: list[ConfigIssue] = []
        self.warnings: list[ConfigIssue] = []
        self.methods: list[ConfiguredMethod] = []
        self.dm_path = "services"  # the data manager's JSON path, once found

    def issue(self, path: str, message: str, hint: str = "") -> None:
        self.issues.append(ConfigIssue(path, message, hint))

    def build(self, doc: Any) -> Built:
        if not isinstance(doc, dict):
            raise ConfigError([ConfigIssue("", f"the config must be a JSON object, got {show(doc)}",
                                           'start from {"components": [], "services": []}')], self.source)
        cloud = self._section(CloudConfig, doc, "cloud")
        network = self._section(NetworkConfig, doc, "network")
        dm, resources = self._local(doc)
        remotes, remote_refs = self._remotes(doc)
        self._check_duplicate_methods()
        if self.issues:
            raise ConfigError(self.issues, self.source)
        if dm is None and self.methods:
            self.warnings.append(ConfigIssue("services", "capture methods are configured but there is no "
                                             "data_manager service, so capture and sync are off",
                                             'add a service with "type": "data_manager"'))
        if dm is not None and dm.capture_disabled and self.methods:
            self.warnings.append(ConfigIssue("", f"capture_disabled is true: none of the {len(self.methods)} "
                                             "configured capture methods runs"))
        if dm is not None and dm.selective_syncer_name and dm.selective_syncer_name not in {r.name for r in resources}:
            names = [r.name for r in resources]
            close = suggest(dm.selective_syncer_name, names)
            self.warnings.append(ConfigIssue(f"{self.dm_path}.attributes.selective_syncer_name",
                                             f"selective_syncer_name {dm.selective_syncer_name!r} names no resource "
                                             "in this config" + (f"; did you mean {close!r}?" if close else ""),
                                             "name a sensor of this config: " + ", ".join(names) if names else
                                             "add the selective syncer sensor to the config"))
        control = dm.capture_control_sensor if dm is not None else None
        if control is not None and control.name not in {r.name for r in resources if r.remote is None}:
            self.warnings.append(ConfigIssue(f"{self.dm_path}.attributes.capture_control_sensor.name",
                                             f"capture_control_sensor.name {control.name!r} names no "
                                             "resource in this config; capture follows the config"))
        return Built(dm, cloud or CloudConfig(), network or NetworkConfig(), remotes, self.warnings,
                     tuple(resources + remote_refs), tuple(self.methods))

    def _section(self, model: Any, doc: dict, key: str) -> Any:
        return validate_section(model, doc[key], key, self.issues) if doc.get(key) is not None else model()

    def _objects(self, container: dict, key: str, path: str) -> list[tuple[int, dict]]:
        """The (index, object) items of the list `container[key]`; problems reported."""
        value = container.get(key)
        if value is None:
            return []
        where = join_path(path, key)
        if not isinstance(value, list):
            self.issue(where, f"expected a list, got {show(value)}", "use a JSON array: [...]")
            return []
        items = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                items.append((i, item))
            else:
                self.issue(f"{where}[{i}]", f"expected an object, got {show(item)}", "use a JSON object: {...}")
        return items

    def _string(self, obj: dict, key: str, path: str, *, required: bool, default: str = "") -> str | None:
        value = obj.get(key)
        if value is None:
            if required:
                self.issue(join_path(path, key), f"required attribute {key!r} is missing", f'add "{key}"')
                return None
            return default
        if not isinstance(value, str) or (required and not value):
            self.issue(join_path(path, key), f"expected a non-empty string, got {show(value)}",
                       "put the value in double quotes")
            return None
        return value

    def _type(self, obj: dict, path: str) -> str | None:
        key = "type" if obj.get("type") is not None or obj.get("api") is None else "api"
        raw = self._string(obj, key, path, required=True)
        if raw is None:
            return None
        normalized = normalize_type(raw)
        if normalized is None:
            self.issue(join_path(path, key), f"malformed resource type {raw!r}",
                       'use a type such as "sensor" or "rdk:component:sensor"')
        return normalized

    def _local(self, doc: dict) -> tuple[DataManagerAttributes | None, list[ResourceRef]]:
        dm: DataManagerAttributes | None = None
        dm_path: str | None = None
        refs: list[ResourceRef] = []
        seen: dict[str, str] = {}
        for section in ("components", "services"):
            for i, obj in self._objects(doc, section, ""):
                path = f"{section}[{i}]"
                name = self._string(obj, "name", path, required=True)
                rtype = self._type(obj, path)
                model = self._string(obj, "model", path, required=section == "components")
                attributes = obj.get("attributes")
                if attributes is not None and not isinstance(attributes, dict):
                    self.issue(f"{path}.attributes", f"expected an object, got {show(attributes)}")
                    attributes = None
                if name is not None:
                    if name in seen:
                        self.issue(f"{path}.name", f"duplicate resource name {name!r} (also at {seen[name]})",
                                   "give every resource its own name")
                    seen.setdefault(name, path)
                if rtype == DATA_MANAGER and section == "services":
                    if dm_path is not None:
                        self.issue(path, f"a second data_manager service (the first is {dm_path})",
                                   "a part has at most one data_manager service: merge them")
                        continue
                    dm_path = self.dm_path = path
                    dm = validate_section(DataManagerAttributes, attributes or {}, f"{path}.attributes", self.issues)
                    continue
                if name is None or rtype is None or model is None:
                    continue
                ref = ResourceRef(rtype, name, normalize_model(model) or "builtin", dict(attributes or {}))
                n_before = len(self.methods)
                for j, cap in self._capture_configs(obj, path):
                    self._capture(cap, f"{path}.service_configs[{j}].attributes", ref)
                if len(self.methods) > n_before and not RESOURCE_NAME.match(name):
                    self._bad_name(f"{path}.name", name)
                if section == "components" or model or len(self.methods) > n_before:
                    refs.append(ref)
        return dm, refs

    def _bad_name(self, path: str, name: str) -> None:
        self.issue(path, f"resource name {name!r} cannot be used for capture (it becomes a directory name)",
                   "use letters, digits, '_', '-' and '.', starting with a letter or digit")

    def _capture_configs(self, obj: dict, path: str) -> list[tuple[int, dict]]:
        """The (index, attributes) of the data_manager entries of `obj.service_configs`, validated on the way."""
        found = []
        for j, sc in self._objects(obj, "service_configs", path):
            sc_path = f"{path}.service_configs[{j}]"
            sc_type = self._type(sc, sc_path)
            if sc_type != DATA_MANAGER:
                continue
            attrs = sc.get("attributes")
            shell = {k: v for k, v in sc.items() if k != "attributes"}
            validate_section(DataCaptureServiceConfig, shell, sc_path, self.issues)
            if attrs is None:
                continue
            if not isinstance(attrs, dict):
                self.issue(f"{sc_path}.attributes", f"expected an object, got {show(attrs)}")
                continue
            found.append((j, attrs))
        return found

    def _capture(self, attrs: dict, path: str, ref: ResourceRef | None, remote: str | None = None) -> None:
        """Validate one data_manager service_config's attributes; record its capture methods.

        `ref` is the resource for a local resource; for a remote (`ref` None) each entry names its own.
        """
        shell = {k: v for k, v in attrs.items() if k != "capture_methods"}
        top = validate_section(DataCaptureAttributes, shell, path, self.issues)
        top_policy = top.retention_policy.as_dict() if top and top.retention_policy else None
        for k, raw in self._objects(attrs, "capture_methods", path):
            mpath = f"{path}.capture_methods[{k}]"
            before = len(self.issues)
            entry = validate_section(CaptureMethodEntry, raw, mpath, self.issues)
            resource = ref if ref is not None else self._remote_resource(raw, mpath, remote or "")
            if resource is None:
                continue
            if ref is not None and entry and entry.name and entry.name.rsplit("/", 1)[-1] != ref.name:
                self.warnings.append(ConfigIssue(f"{mpath}.name", f"ignored: on a local resource the "
                                                 f"resource is {ref.name!r} itself"))
            spec = self._method_spec(resource.type, raw.get("method"), f"{mpath}.method")
            if spec is None:
                continue
            params = raw.get("additional_params")
            for p in spec.required_params:
                value = params.get(p) if isinstance(params, dict) else None
                if value is None or value == "":
                    self.issue(f"{mpath}.additional_params.{p}",
                               f"{resource.type} method {spec.name} needs additional_params.{p}",
                               f'add "additional_params": {{"{p}": "..."}}')
            if entry is None or len(self.issues) > before:
                continue
            policy = entry.retention_policy.as_dict() if entry.retention_policy else top_policy
            self.methods.append(ConfiguredMethod(resource, entry, spec.kind, policy, mpath))

    def _method_spec(self, rtype: str, method: Any, path: str) -> Any:
        if not isinstance(method, str) or not method:
            return None  # reported by the entry's validation
        if method == DO_COMMAND_SPEC.name:
            return DO_COMMAND_SPEC  # every type has it
        if rtype not in METHODS:
            self.issue(path, f"resource type {rtype!r} has no capture methods but DoCommand",
                       "types with capture methods: " + ", ".join(sorted(METHODS)) + "; any type can capture DoCommand")
            return None
        spec = method_spec(rtype, method)
        if spec is None:
            valid = methods_of(rtype)
            close = suggest(method, valid)
            did_you_mean = f"; did you mean {close!r}?" if close else ""
            self.issue(path, f"{rtype} has no capture method {method!r}{did_you_mean}",
                       f"valid methods for {rtype}: " + ", ".join(valid))
        return spec

    def _remote_resource(self, raw: dict, path: str, remote: str) -> ResourceRef | None:
        """The resource a remote capture method names.

        `name` is "rdk:component:board/my-esp32", "board/my-esp32", or a plain "my-esp32" whose type
        is then the one type that has the entry's method.
        """
        name = raw.get("name")
        if name is None or name == "":
            self.issue(f"{path}.name", "required attribute 'name' is missing",
                       'on a remote, name the resource: "rdk:component:board/my-esp32"')
            return None
        if not isinstance(name, str):
            return None  # reported by the entry's validation
        type_part, slash, rname = name.partition("/")
        if slash:
            rtype = normalize_type(type_part)
        else:
            rname, method = name, raw.get("method")
            owners = [t for t, methods in METHODS.items() if isinstance(method, str) and method in methods]
            rtype = owners[0] if len(owners) == 1 else None
            if rtype is None and isinstance(method, str):
                self.issue(f"{path}.name", f"cannot tell the type of remote resource {name!r} from method {method!r}",
                           f'write the name as "rdk:component:<type>/{name}"')
                return None
        if rtype is None:
            if slash:
                self.issue(f"{path}.name", f"malformed resource type in {name!r}",
                           'write it as "rdk:component:<type>/<name>", e.g. "rdk:component:board/my-esp32"')
            return None
        if not RESOURCE_NAME.match(rname):
            self._bad_name(f"{path}.name", rname)
            return None
        return ResourceRef(rtype, rname, "remote", {}, remote)

    def _remotes(self, doc: dict) -> tuple[list[RemoteConfig], list[ResourceRef]]:
        remotes: list[RemoteConfig] = []
        refs: dict[tuple[str, str, str], ResourceRef] = {}
        seen: dict[str, str] = {}
        for i, obj in self._objects(doc, "remotes", ""):
            path = f"remotes[{i}]"
            name = self._string(obj, "name", path, required=True)
            address = self._string(obj, "address", path, required=True)
            secret = self._string(obj, "secret", path, required=False)
            tls_ca_file = self._string(obj, "tls_ca_file", path, required=False)
            if name is not None:
                if not RESOURCE_NAME.match(name):
                    self._bad_name(f"{path}.name", name)
                elif name in seen:
                    self.issue(f"{path}.name", f"duplicate remote name {name!r} (also at {seen[name]})")
                seen.setdefault(name, path)
            n_before = len(self.methods)
            for j, cap in self._capture_configs(obj, path):
                self._capture(cap, f"{path}.service_configs[{j}].attributes", None, name)
            for m in self.methods[n_before:]:
                r = m.resource
                refs.setdefault((r.remote or "", r.type, r.name), r)
            if name is not None and address is not None and secret is not None and tls_ca_file is not None:
                remotes.append(RemoteConfig(name, address, secret, list(obj.get("service_configs") or []),
                                            tls_ca_file))
        return remotes, list(refs.values())

    def _check_duplicate_methods(self) -> None:
        first: dict[str, str] = {}
        for m in self.methods:
            if not m.enabled:
                continue
            key = m.plan().key
            if key in first:
                self.issue(m.path, f"duplicate capture method: same method and additional_params as {first[key]}",
                           "remove one of them, or disable it")
            first.setdefault(key, m.path)
