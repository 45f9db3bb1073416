"""Torch-free inference for exported models: numpy, onnxruntime and Pillow (OpenCV only when an
image must be resized, exactly as training's albumentations did).

Nothing here imports torch, directly or through another visionkit module, so a deployment (an
HTTP server, a Ray Serve replica, a container) stays small; a test keeps it that way.

    from visionkit.runtime import Model
    model = Model.load("model.onnx")          # metadata: task, classes, pre-processing...
    results = model.predict(["a.png", rgb_array])
"""

from .metadata import Metadata, ModelError
from .model import Model, foreign_metadata
from .preprocess import IMAGE_SUFFIXES, list_images
from .tasks import TaskRuntime, mask_png, to_json

__all__ = ["Model", "Metadata", "ModelError", "TaskRuntime", "foreign_metadata", "list_images", "mask_png",
           "to_json", "IMAGE_SUFFIXES"]
