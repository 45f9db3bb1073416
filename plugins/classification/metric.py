"""Top-1/top-5, per-class accuracy and the confusion matrix, exact across workers.

A class with no validation image has no per-class accuracy (``None``) and is left out of
``mean_class_accuracy``, so a val split missing a class neither rewards nor punishes the model.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from visionkit.plugin import Metric


class ClassificationMetric(Metric):
    primary = "top1"
    higher_is_better = True

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # [true, predicted]
        self.top5_hits = 0

    def update(self, outputs: torch.Tensor, batch: Any) -> None:
        labels = batch[1].cpu()
        logits = outputs.float().cpu()
        pred = logits.argmax(1)
        self.confusion += torch.bincount(labels * self.num_classes + pred,
                                         minlength=self.num_classes ** 2).reshape(self.num_classes, -1)
        k = min(5, self.num_classes)
        self.top5_hits += int((logits.topk(k, 1).indices == labels[:, None]).any(1).sum())

    def state(self):
        return {"confusion": self.confusion, "top5_hits": self.top5_hits}

    def merge(self, states: Sequence[Any]) -> None:
        self.confusion = sum(s["confusion"] for s in states)
        self.top5_hits = sum(s["top5_hits"] for s in states)

    def compute(self) -> dict[str, Any]:
        total = int(self.confusion.sum())
        hits, counts = self.confusion.diag().tolist(), self.confusion.sum(1).tolist()
        # A class with no validation image has no accuracy: None (JSON null), and left out of
        # the mean rather than counted as 0, as segmentation's nan-mean does.
        per_class = [h / n if n else None for h, n in zip(hits, counts)]
        defined = [a for a in per_class if a is not None]
        result: dict[str, Any] = {"top1": float(self.confusion.diag().sum()) / max(total, 1)}
        if self.num_classes > 5:
            result["top5"] = self.top5_hits / max(total, 1)
        result["mean_class_accuracy"] = sum(defined) / len(defined) if defined else float("nan")
        result["num_images"] = total
        result["per_class_accuracy"] = per_class
        result["confusion_matrix"] = self.confusion.tolist()
        return result
