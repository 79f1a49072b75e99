"""One registry type for every kind of part: models, model sources, datasets, distances,
losses, attacks, and defenses.

A part registers itself where it is defined (``@ATTACKS.register("CA+")``), and every caller
looks it up by name (``ATTACKS.get("CA+")``); the command line takes its choices from
``names()`` at run time, so adding a part never means editing the CLI.

Built-in parts live in the modules listed per registry and are imported on first use (no
import cycles, no cost until needed). Third-party packages add parts through the entry-point
group ``advrank.plugins`` (each entry point names a module, imported once, which registers its
parts) or, without installing anything, with ``--plugin MODULE`` / :func:`load_plugin`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from advrank.errors import AdvrankError

T = TypeVar("T")
ENTRY_POINT_GROUP = "advrank.plugins"


@dataclass
class Entry(Generic[T]):
    """A registered part: the object (class or factory) and what it says about itself."""

    name: str
    obj: T
    info: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Names -> parts of one kind (``kind`` is used in error messages: "unknown attack ...")."""

    def __init__(self, kind: str, builtins: Iterable[str] = ()):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}
        self._builtins = tuple(builtins)
        self._loaded = False

    def register(self, name: str, obj: T | None = None, *, aliases: Iterable[str] = (),
                 replace: bool = False, **info: Any) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; used bare as a decorator when ``obj`` is omitted.

        ``info`` is free-form metadata (a dataset's image shape, a model's default embedding
        size...). Registering a taken name is refused unless ``replace=True``.
        """

        def add(target: T) -> T:
            if not isinstance(name, str) or not name or name != name.strip():
                raise AdvrankError(f"a {self.kind} name must be a non-empty string, got {name!r}")
            if target is None or not callable(target):
                raise AdvrankError(f"a {self.kind} must be a class or a factory function; "
                                   f"{name!r} is a {type(target).__name__}")
            if getattr(target, "__module__", None) not in self._builtins:
                # a plugin's part: the built-ins first, so that taking a built-in's name is
                # refused (or, with replace, recorded) here, not later inside the built-in
                self._ensure_loaded()
            if (name in self._entries or name in self._aliases) and not replace:
                raise AdvrankError(f"{self.kind} {name!r} is already registered")
            if name in self._entries:  # results record it: their cells are not the built-in's
                REPLACED[f"{self.kind}:{name}"] = getattr(target, "__module__", "?")
            self._entries[name] = Entry(name, target, dict(info))
            for alias in aliases:
                self._aliases[alias] = name
            return target

        return add if obj is None else add(obj)

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True  # set first: the modules below call register() on this registry
            for module in self._builtins:
                importlib.import_module(module)
            load_entry_point_plugins()

    def canonical(self, name: str) -> str:
        """The registered spelling of ``name`` (aliases resolved); refuses unknown names."""
        self._ensure_loaded()
        if not isinstance(name, str):
            raise AdvrankError(f"a {self.kind} name must be a string, got {type(name).__name__}")
        key = self._aliases.get(name, name)
        if key not in self._entries:
            raise AdvrankError(f"unknown {self.kind} {name!r}; choose one of: "
                               f"{', '.join(self.names()) or '(none registered)'}")
        return key

    def entry(self, name: str) -> Entry[T]:
        return self._entries[self.canonical(name)]

    def get(self, name: str) -> T:
        """The registered object (class or factory) for ``name``."""
        return self.entry(name).obj

    def names(self) -> list[str]:
        """Registered names: built-ins in the order of their modules in the builtins list
        (whatever order Python imported them in), then plugins in registration order."""
        self._ensure_loaded()
        rank = {module: i for i, module in enumerate(self._builtins)}

        def key(name: str) -> int:
            module = getattr(self._entries[name].obj, "__module__", None)
            return rank.get(module, len(rank))

        return sorted(self._entries, key=key)  # stable: registration order within a module

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return isinstance(name, str) and self._aliases.get(name, name) in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


# The registries. Each lists the built-in modules that fill it.
MODELS: Registry = Registry("model", ["advrank.models.builtin", "advrank.models.clip_tiny"])
#: where outside models come from (``timm:NAME``, ``torchscript:FILE``...): one module each
MODEL_SOURCES: Registry = Registry("model source", [
    "advrank.models.sources.timm", "advrank.models.sources.torchvision",
    "advrank.models.sources.open_clip", "advrank.models.sources.torchscript",
    "advrank.models.sources.python"])
DATASETS: Registry = Registry("dataset", ["advrank.data.digits", "advrank.data.mnist",
                                          "advrank.data.sop", "advrank.data.folders",
                                          "advrank.data.cub", "advrank.data.cars"])
DISTANCES: Registry = Registry("distance", ["advrank.core.distances"])
LOSSES: Registry = Registry("loss", ["advrank.training.losses", "advrank.training.captions"])
ATTACKS: Registry = Registry("attack", ["advrank.attacks.ca", "advrank.attacks.qa",
                                        "advrank.attacks.tma", "advrank.attacks.es",
                                        "advrank.attacks.ltm", "advrank.attacks.gtm",
                                        "advrank.attacks.gtt", "advrank.attacks.order"])
DEFENSES: Registry = Registry("defense", ["advrank.defenses.est", "advrank.defenses.madry",
                                          "advrank.defenses.act", "advrank.defenses.hm"])
#: what a deployed search answers (advrank/oracles/): one module per schema
ORACLES: Registry = Registry("oracle", ["advrank.oracles.local", "advrank.oracles.http"])
#: how the HTTP oracle reads a search API's answers (advrank/oracles/schemas/): one module each
SCHEMAS: Registry = Registry("schema", ["advrank.oracles.schemas.advrank",
                                        "advrank.oracles.schemas.json_api"])
#: query-only optimisers (advrank/attacks/query/): one module each
OPTIMIZERS: Registry = Registry("optimizer", ["advrank.attacks.query.random_search",
                                              "advrank.attacks.query.nes",
                                              "advrank.attacks.query.spsa",
                                              "advrank.attacks.query.square"])
#: upload pipelines (``none``, ``png``, ``jpeg:Q``): what a search service does to a picture
PIPELINES: Registry = Registry("pipeline", ["advrank.core.pipeline"])
REGISTRIES = {"models": MODELS, "model_sources": MODEL_SOURCES, "datasets": DATASETS,
              "distances": DISTANCES, "losses": LOSSES, "attacks": ATTACKS, "defenses": DEFENSES,
              "pipelines": PIPELINES,
              "oracles": ORACLES, "optimizers": OPTIMIZERS, "schemas": SCHEMAS}

_plugins_loaded: set[str] = set()
_entry_points_done = False
#: "kind:name" -> the module of the part that replaced a registered one
REPLACED: dict[str, str] = {}
#: plugin (module name, .py path or entry point) -> SHA-256 of its source file
PLUGIN_FILES: dict[str, str | None] = {}


def _file_sha(module) -> str | None:
    import hashlib

    path = getattr(module, "__file__", None)
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except (OSError, TypeError):
        return None


def plugin_record() -> dict[str, Any]:
    """What results record about plugins (empty without any): each loaded plugin with the
    SHA-256 of its file, and the registered names a plugin replaced. It enters the results'
    identity, so a run with another plugin set never resumes this one's cells."""
    if not PLUGIN_FILES and not REPLACED:
        return {}
    return {"plugins": dict(sorted(PLUGIN_FILES.items())), "replaced": dict(sorted(
        REPLACED.items()))}


