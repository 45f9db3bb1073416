"""Image classification: ImageFolder or MNIST IDX data, torchvision models or an MLP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from visionkit.plugin import LossOutput, Section, TaskPlugin

from .data import DataConfig, build_dataset
from .metric import ClassificationMetric
from .models import ModelConfig, build_model
from .visuals import plot_confusion


class LossConfig(Section):
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class ClassificationPlugin(TaskPlugin):
    name = "classification"
    summary = "image classification (ImageFolder, MNIST IDX; torchvision models, MLP)"
    DataConfig = DataConfig
    ModelConfig = ModelConfig
    LossConfig = LossConfig
    MetricClass = ClassificationMetric

    def build_dataset(self, data: DataConfig, split: str):
        return build_dataset(data, split)

    def check_data(self, dataset, split: str):
        """What ``visionkit data check`` reads and counts (check.py)."""
        from .check import check_data

        return check_data(dataset, split)

    def draw_sample(self, dataset, index: int, augmented: bool):
        """``visionkit data show``'s tile (check.py)."""
        from .check import draw_sample

        return draw_sample(dataset, index, augmented)

    def sample_classes(self, dataset) -> list[list[int]]:
        """Each image's label (balanced sampling draws the classes equally)."""
        if hasattr(dataset, "samples"):  # ImageFolder
            return [[label] for _, label in dataset.samples]
        return [[label] for label in dataset.labels.tolist()]  # MNIST

    def build_model(self, model: ModelConfig, classes: list[str], data: DataConfig) -> torch.nn.Module:
        return build_model(model, len(classes), data.channels, data.model_input_size())

    def build_loss(self, loss: LossConfig, classes: list[str]):
        criterion = torch.nn.CrossEntropyLoss(label_smoothing=loss.label_smoothing)

        def compute(model: torch.nn.Module, batch: Any) -> LossOutput:
            images, labels = batch
            return LossOutput(criterion(model(images), labels), {})

        return compute

    def predict(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        return model(batch[0])

    def build_metric(self, classes: list[str]) -> ClassificationMetric:
        return ClassificationMetric(len(classes))

    def write_visuals(self, result: dict[str, Any], classes: list[str], out_dir: Path) -> list[Path]:
        return [plot_confusion(result["confusion_matrix"], classes, Path(out_dir) / "confusion_matrix.png")]

    def report_sections(self, run) -> list:
        from .report import report_sections

        return report_sections(run)

    def exporter(self):
        """ONNX export (export.py), imported only when exporting."""
        from .export import ClassificationExporter

        return ClassificationExporter()
