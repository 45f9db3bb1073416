"""Object detection, visionkit's built-in ``detection``: training in :mod:`.plugin` (the
``DetectionPlugin`` class), ONNX export in :mod:`.export`, inference in :mod:`.runtime`.

Importing :mod:`.runtime` imports this package first, and a deployment must not import
torch, so the training side (torch) is loaded only when one of its names is asked for:
``visionkit_plugins.detection.DetectionPlugin`` still works, as before.
"""

from visionkit.lazy import forward_to

__getattr__ = forward_to(f"{__name__}.plugin")
