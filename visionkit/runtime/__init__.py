"""Torch-free inference for exported models: numpy, onnxruntime and Pillow (OpenCV only when an
image must be resized, exactly as training's albumentations did).

Nothing here imports torch, directly or through another visionkit module, so a deployment (an
HTTP server, a Ray Serve replica, a container) stays small; a test keeps it that way. Each
task's own part (post-processing, drawing, query options, written files) is a
:class:`TaskRuntime` found through the ``visionkit.runtime`` entry points.

    from visionkit.runtime import Model
    model = Model.load("model.onnx")          # metadata: task, classes, pre-processing...
    results = model.predict(["a.png", rgb_array], top_k=3)
"""

from .metadata import Metadata, ModelError
from .model import Model, foreign_metadata
from .options import Option, OptionError
from .preprocess import IMAGE_SUFFIXES, Prepared, list_images
from .tasks import PredictionWriter, TaskRuntime, mask_png, to_json

__all__ = ["Model", "Metadata", "ModelError", "Option", "OptionError", "PredictionWriter", "Prepared", "TaskRuntime",
           "foreign_metadata", "list_images", "mask_png", "to_json", "IMAGE_SUFFIXES"]
