"""visionkit: plugin-based computer-vision training on Ray Train, exported to ONNX."""

__version__ = "0.1.0"
