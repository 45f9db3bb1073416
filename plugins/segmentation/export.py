"""ONNX export of a segmenter: a class per pixel at the input's resolution (logits optional).

The models normalise their [0, 1] input themselves (:class:`~.models.Segmenter`), so the graph
holds the normalisation too; the arg-max over classes is in the graph, so a deployer gets the
map directly. Fully convolutional: any batch, any image size.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from visionkit.plugin import Exporter, ExportOptions, ExportPlan, resize_steps
from visionkit.runtime.tasks import nearest

from .data import collate
from .metric import predicted_classes

#: fp32 graphs must agree with PyTorch on at least this share of pixels
MIN_PIXEL_AGREEMENT = 0.999


class SegmenterGraph(nn.Module):
    """Images in [0, 1] -> ``class_map`` (N, H, W uint8), and ``logits`` (N, C, H, W) on request."""

    def __init__(self, model: nn.Module, logits: bool = False):
        super().__init__()
        self.model = model
        self.logits = logits

    def forward(self, images: torch.Tensor):
        logits = self.model(images)["out"]
        class_map = predicted_classes(logits)
        return (class_map, logits) if self.logits else class_map


class SegmentationExporter(Exporter):
    """A segmenter as ``class_map`` (N, H, W uint8), plus ``logits`` with ``--logits``."""

    def plan(self, model: nn.Module, classes: list[str], sections: Any, options: ExportOptions) -> ExportPlan:
        names = ["class_map", "logits"] if options.logits else ["class_map"]
        axes = {"class_map": {0: "batch", 1: "height", 2: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
        return ExportPlan(
            module=SegmenterGraph(model, options.logits), output_names=names, channels=3,
            dynamic_batch=True, dynamic_size=True,
            preprocess=resize_steps(sections.data.val_transforms, "data.val_transforms"),
            normalization={"mean": list(sections.model.mean), "std": list(sections.model.std), "in_graph": True},
            postprocess={"class_map": "uint8 class index per pixel, input resolution", "ignore_index": 255},
            dynamic_axes={k: axes[k] for k in names})

    def source(self, dataset, index: int):
        return dataset.source.images[index]

    @torch.no_grad()
    def reference(self, model: nn.Module, dataset, indices: Sequence[int]) -> list[dict[str, Any]]:
        model.eval()
        return [{"class_map": predicted_classes(model(dataset[i][0][None])["out"])[0].numpy()} for i in indices]

    def compare(self, reference: list[dict[str, Any]], exported: list[dict[str, Any]], precision: str,
                plan: ExportPlan) -> dict[str, Any]:
        equal = total = 0
        for ref, exp in zip(reference, exported):
            if ref["class_map"].shape != exp["class_map"].shape:
                return {"images": len(reference), "ok": False,
                        "error": f"class map shapes differ: {ref['class_map'].shape} vs {exp['class_map'].shape}"}
            equal += int((ref["class_map"] == exp["class_map"]).sum())
            total += ref["class_map"].size
        agreement = equal / max(total, 1)
        result = {"images": len(reference), "pixels": total, "pixel_agreement": agreement}
        if precision == "fp32":
            result.update(threshold=f"pixels with the same class >= {MIN_PIXEL_AGREEMENT:.1%}",
                          ok=agreement >= MIN_PIXEL_AGREEMENT)
        else:
            result.update(threshold="reduced precision: judged by the validation metric", ok=True)
        return result

    def metric_inputs(self, dataset, indices: Sequence[int], results: list[dict[str, Any]]):
        """The dataset's (image, mask) batch, and the runtime's maps at the masks' size, padded alike."""
        samples = [dataset[i] for i in indices]
        images, masks = collate(samples)
        preds = torch.zeros(masks.shape, dtype=torch.uint8)
        for k, ((_, target), result) in enumerate(zip(samples, results)):
            h, w = target.shape
            mask = result["mask"]
            if mask.shape != (h, w):  # a foreign model's output size
                mask = nearest(mask, (h, w))
            preds[k, :h, :w] = torch.from_numpy(np.ascontiguousarray(mask))
        return preds, (images, masks)
