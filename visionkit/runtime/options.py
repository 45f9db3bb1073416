"""The query options a task runtime declares, and their checking.

``visionkit predict`` builds its task flags (``--top-k``) and ``visionkit serve`` its query
parameters (``?top_k=``) from the same :class:`Option` list, so a third-party task's own options
reach it, and an option the model's task does not declare is refused in one line instead of
being ignored. Values are checked here once: type, range, choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

from ..errors import PluginError, UserError

TYPES = {"int": int, "float": float, "bool": bool, "str": str}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class OptionError(UserError):
    """A value that an option does not take; the message says what it expects (no name: the
    caller says where the value came from: ``--top-k 9``, ``top_k=9``)."""


@dataclass(frozen=True)
class Option:
    """One query option of a task: ``predict --name-with-dashes VALUE``, ``serve ?name=VALUE``,
    ``Model.predict(..., name=value)``; the runtime's ``postprocess``/``draw`` read it from
    their ``options`` dict (always present: the default when not given).

    ``default`` None means "not set": the runtime decides (e.g. keep every box the graph gives).
    ``min``/``max`` bound numbers (inclusive); ``choices`` lists the allowed values.
    """

    name: str
    type: type = str  # int, float, bool or str
    default: Any = None
    help: str = ""
    min: Optional[float] = None
    max: Optional[float] = None
    choices: Optional[tuple[Any, ...]] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and self.name.isidentifier() and self.name == self.name.lower()):
            raise PluginError(f"runtime option {self.name!r}: expected a lower-case identifier such as 'top_k'")
        if self.type not in TYPES.values():
            raise PluginError(f"runtime option {self.name!r}: type {self.type!r}; expected int, float, bool or str")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.default is not None:
            self.check(self.default)  # a plugin's own default out of range is its bug: say so at load

    @property
    def flag(self) -> str:
        """The command-line flag: ``top_k`` -> ``--top-k``."""
        return "--" + self.name.replace("_", "-")

    def expected(self) -> str:
        if self.choices is not None:
            return f"one of {', '.join(map(str, self.choices))}"
        if self.type is bool:
            return "true or false"
        if self.min is not None and self.max is not None:
            return f"{self.min:g} to {self.max:g}"
        if self.min is not None:
            return f"{self.type.__name__} >= {self.min:g}"
        if self.max is not None:
            return f"{self.type.__name__} <= {self.max:g}"
        return self.type.__name__

    def parse(self, text: str) -> Any:
        """A value from text (command line, query string), checked."""
        try:
            if self.type is bool:
                if text.strip().lower() not in _TRUE + _FALSE:
                    raise ValueError
                value: Any = text.strip().lower() in _TRUE
            else:
                value = self.type(text)
        except ValueError:
            raise OptionError(f"expected {self.type.__name__ if self.type is not bool else 'true or false'}") from None
        return self.check(value)

    def check(self, value: Any) -> Any:
        """``value`` if this option takes it (an int where a float is expected becomes a float)."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise OptionError(f"expected {self.expected()}, got {type(value).__name__}")
        if self.type is float and not math.isfinite(value):
            raise OptionError(f"expected a finite number ({self.expected()})")
        if self.choices is not None and value not in self.choices:
            raise OptionError(f"expected {self.expected()}")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise OptionError(f"expected {self.expected()}")
        return value

    def to_json(self) -> dict[str, Any]:
        """As ``GET /options`` lists it (a page or a client builds its form from this)."""
        return {"name": self.name, "type": self.type.__name__, "default": self.default, "help": self.help,
                "min": self.min, "max": self.max, "choices": list(self.choices) if self.choices is not None else None}


def names(options: Iterable[Option]) -> str:
    """``top_k, score_thresh`` (or ``none``), for error messages."""
    return ", ".join(o.name for o in options) or "none"


def check_declared(options: Sequence[Option], task: str) -> list[Option]:
    """A runtime's declarations, checked once: Options, each name once."""
    seen: set[str] = set()
    for option in options:
        if not isinstance(option, Option):
            raise PluginError(f"runtime of task {task!r}: options() gave a {type(option).__name__}, expected "
                              "visionkit.runtime.Option")
        if option.name in seen:
            raise PluginError(f"runtime of task {task!r}: option {option.name!r} is declared twice")
        seen.add(option.name)
    return list(options)


def resolve(options: Sequence[Option], given: Mapping[str, Any], task: str) -> dict[str, Any]:
    """Every declared option's value: ``given`` (checked) or its default. A name the task does not
    declare is an :class:`OptionError` naming it and the accepted ones; None means "not given"."""
    by_name = {o.name: o for o in options}
    for key in given:
        if key not in by_name:
            raise OptionError(f"option {key!r}: a {task} model takes no such option (it takes {names(options)})")
    out = {}
    for option in options:
        value = given.get(option.name)
        if value is None:
            out[option.name] = option.default
            continue
        try:
            out[option.name] = option.check(value)
        except OptionError as exc:
            raise OptionError(f"option {option.name}={value!r}: {exc}") from None
    return out
