"""ONNX export of a classifier: normalisation in the graph, class probabilities out."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from visionkit.plugin import Exporter, ExportOptions, ExportPlan, resize_steps

#: fp32 graphs must give PyTorch's probabilities to within this (max absolute difference)
MAX_PROB_DIFF = 1e-4


class ClassifierGraph(nn.Module):
    """Images in [0, 1] -> softmax probabilities. The training normalisation is its first step."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model((images - self.mean) / self.std), dim=1)


def _stats(data) -> tuple[list[float], list[float]]:
    return list(data.mean)[: data.channels], list(data.std)[: data.channels]


def label_of(dataset, index: int) -> int:
    return int(dataset.samples[index][1]) if hasattr(dataset, "samples") else int(dataset.labels[index])


class ClassificationExporter(Exporter):
    """A classifier as ``probabilities`` (N, K) in class order; the runtime picks the top k."""

    def plan(self, model: nn.Module, classes: list[str], sections: Any, options: ExportOptions) -> ExportPlan:
        data, cfg = sections.data, sections.model
        steps = resize_steps(data.val_transforms, "data.val_transforms")
        size = data.model_input_size() if cfg.name == "mlp" else data.image_size  # the MLP's input is fixed
        if size is not None:
            steps.append({"op": "resize", "height": size, "width": size, "interpolation": 1})
        mean, std = _stats(data)
        return ExportPlan(
            module=ClassifierGraph(model, mean, std), output_names=["probabilities"], channels=data.channels,
            dynamic_batch=True, dynamic_size=cfg.name != "mlp", preprocess=steps,
            normalization={"mean": mean, "std": std, "in_graph": True})

    def source(self, dataset, index: int):
        if hasattr(dataset, "samples"):  # ImageFolder
            return dataset.samples[index][0]
        return dataset.raw[index]  # MNIST: the uint8 array

    def graph_input(self, dataset, data, index: int) -> torch.Tensor:
        """The normalised training tensor, brought back to [0, 1] (exact to float rounding)."""
        image = dataset[index][0].float()
        mean, std = _stats(data)
        return image * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)

    @torch.no_grad()
    def reference(self, model: nn.Module, dataset, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The evaluation path: the dataset's tensors through the model, softmaxed."""
        model.eval()
        out = []
        for start in range(0, len(indices), 16):
            batch = torch.stack([dataset[i][0] for i in indices[start:start + 16]])
            out += [{"probabilities": p.numpy()} for p in torch.softmax(model(batch).float(), dim=1)]
        return out

    def compare(self, reference: list[dict[str, Any]], exported: list[dict[str, Any]], precision: str,
                plan: ExportPlan) -> dict[str, Any]:
        ref = np.stack([r["probabilities"] for r in reference]).astype(np.float64)
        exp = np.stack([e["probabilities"] for e in exported]).astype(np.float64)
        diff = float(np.abs(ref - exp).max())
        agree = float((ref.argmax(1) == exp.argmax(1)).mean())
        result = {"images": len(ref), "max_abs_prob_diff": diff, "top1_agreement": agree}
        if precision == "fp32":
            result.update(threshold=f"max |p_onnx - p_torch| <= {MAX_PROB_DIFF:g}", ok=diff <= MAX_PROB_DIFF)
        else:
            result.update(threshold="reduced precision: judged by the validation metric", ok=True)
        return result

    def metric_inputs(self, dataset, indices: Sequence[int], results: list[dict[str, Any]]):
        """Probabilities in class order (argmax and top-k are all the metric reads; the runtime's
        eval options ask for every class), and the labels."""
        probs = torch.zeros(len(results), len(dataset.classes))
        for row, result in enumerate(results):
            for entry in result["top_k"]:
                probs[row, entry["index"]] = entry["probability"]
        labels = torch.tensor([label_of(dataset, i) for i in indices], dtype=torch.int64)
        return probs, (None, labels)
