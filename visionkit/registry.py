"""Finds task plugins through the ``visionkit.tasks`` entry-point group.

There is one way in: a distribution declares ``[project.entry-points."visionkit.tasks"]
name = "module:PluginClass"``. The built-in plugins use it too, so nothing depends on import
side effects or on being inside this repository.

One plugin's mistake disables that plugin only: a name two packages declare, or a plugin that fails
to import or whose metric class cannot pick the best checkpoint, is refused when used (one line
saying why) and shown as BROKEN by ``visionkit plugins``, while every other task keeps working.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from importlib import metadata

from .errors import PluginError
from .plugin import Metric, TaskPlugin

ENTRY_POINT_GROUP = "visionkit.tasks"


@dataclass(frozen=True)
class PluginEntry:
    name: str
    target: str  # "module:attr"
    distribution: str  # "name version" of the package that declares it
    #: other packages' declarations of the same name: ``(distribution, target)`` pairs. Picking one
    #: would depend on sys.path order, so the name is refused until one package is uninstalled.
    rivals: tuple[tuple[str, str], ...] = ()

    def load(self) -> TaskPlugin:
        if self.rivals:
            declared = " and ".join(f"{dist} ({target})" for dist, target in ((self.distribution, self.target), *self.rivals))
            raise PluginError(f"task {self.name!r} is declared by more than one installed package: {declared}; "
                              "uninstall one of them (the other tasks are unaffected)")
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
            plugin = obj() if isinstance(obj, type) else obj
        except Exception as exc:  # e.g. an abstract method left out
            raise PluginError(f"{where} cannot be created: {type(exc).__name__}: {exc}") from exc
        _check_metric_class(plugin, where)
        return plugin


def _check_metric_class(plugin: TaskPlugin, where: str) -> None:
    """The metric decides which checkpoint is best.pt: check what it declares now, not after an
    epoch of training (``compute()``'s answer is checked at the first evaluation)."""
    cls = getattr(plugin, "MetricClass", None)
    if cls is None:
        raise PluginError(f"{where} declares no MetricClass: set MetricClass = the visionkit.plugin.Metric "
                          "subclass that build_metric returns")
    if not (isinstance(cls, type) and issubclass(cls, Metric)):
        name = cls.__name__ if isinstance(cls, type) else type(cls).__name__
        raise PluginError(f"{where}: MetricClass is {name}, expected a visionkit.plugin.Metric subclass")
    primary = getattr(cls, "primary", None)
    if not isinstance(primary, str) or not primary:
        got = "" if primary is None else f" (got {primary!r})"
        raise PluginError(f"{where}: MetricClass {cls.__name__} has no 'primary' string{got}: the key of compute() "
                          "that picks the best checkpoint, e.g. primary = \"accuracy\"")
    if not isinstance(getattr(cls, "higher_is_better", None), bool):
        raise PluginError(f"{where}: MetricClass {cls.__name__} does not declare higher_is_better: set True if a "
                          f"larger {primary!r} is better, False for an error or a loss (best.pt keeps the best epoch)")


def entries() -> dict[str, PluginEntry]:
    """Every declared task by name; a name with rival declarations comes back carrying them, so
    that it fails alone when used instead of taking every task down here."""
    declared: dict[str, list[PluginEntry]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
        same = declared.setdefault(ep.name, [])
        if all(e.target != ep.value for e in same):  # the same target twice loads the same object
            same.append(PluginEntry(ep.name, ep.value, dist))
    found = {}
    for name, same in declared.items():
        first, *rest = sorted(same, key=lambda e: (e.distribution, e.target))  # one message whatever the path order
        found[name] = dataclasses.replace(first, rivals=tuple((e.distribution, e.target) for e in rest))
    return found


def get_plugin(name: str) -> TaskPlugin:
    found = entries()
    if name not in found:
        available = ", ".join(sorted(found)) or "none installed"
        close = difflib.get_close_matches(name, list(found), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PluginError(f"unknown task {name!r}{hint}; available tasks: {available}")
    return found[name].load()
