"""A package ``__getattr__`` that loads a submodule only when one of its names is asked for.

The built-in plugin packages use it so that importing their torch-free ``runtime`` (which runs
the package's ``__init__`` first) never imports the torch-based training side.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def forward_to(module: str) -> Callable[[str], Any]:
    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return getattr(importlib.import_module(module), name)
        except AttributeError:
            raise AttributeError(f"module {module.rpartition('.')[0]!r} has no attribute {name!r}") from None

    return __getattr__
