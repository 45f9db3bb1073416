"""Finds task plugins through the ``visionkit.tasks`` entry-point group.

There is one way in: a distribution declares ``[project.entry-points."visionkit.tasks"]
name = "module:PluginClass"``. The built-in plugins use it too, so nothing depends on import
side effects or on being inside this repository.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import metadata

from .errors import PluginError
from .plugin import TaskPlugin

ENTRY_POINT_GROUP = "visionkit.tasks"


@dataclass(frozen=True)
class PluginEntry:
    name: str
    target: str  # "module:attr"
    distribution: str  # "name version" of the package that declares it

    def load(self) -> TaskPlugin:
        ep = metadata.EntryPoint(self.name, self.target, ENTRY_POINT_GROUP)
        try:
            obj = ep.load()
        except Exception as exc:  # any import-time failure belongs to the plugin, not to us
            raise PluginError(
                f"task plugin {self.name!r} ({self.target}, from {self.distribution}) failed to "
                f"import: {type(exc).__name__}: {exc}"
            ) from exc
        where = f"task plugin {self.name!r} ({self.target}, from {self.distribution})"
        if not (isinstance(obj, TaskPlugin) or (isinstance(obj, type) and issubclass(obj, TaskPlugin))):
            name = obj.__name__ if isinstance(obj, type) else type(obj).__name__
            raise PluginError(f"{where} is a {name}, expected a visionkit.plugin.TaskPlugin subclass")
        try:
            return obj() if isinstance(obj, type) else obj
        except Exception as exc:  # e.g. an abstract method left out
            raise PluginError(f"{where} cannot be created: {type(exc).__name__}: {exc}") from exc


def entries() -> dict[str, PluginEntry]:
    found: dict[str, PluginEntry] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
        entry = PluginEntry(ep.name, ep.value, dist)
        if ep.name in found and found[ep.name].target != entry.target:
            raise PluginError(
                f"task {ep.name!r} is declared twice: by {found[ep.name].distribution} "
                f"({found[ep.name].target}) and by {dist} ({ep.value}); uninstall one"
            )
        found[ep.name] = entry
    return found


def get_plugin(name: str) -> TaskPlugin:
    found = entries()
    if name not in found:
        available = ", ".join(sorted(found)) or "none installed"
        close = difflib.get_close_matches(name, list(found), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PluginError(f"unknown task {name!r}{hint}; available tasks: {available}")
    return found[name].load()
