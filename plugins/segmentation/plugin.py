"""Semantic segmentation: a class per pixel, scored by mIoU.

Data from mask PNG folders (VOC layout included) or COCO instances JSON; torchvision's
DeepLabV3 / FCN / LR-ASPP or a compact U-Net; cross-entropy (+ auxiliary head, + Dice);
a confusion-matrix metric that is exact across any number of workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from visionkit.plugin import TaskPlugin

from .data import DataConfig, SegmentationDataset, build_dataset, collate, eval_size_key
from .loss import LossConfig, build_loss
from .metric import SegmentationMetric, predicted_classes
from .models import ModelConfig, build_model


class SegmentationPlugin(TaskPlugin):
    name = "segmentation"
    summary = "semantic segmentation (mask PNGs, VOC or COCO JSON; DeepLabV3/FCN/LR-ASPP/U-Net; mIoU)"
    DataConfig = DataConfig
    ModelConfig = ModelConfig
    LossConfig = LossConfig
    MetricClass = SegmentationMetric

    def build_dataset(self, data: DataConfig, split: str) -> SegmentationDataset:
        return build_dataset(data, split)

    def check_data(self, dataset, split: str):
        """What ``visionkit data check`` reads and counts (check.py)."""
        from .check import check_data

        return check_data(dataset, split)

    def draw_sample(self, dataset, index: int, augmented: bool):
        """``visionkit data show``'s tile (check.py)."""
        from .check import draw_sample

        return draw_sample(dataset, index, augmented)

    def sample_classes(self, dataset: SegmentationDataset) -> list[list[int]]:
        """The classes present in each training mask (ignored pixels aside): every mask is read
        once, in the driver's pre-flight and on each worker."""
        import numpy as np

        k = len(dataset.classes)  # IGNORE_INDEX (255) and stray values are no class
        return [[int(c) for c in np.unique(dataset.source.mask(i)) if c < k] for i in range(len(dataset))]

    def collate(self, samples: list) -> Any:
        return collate(samples)

    def eval_size_key(self, dataset: SegmentationDataset, index: int) -> Any:
        """The image's stored size (header only): a zero-padded batch would change the logits near
        the padding, and global context (DeepLabV3's image pooling) everywhere."""
        return eval_size_key(dataset, index)

    def build_model(self, model: ModelConfig, classes: list[str], data: DataConfig | None = None) -> torch.nn.Module:
        """Fully convolutional: any input size, so the data section changes nothing here."""
        return build_model(model, len(classes))

    def build_loss(self, loss: LossConfig, classes: list[str]):
        return build_loss(loss, classes)

    def predict(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """Class per pixel (BxHxW, uint8); the caller has put the model in eval mode."""
        images, _ = batch
        with torch.no_grad():
            return predicted_classes(model(images)["out"])

    def build_metric(self, classes: list[str]) -> SegmentationMetric:
        return SegmentationMetric(classes)

    def write_visuals(self, result: dict[str, Any], classes: list[str], out_dir: Path) -> list[Path]:
        from .visuals import write_visuals

        return write_visuals(result, classes, out_dir)

    def report_sections(self, run) -> list:
        from .report import report_sections

        return report_sections(run)

    def exporter(self):
        """ONNX export (export.py), imported only when exporting."""
        from .export import SegmentationExporter

        return SegmentationExporter()


__all__ = ["SegmentationPlugin", "DataConfig", "ModelConfig", "LossConfig"]
