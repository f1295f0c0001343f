"""The resource registry: which models exist for each resource type, and how an agent builds them.

A *model* is a factory ``(name, attributes, lookup) -> Resource``. Models come from three places,
looked up in this order:

1. models registered in-process with :func:`register_model` (the built-in ``fake`` models are
   registered this way, for every type in :data:`capsync.runtime.resources.methods.METHODS`);
2. Python entry points in the group ``capsync.models`` named ``"<type>/<model>"`` whose value is
   a factory (``sensor/thermo = my_pkg.thermo:make``), so an installed package adds models;
3. a model string ``"py:package.module:factory"``, which imports that factory directly. The
   module is looked up among the installed packages, then next to the config file, then in the
   current directory (:func:`model_search_dirs`), so a project folder needs no ``PYTHONPATH``.

``"rdk:builtin:<model>"`` means the same as ``"<model>"``, so ``rdk:builtin:fake`` is ``fake``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "capsync.models"
_BUILTIN_PREFIX = "rdk:builtin:"
_PY_PREFIX = "py:"


@dataclass(frozen=True)
class Binary:
    """One binary capture result: the file's bytes, its MIME type, and optional JSON-like metadata.

    `age_s` is how long before the capture returned this datum was taken (0: just now). A result
    that hands over frames taken earlier (a filtered camera's window) sets it, and the record's
    requested and received times are moved back by that much.
    """

    data: bytes
    mime_type: str
    metadata: dict | None = None
    age_s: float = 0.0


#: The oldest a Binary may say it is (`age_s`); a larger age is ignored (a window is seconds long).
MAX_AGE_S = 3600.0


#: What ``Resource.capture`` returns: a dict of JSON-like values for tabular methods, a
#: :class:`Binary` for binary methods, or a list of them for ``GetImages``.
CaptureResult = dict | Binary | list[Binary]


class ResourceError(Exception):
    """A resource call (or building a resource) failed; the message is the user-facing reason."""


class NoCapture(Exception):
    """Raised by ``capture`` to say "nothing to capture this time" (e.g. a filter declined the
    frame). Not a failure: the collector writes nothing, counts it as skipped, logs nothing and
    keeps its schedule."""


class UnknownModel(Exception):
    """No model of that name exists for the type; the message lists the registered models."""


@runtime_checkable
class Resource(Protocol):
    type: str
    name: str
    model: str

    async def capture(self, method: str, params: dict) -> CaptureResult: ...

    async def close(self) -> None: ...

    # Optional: `async def do_command(self, command: dict) -> dict`, for DoCommand capture.
    # Optional: `def sync_capture(self, method: str) -> Callable[[str, dict], CaptureResult] | None`,
    # see sync_capture_call.


#: The capture method every resource type has: its `additional_params` are the command sent to
#: the resource's `do_command`, and the answer is a tabular reading.
DO_COMMAND = "DoCommand"


def capture_call(resource: Resource, method: str) -> Callable[[str, dict], Awaitable[CaptureResult]]:
    """What a collector awaits as `call(method, params)` for `method` of `resource`: its `capture`,
    or for DoCommand its `do_command` (a ResourceError when the model has none)."""
    if method != DO_COMMAND:
        return resource.capture
    do_command = getattr(resource, "do_command", None)

    async def call(method: str, params: dict) -> CaptureResult:
        if do_command is None:
            raise ResourceError(f"{resource.type} {resource.name!r} (model {getattr(resource, 'model', '?')!r}) has "
                                "no do_command, so it cannot capture DoCommand")
        return await do_command(dict(params))

    return call


def sync_capture_call(resource: Resource, method: str) -> Callable[[str, dict], CaptureResult] | None:
    """A plain function that captures `method` of `resource` at once, if the model offers one.

    A model may define `sync_capture(method)` returning a function `(method, params) -> result`
    that never waits (pure computation, no I/O that can block: a fake, a value a driver already
    holds), or None. A collector then takes its on-time ticks right in the shared timer's task,
    which saves a task switch per reading; the resource timeout cannot apply to such a call.
    Every other model, DoCommand and remote resources are captured through `capture_call`."""
    offer = getattr(resource, "sync_capture", None)
    if method == DO_COMMAND or offer is None or not _offers_sync_capture(resource):
        return None
    try:
        fn = offer(method)
    except Exception as exc:  # a bug in the model's offer: capture it the usual way, and say so
        log.warning("sync_capture failed; capturing through capture() instead",
                    extra={"resource": f"{resource.type}/{resource.name}", "method": method, "error": repr(exc)})
        return None
    return fn if callable(fn) else None


def _offers_sync_capture(resource: Resource) -> bool:
    """Whether `sync_capture` belongs to the same code as `capture`: a wrapper that forwards
    attributes (__getattr__), a subclass that overrides `capture` but not `sync_capture`, or a
    `capture` replaced on the instance would otherwise be bypassed by the plain function."""
    if "capture" in getattr(resource, "__dict__", {}):
        return False
    mro = type(resource).__mro__
    sync_owner = next((i for i, k in enumerate(mro) if "sync_capture" in k.__dict__), None)
    capture_owner = next((i for i, k in enumerate(mro) if "capture" in k.__dict__), None)
    return sync_owner is not None and (capture_owner is None or sync_owner <= capture_owner)


class ResourceLookup(Protocol):
    """How a model reaches its dependencies (e.g. a vision service its camera)."""

    def get(self, name: str) -> Resource:  # raises ResourceError if missing
        ...


Factory = Callable[[str, dict, ResourceLookup], Resource]

_models: dict[str, dict[str, Factory]] = {}
_builtins_loaded = False


def normalize_model(model: str) -> str:
    """``"rdk:builtin:fake"`` -> ``"fake"``; other model strings are returned stripped."""
    model = model.strip()
    if model.startswith(_BUILTIN_PREFIX):
        return model[len(_BUILTIN_PREFIX) :]
    return model


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        # Imported for their register_model() calls; imported late because they import this module.
        importlib.import_module("capsync.runtime.resources.fake")
        importlib.import_module("capsync.runtime.resources.fake_camera")
        importlib.import_module("capsync.runtime.resources.selective_syncer")
        importlib.import_module("capsync.runtime.resources.filtered_camera")
        for real in ("system", "wifi_rssi", "image_dir", "command", "json_file"):  # real data sources
            importlib.import_module(f"capsync.runtime.resources.{real}")


def register_model(type: str, model: str, factory: Factory) -> None:
    """Make ``model`` available for resources of ``type``; replaces an earlier registration."""
    if not callable(factory):
        raise TypeError(f"factory for {type}/{model} is not callable: {factory!r}")
    model = normalize_model(model)
    if not model or model.startswith(_PY_PREFIX):
        raise ValueError(f"invalid model name {model!r}")
    _models.setdefault(type, {})[model] = factory


def unregister_model(type: str, model: str) -> None:
    """Remove an in-process registration (a no-op when there is none). Mostly for tests."""
    _models.get(type, {}).pop(normalize_model(model), None)


def _entry_points() -> dict[str, dict[str, importlib.metadata.EntryPoint]]:
    found: dict[str, dict[str, importlib.metadata.EntryPoint]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        type_, sep, model = ep.name.partition("/")
        if not sep or not type_ or not model:
            log.warning("ignoring entry point %r in %s: name must be '<type>/<model>'", ep.name, ENTRY_POINT_GROUP)
            continue
        found.setdefault(type_.strip(), {}).setdefault(normalize_model(model), ep)
    return found


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> Factory | None:
    try:
        factory = ep.load()
    except Exception:
        log.exception("could not load model entry point %s = %s", ep.name, ep.value)
        return None
    return factory if callable(factory) else None


def registered_models(type: str | None = None) -> dict[str, Any]:
    """The models that can be built without a ``py:`` path.

    With ``type``: ``{model: factory}`` for that type. Without: ``{type: {model: factory}}`` for
    every type. Includes the built-in fakes and installed ``capsync.models`` entry points
    (in-process registrations win over an entry point of the same name).
    """
    _load_builtins()
    merged: dict[str, dict[str, Factory]] = {}
    for type_, eps in _entry_points().items():
        if type is not None and type_ != type:
            continue
        for model, ep in eps.items():
            factory = _load_entry_point(ep)
            if factory is not None:
                merged.setdefault(type_, {})[model] = factory
    for type_, models in _models.items():
        if type is None or type_ == type:
            merged.setdefault(type_, {}).update(models)
    if type is not None:
        return dict(sorted(merged.get(type, {}).items()))
    return {t: dict(sorted(m.items())) for t, m in sorted(merged.items())}


def model_search_dirs(config_source: str | Path | None = None) -> tuple[Path, ...]:
    """Where ``py:`` models are looked up besides the installed packages: the folder of the
    config file (when ``config_source`` names one), then the current directory."""
    dirs: list[Path] = []
    if config_source is not None and Path(config_source).is_file():
        dirs.append(Path(config_source).resolve().parent)
    dirs.append(Path.cwd())
    return tuple(dict.fromkeys(dirs))


def _add_to_import_path(dirs: Iterable[Path]) -> None:
    # Appended, not prepended: a stray file next to the config (secrets.py, random.py) must never
    # shadow the standard library or an installed package the agent imports later.
    for d in dirs:
        if str(d) not in sys.path:
            sys.path.append(str(d))


def _import_module(model: str, type: str, module_name: str, search_dirs: tuple[Path, ...]) -> Any:
    _add_to_import_path(search_dirs)
    importlib.invalidate_caches()  # a module written since the last failed attempt is found
    where = f"model {model!r} for {type}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UnknownModel(f"{where}: module {module_name!r} was found but importing it failed: {exc}"
                               f" ({_origin(exc)}); install what it imports") from exc
        searched = ", ".join(str(d) for d in search_dirs)
        relative = module_name.replace(".", os.sep)
        raise UnknownModel(
            f"{where}: no module named {exc.name!r}; searched the installed packages and {searched or 'nothing else'};"
            f" put {relative}.py next to the config file,"
            f" or pip install the package that provides it") from exc
    except Exception as exc:
        raise UnknownModel(f"{where}: importing module {module_name!r} failed: {exc!r} ({_origin(exc)})") from exc


def _origin(exc: BaseException) -> str:
    """`file:line` of the innermost frame of ``exc``'s traceback: where the user's module failed."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"at {frames[-1].filename}:{frames[-1].lineno}" if frames else "no traceback"


def _import_factory(path: str, type: str, search_dirs: tuple[Path, ...]) -> Factory:
    target = path[len(_PY_PREFIX) :]
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UnknownModel(f"model {path!r} for {type}: a py: model must look like 'py:package.module:factory'")
    obj: Any = _import_module(path, type, module_name, search_dirs)
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise UnknownModel(f"model {path!r} for {type}: module {module_name!r} has no {attr!r}") from exc
    if not callable(obj):
        raise UnknownModel(f"model {path!r} for {type}: {attr!r} is not callable")
    return obj


def find_factory(type: str, model: str, search_dirs: tuple[Path, ...] = ()) -> Factory:
    """The factory for ``type``/``model``, or :class:`UnknownModel` listing the models of ``type``.

    ``search_dirs`` are where a ``py:`` model's module is looked up after the installed packages
    (see :func:`model_search_dirs`)."""
    _load_builtins()
    model = normalize_model(model)
    if model.startswith(_PY_PREFIX):
        return _import_factory(model, type, search_dirs)
    factory = _models.get(type, {}).get(model)
    if factory is not None:
        return factory
    ep = _entry_points().get(type, {}).get(model)
    if ep is not None:
        factory = _load_entry_point(ep)
        if factory is not None:
            return factory
        raise UnknownModel(f"model {model!r} for {type}: entry point {ep.value!r} could not be loaded (see log)")
    known = ", ".join(registered_models(type)) or "none"
    raise UnknownModel(
        f"unknown model {model!r} for resource type {type!r}; registered models: {known}"
        " (or use 'py:package.module:factory')"
    )


def build_resource(type: str, name: str, model: str, attributes: dict, lookup: ResourceLookup,
                   search_dirs: tuple[Path, ...] = ()) -> Resource:
    """Build one resource. Raises :class:`UnknownModel`, or :class:`ResourceError` if the model
    rejects its attributes (a factory's other exceptions are wrapped in ResourceError).
    ``search_dirs`` are passed to :func:`find_factory`."""
    factory = find_factory(type, model, search_dirs)
    attrs = dict(attributes or {})
    try:
        resource = factory(name, attrs, lookup)
    except (ResourceError, UnknownModel):
        raise
    except Exception as exc:
        raise ResourceError(f"{type} {name!r} (model {model!r}) failed to build: {exc!r}") from exc
    if not callable(getattr(resource, "capture", None)) or not callable(getattr(resource, "close", None)):
        raise ResourceError(f"model {model!r} for {type} returned {resource!r}, which has no capture()/close()")
    return resource


@dataclass(frozen=True)
class RegistryStatistics:
    resources: int
    by_type: tuple[tuple[str, int], ...]
    build_failures: tuple[tuple[str, str], ...]  # (name, reason) of refs that could not be built
    retired_unclosed: int


class ResourceRegistry:
    """The built resources of one agent; implements :class:`ResourceLookup`.

    :meth:`build_all` adds (or rebuilds) resources from refs and raises what failed;
    :meth:`reconcile` makes the registry match a new config and returns what failed. Resources
    they remove or replace are closed by :meth:`close_retired` (or :meth:`close_all`).
    ``search_dirs`` are where ``py:`` models are looked up after the installed packages
    (:func:`model_search_dirs` of the config file, for an agent).
    """

    def __init__(self, search_dirs: tuple[Path, ...] = ()) -> None:
        self.search_dirs = tuple(search_dirs)
        self._resources: dict[str, Resource] = {}
        self._specs: dict[str, tuple] = {}
        self._retired: list[Resource] = []
        self._failures: dict[str, str] = {}
        self._added: set[str] = set()

    # -- ResourceLookup
    def get(self, name: str) -> Resource:
        try:
            return self._resources[name]
        except KeyError:
            known = ", ".join(sorted(self._resources)) or "none"
            raise ResourceError(f"no resource named {name!r} (resources: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._resources

    def __len__(self) -> int:
        return len(self._resources)

    def resources(self) -> dict[str, Resource]:
        return dict(self._resources)

    def add(self, resource: Resource) -> None:
        """Put an already built resource (e.g. a remote proxy) in the registry, replacing one of
        the same name. build_all leaves it alone unless a ref of the same name replaces it."""
        old = self._resources.get(resource.name)
        if old is not None and old is not resource:
            self._retired.append(old)
        self._resources[resource.name] = resource
        self._specs.pop(resource.name, None)
        self._added.add(resource.name)

    def remove(self, name: str) -> None:
        """Take a resource out of the registry; it is closed by close_retired()."""
        resource = self._resources.pop(name, None)
        self._specs.pop(name, None)
        self._added.discard(name)
        if resource is not None:
            self._retired.append(resource)

    def build_all(self, refs: Iterable[Any]) -> None:
        """Build every ref (an object with ``.type``, ``.name``, ``.model``, ``.attributes``).

        Additive: resources not named in ``refs`` stay. A ref whose resource is already built
        with the same type, model and attributes is left alone; a changed one is rebuilt (the old
        instance is closed by :meth:`close_retired`). Every ref that can be built is built even
        when another fails; then the failure is raised: the UnknownModel/ResourceError itself
        when one ref failed, an ExceptionGroup of them when several did.
        """
        failures = self._apply(refs, remove_unlisted=False)
        if len(failures) == 1:
            raise next(iter(failures.values()))
        if failures:
            raise ExceptionGroup(f"{len(failures)} resources not built: {', '.join(failures)}", list(failures.values()))

    def reconcile(self, refs: Iterable[Any]) -> dict[str, Exception]:
        """Make the registry match ``refs`` exactly (for a reconfiguration): unchanged resources
        are kept, changed ones rebuilt, unlisted ones removed (except those put in by
        :meth:`add`). Never raises for a bad ref: returns ``{name: exception}`` for the refs that
        could not be built. Removed and replaced resources are closed by :meth:`close_retired`."""
        return self._apply(refs, remove_unlisted=True)

    def _apply(self, refs: Iterable[Any], *, remove_unlisted: bool) -> dict[str, Exception]:
        failures: dict[str, Exception] = {}
        wanted: dict[str, tuple] = {}
        ref_by_name: dict[str, Any] = {}
        for ref in refs:
            attrs = ref.attributes
            attrs = dict(attrs) if isinstance(attrs, Mapping) else dict(attrs or {})
            spec = (ref.type, normalize_model(ref.model), _freeze(attrs))
            if ref.name in wanted:
                failures[ref.name] = ResourceError(f"duplicate resource name {ref.name!r} ({ref.type})")
                continue
            wanted[ref.name] = spec
            ref_by_name[ref.name] = (ref, attrs)
        for name in list(self._resources):
            if name in wanted:
                stale = self._specs.get(name) != wanted[name]
            else:  # what add() put here is not ours to remove
                stale = remove_unlisted and name not in self._added
            if stale:
                self._retired.append(self._resources.pop(name))
                self._specs.pop(name, None)
                self._added.discard(name)
        for name, spec in wanted.items():
            if name in self._resources:
                continue
            ref, attrs = ref_by_name[name]
            try:
                self._resources[name] = build_resource(ref.type, name, ref.model, attrs, self, self.search_dirs)
                self._specs[name] = spec
                self._added.discard(name)
            except (UnknownModel, ResourceError) as exc:
                failures[name] = exc
                log.error("resource %s %r not built: %s", ref.type, name, exc)
        if remove_unlisted:
            self._failures = {}
        for name in wanted:
            self._failures.pop(name, None)
        self._failures.update({n: str(e) for n, e in failures.items()})
        return failures

    async def close_retired(self) -> None:
        """Close resources that build_all, reconcile or remove() took out of the registry."""
        retired, self._retired = self._retired, []
        for resource in retired:
            await _close_quietly(resource)

    async def close_all(self) -> None:
        """Close every resource (in reverse build order) and empty the registry."""
        await self.close_retired()
        resources = list(self._resources.values())
        self._resources.clear()
        self._specs.clear()
        self._added.clear()
        for resource in reversed(resources):
            await _close_quietly(resource)

    def statistics(self) -> RegistryStatistics:
        counts: dict[str, int] = {}
        for r in self._resources.values():
            counts[r.type] = counts.get(r.type, 0) + 1
        return RegistryStatistics(
            resources=len(self._resources),
            by_type=tuple(sorted(counts.items())),
            build_failures=tuple(sorted(self._failures.items())),
            retired_unclosed=len(self._retired),
        )


async def _close_quietly(resource: Resource) -> None:
    try:
        await resource.close()
    except Exception:
        log.exception("closing %s %r failed", getattr(resource, "type", "?"), getattr(resource, "name", "?"))


def _freeze(value: Any) -> Any:
    """A hashable, comparable snapshot of JSON-like attributes (to tell changed refs)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value
