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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from capsync.runtime.resources.resource import Resource, ResourceError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "capsync.models"
_BUILTIN_PREFIX = "rdk:builtin:"
_PY_PREFIX = "py:"


class UnknownModel(Exception):
    """No model of that name exists for the type; the message lists the registered models."""


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
