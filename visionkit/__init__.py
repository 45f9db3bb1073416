"""visionkit: plugin-based computer-vision training on Ray Train, exported to ONNX."""

import os

__version__ = "0.1.0"

# albumentations checks PyPI for a newer version at import; nothing here may reach the network
# unasked (and on an offline cluster node the check only prints a warning per worker).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
