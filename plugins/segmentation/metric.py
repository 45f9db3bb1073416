"""mIoU, per-class IoU and pixel accuracy from one confusion matrix.

The state is integer pixel counts, so summing the workers' matrices gives exactly the matrix of
one process over the whole validation set, whatever the worker count. Pixels labelled
:data:`IGNORE_INDEX` are left out.

A class with no pixel in the ground truth and none predicted (union 0) has no defined IoU: it is
``None`` in the per-class list and left out of the means (the nan-mean of torchmetrics and
mmsegmentation), so it neither rewards nor punishes the model. A class predicted but absent from
the ground truth has IoU 0 and counts. Background (index 0) is a class like the others, as in
Pascal VOC's 21-class mIoU.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from visionkit.plugin import Metric

from .data import IGNORE_INDEX

#: validation images kept for the overlays, and their longest side
NUM_SAMPLES = 4
SAMPLE_SIDE = 256


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> np.ndarray:
    """Rows: ground truth, columns: prediction; ignore pixels excluded."""
    valid = target != IGNORE_INDEX
    index = target[valid].long() * num_classes + pred[valid].long()
    counts = torch.bincount(index.cpu(), minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes).numpy().astype(np.int64)


def scores(confusion: np.ndarray) -> dict[str, Any]:
    tp = np.diag(confusion).astype(np.float64)
    gt, pred = confusion.sum(1), confusion.sum(0)
    union = gt + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    total = confusion.sum()
    nanmean = lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")  # noqa: E731
    as_list = lambda v: [None if np.isnan(x) else float(x) for x in v]  # noqa: E731  (JSON has no NaN)
    return {
        "mIoU": nanmean(iou),
        "pixel_acc": float(tp.sum() / total) if total else float("nan"),
        "mAcc": nanmean(acc),
        "IoU_per_class": as_list(iou),
        "acc_per_class": as_list(acc),
        "confusion": confusion.tolist(),
    }


def _encode(array: np.ndarray, fmt: str) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_sample(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def _small(image: np.ndarray, target: np.ndarray, pred: np.ndarray):
    """At most SAMPLE_SIDE pixels on the longest side: the state travels between workers."""
    h, w = target.shape
    scale = SAMPLE_SIDE / max(h, w)
    if scale >= 1:
        return image, target, pred
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return (np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)),
            np.asarray(Image.fromarray(target).resize(size, Image.NEAREST)),
            np.asarray(Image.fromarray(pred).resize(size, Image.NEAREST)))


class SegmentationMetric(Metric):
    """Confusion-matrix metric; also keeps the first few validation samples for the overlays."""

    primary = "mIoU"
    higher_is_better = True

    def __init__(self, classes: Sequence[str], num_samples: int = NUM_SAMPLES):
        self.classes = list(classes)
        self.num_samples = num_samples
        self.confusion = np.zeros((len(self.classes),) * 2, dtype=np.int64)
        self.samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def update(self, outputs: torch.Tensor, batch: Any) -> None:
        """``outputs``: predicted class per pixel (BxHxW); ``batch``: (images, masks)."""
        images, target = batch
        self.confusion += confusion_matrix(outputs, target, len(self.classes))
        for k in range(min(self.num_samples - len(self.samples), len(images))):
            image = (images[k].float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            self.samples.append(_small(image, target[k].byte().cpu().numpy(), outputs[k].byte().cpu().numpy()))

    def state(self) -> dict[str, Any]:
        return {"confusion": self.confusion.copy(), "samples": list(self.samples)}

    def merge(self, states: Sequence[dict[str, Any]]) -> None:
        self.confusion = np.sum([s["confusion"] for s in states], axis=0).astype(np.int64)
        self.samples = [x for s in states for x in s["samples"]][: self.num_samples]

    def compute(self) -> dict[str, Any]:
        result = scores(self.confusion)
        result["samples"] = [{"image": _encode(i, "JPEG"), "target": _encode(t, "PNG"), "pred": _encode(p, "PNG")}
                             for i, t, p in self.samples]
        return result


def predicted_classes(logits: torch.Tensor) -> torch.Tensor:
    """Class per pixel as uint8 (a quarter of int64's memory; at most 255 classes fit)."""
    return logits.argmax(1).to(torch.uint8)