def import_python(target: str, prefix: str, what: str):
    """The one loader of Python code named by the user: a module by dotted name, or a ``.py``
    file by path (run as module ``prefix + stem``); a missing file is refused as
    ``{what} PATH does not exist``. Whatever the code raises goes to the caller, which says
    which code and why."""
    if not target.endswith(".py"):
        return importlib.import_module(target)
    path = Path(target).expanduser()
    if not path.is_file():
        raise AdvrankError(f"{what} {target} does not exist")
    name = f"{prefix}{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def load_plugin(spec: str) -> None:
    """Import a plugin module by dotted name or by path to a ``.py`` file; importing it
    registers its parts. Loading the same plugin twice does nothing."""
    if spec in _plugins_loaded:
        return
    try:
        module = import_python(spec, "advrank_plugin_", "plugin file")
    except AdvrankError as exc:
        raise AdvrankError(f"cannot load plugin {spec!r}: {exc}") from None
    except Exception as exc:  # a broken plugin: say which and why, in one line
        raise AdvrankError(f"cannot load plugin {spec!r}: {type(exc).__name__}: {exc}") from None
    _plugins_loaded.add(spec)
    PLUGIN_FILES[spec] = _file_sha(module)


def load_entry_point_plugins() -> None:
    """Import every module installed under the ``advrank.plugins`` entry-point group (once)."""
    global _entry_points_done
    if _entry_points_done:
        return
    _entry_points_done = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
            if callable(loaded) and not isinstance(loaded, type):
                loaded()  # an entry point may name a register() function instead of a module
        except Exception as exc:  # AdvrankError too: say which plugin
            raise AdvrankError(f"cannot load plugin {ep.name!r} ({ep.value}): "
                               f"{type(exc).__name__}: {exc}") from None
        PLUGIN_FILES[f"entry point {ep.name}"] = _file_sha(sys.modules.get(
            ep.module) or loaded)
