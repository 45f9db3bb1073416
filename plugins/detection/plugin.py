"""Object detection: COCO JSON data, torchvision detectors (+ ``fcos_light``), COCO box mAP.

Registered as the ``detection`` task through the ``visionkit.tasks`` entry point. A batch is
``(images, targets)``: two lists, since images may differ in size and boxes in count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from visionkit.errors import ConfigError
from visionkit.plugin import LossOutput, Metric, TaskPlugin

from . import data as _data
from . import models as _models
from .config import DataConfig, LossConfig, ModelConfig
from .metric import DetectionMetric


class DetectionLoss:
    """The detector's own loss dict (train-mode forward), summed with per-part weights.

    Every part is returned unweighted for logging; ``total`` is the weighted sum.
    """

    def __init__(self, weights: dict[str, float]):
        self.weights = dict(weights)
        self._checked = False

    def __call__(self, model: torch.nn.Module, batch: Any) -> LossOutput:
        images, targets = batch
        parts = model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        if not isinstance(parts, dict):
            raise RuntimeError("detection loss needs the model in train mode (torchvision detectors return "
                               "losses only when training)")
        if not self._checked:
            unknown = sorted(set(self.weights) - set(parts))
            if unknown:
                raise ConfigError(f"loss.weights: {unknown[0]!r} is not a loss part of this model; "
                                  f"its parts: {', '.join(parts)}")
            self._checked = True
        total = sum(self.weights.get(name, 1.0) * value for name, value in parts.items())
        return LossOutput(total, parts)


class DetectionPlugin(TaskPlugin):
    name = "detection"
    summary = "object detection: COCO JSON, torchvision detectors or fcos_light, COCO box mAP"
    DataConfig = DataConfig
    ModelConfig = ModelConfig
    LossConfig = LossConfig
    MetricClass = DetectionMetric

    def build_dataset(self, data: DataConfig, split: str) -> _data.DetectionDataset:
        return _data.build_dataset(data, split)

    def check_data(self, dataset, split: str):
        """What ``visionkit data check`` reads and counts (check.py)."""
        from .check import check_data

        return check_data(dataset, split)

    def draw_sample(self, dataset, index: int, augmented: bool):
        """``visionkit data show``'s tile (check.py)."""
        from .check import draw_sample

        return draw_sample(dataset, index, augmented)

    def sample_classes(self, dataset: _data.DetectionDataset) -> list[list[int]]:
        """The classes of each image's training boxes (none for a negative), from the annotations."""
        return [sorted(set(rec.labels.tolist())) for rec in dataset.split.records]

    def collate(self, samples: list) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        return _data.collate(samples)

    def batch_size_of(self, batch: Any) -> int:
        return len(batch[0])

    def eval_size_key(self, dataset: Any, index: int) -> Any:
        """The image's size: torchvision detectors pad a batch to its largest image, which changes
        the features (and so the detections) of the smaller ones."""
        return _data.eval_size_key(dataset, index)

    def build_model(self, model: ModelConfig, classes: list[str], data: DataConfig | None = None) -> torch.nn.Module:
        """``data`` is unused: detectors resize inputs themselves (model.min_size/max_size)."""
        return _models.build(model, num_classes=len(classes) + 1)  # + background

    def build_loss(self, loss: LossConfig, classes: list[str]) -> DetectionLoss:
        return DetectionLoss(loss.weights)

    def predict(self, model: torch.nn.Module, batch: Any) -> list[dict[str, torch.Tensor]]:
        """Detections with boxes in the original image's pixels (undoing any val resize)."""
        images, targets = batch
        outputs = model(images)
        for out, image, target in zip(outputs, images, targets):
            height, width = image.shape[-2:]
            orig_h, orig_w = target.get("orig_size", (height, width))
            if (orig_h, orig_w) != (height, width):
                scale = torch.tensor([orig_w / width, orig_h / height] * 2, device=out["boxes"].device)
                out["boxes"] = out["boxes"] * scale
        return outputs

    def build_metric(self, classes: list[str]) -> Metric:
        return DetectionMetric(classes)

    def write_visuals(self, result: dict[str, Any], classes: list[str], out_dir: Path) -> list[Path]:
        from .visuals import write_visuals

        return write_visuals(result, classes, out_dir)

    def report_sections(self, run) -> list:
        from .report import report_sections

        return report_sections(run)

    def exporter(self):
        """ONNX export with NMS inside the graph (export.py: torchvision's detection internals,
        imported only when exporting)."""
        from .export import DetectionExporter

        return DetectionExporter()


__all__ = ["DetectionPlugin", "DataConfig", "ModelConfig", "LossConfig", "DetectionMetric"]
