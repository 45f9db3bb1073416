"""Image classification, visionkit's built-in ``classification``: training in :mod:`.plugin` (the
``ClassificationPlugin`` class), ONNX export in :mod:`.export`, inference in :mod:`.runtime`.

Importing :mod:`.runtime` imports this package first, and a deployment must not import
torch, so the training side (torch) is loaded only when one of its names is asked for:
``visionkit_plugins.classification.ClassificationPlugin`` still works, as before.
"""

import importlib


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return getattr(importlib.import_module(f"{__name__}.plugin"), name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
