"""ONNX export of a detector with everything a deployer needs inside the graph, NMS included.

Two graphs, chosen per model:

* FCOS and RetinaNet models (``fcos_light``, ``fcos_resnet50_fpn``, ``retinanet_*``):
  :class:`DenseDetectorGraph`, the model's own inference written over the batch dimension, so
  the graph takes any batch size and image size. torchvision's eager code loops over images in
  Python, which tracing would freeze at the traced batch size.
* The others (Faster R-CNN, SSDlite): torchvision's eager forward traced for one image
  (:class:`PerImageDetectorGraph`); the runtime feeds images one at a time. Its trace keeps the
  traced image size in places (box clipping and rescaling), so the graph takes that one size and
  the runtime resizes other images to it (``dynamic_size=False``).

Both are exported with the TorchScript-based exporter: with this torch, the torch.export
(dynamo) exporter fails on torchvision's NMS. Both answer the same outputs: ``boxes`` (N, D, 4)
xyxy in input pixels, ``scores`` (N, D), ``labels`` (N, D) class indices 0..K-1 (-1 in unused
slots), ``num_detections`` (N,); D is ``model.detections_per_img``. torchvision's background
class (label 0) is left out, so labels index the class names directly.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops

from visionkit.plugin import Exporter, ExportOptions, ExportPlan, resize_steps

from .data import read_categories

OUTPUTS = ["boxes", "scores", "labels", "num_detections"]
#: fp32 parity: every PyTorch detection has an ONNX one of the same class at this IoU
MIN_IOU = 0.99
MAX_SCORE_DIFF = 1e-3
SAME_BOX_PX = 1e-2


def _shape_hw(x: torch.Tensor) -> torch.Tensor:
    """(height, width) as a tensor that stays symbolic while tracing (torchvision's trick)."""
    if torchvision._is_tracing():
        return torch._shape_as_tensor(x)[-2:]
    return torch.tensor(x.shape[-2:])


def _clip(boxes: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
    """``clip_boxes_to_image`` with the size as a tensor, so it stays symbolic in the graph."""
    size = hw.to(boxes.dtype)
    x = torch.min(boxes[..., 0::2].clamp(min=0), size[1])
    y = torch.min(boxes[..., 1::2].clamp(min=0), size[0])
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def _filled(rows, row: torch.Tensor) -> torch.Tensor:
    """``rows`` copies of ``row`` (a writable tensor); ``rows`` may be a traced size."""
    return row.expand(rows, *row.shape[1:]).clone()


def _rank_in_image(image: torch.Tensor, n) -> torch.Tensor:
    """For boxes listed image by image in any interleaving: each one's position within its image."""
    member = (image.unsqueeze(1) == torch.arange(n).unsqueeze(0)).to(torch.int64)  # (M, N)
    return (member.cumsum(0) * member).sum(1) - 1


class ClasswiseNMS(torch.autograd.Function):
    """NMS per (image, class): ONNX's ``NonMaxSuppression`` over its batch and class axes.

    torchvision's ``nms`` exports as that op with one image and one class, so a batch needs
    its boxes offset into one big NMS: quadratic in the boxes of the whole batch, which made
    batch 8 slower in onnxruntime than eager PyTorch. Eager (and while tracing) this computes
    the same selection with torchvision's ``nms``, in the op's output order: image, class, score.

    boxes (N, M, 4) xyxy; scores (N, C, M), negative where a box is not a candidate of a class;
    returns (K, 3) int64 rows (image, class, box), at most ``per_class`` per (image, class).
    """

    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, iou: float, per_class: int) -> torch.Tensor:
        rows = []
        for i in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                candidates = torch.nonzero(scores[i, c] > 0).flatten()
                keep = candidates[box_ops.nms(boxes[i, candidates], scores[i, c, candidates], iou)][:per_class]
                rows.append(torch.stack([torch.full_like(keep, i), torch.full_like(keep, c), keep], 1))
        return torch.cat(rows) if rows else boxes.new_zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, iou: float, per_class: int):
        const = lambda value, dtype: g.op("Constant", value_t=torch.tensor([value], dtype=dtype))  # noqa: E731
        return g.op("NonMaxSuppression", boxes, scores, const(per_class, torch.int64),
                    const(iou, torch.float32), const(0.0, torch.float32))


class DenseDetectorGraph(nn.Module):
    """Batched FCOS / RetinaNet inference, step for step as torchvision's eager code.

    Normalise; resize as ``GeneralizedRCNNTransform`` (shorter side to ``min_size``, longer at
    most ``max_size``, bilinear); pad to the size divisor; backbone and head; per feature level
    the ``topk_candidates`` best (point, class) scores above ``score_thresh``; decode and clip
    the boxes; NMS per (image, class), as ``batched_nms`` does for one image; the
    ``detections_per_img`` best per image; boxes scaled back to the input's pixels.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.fcos = isinstance(model, FCOS)
        t = model.transform
        self.register_buffer("mean", torch.tensor(t.image_mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(t.image_std, dtype=torch.float32).view(1, -1, 1, 1))
        self.min_size, self.max_size, self.divisor = float(t.min_size[-1]), float(t.max_size), t.size_divisible
        self.detections = model.detections_per_img

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        hw = _shape_hw(x).to(torch.float32)
        scale = torch.min(self.min_size / hw.min(), self.max_size / hw.max())
        factor = scale if torchvision._is_tracing() else scale.item()
        return F.interpolate(x, scale_factor=factor, mode="bilinear", recompute_scale_factor=True, align_corners=False)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        hw = _shape_hw(x)
        padded = (torch.ceil(hw.to(torch.float32) / self.divisor) * self.divisor).to(torch.int64)
        pad = padded - hw
        if torchvision._is_tracing():
            return F.pad(x, (0, pad[1], 0, pad[0]))
        return F.pad(x, (0, int(pad[1]), 0, int(pad[0])))

    def forward(self, images: torch.Tensor):
        m = self.model
        n = images.shape[0]
        in_hw = _shape_hw(images).to(torch.float32)
        x = self._resize((images - self.mean) / self.std)
        hw = _shape_hw(x)
        x = self._pad(x)
        features = m.backbone(x)
        features = [features] if isinstance(features, torch.Tensor) else list(features.values())
        head = m.head(features)
        anchors = m.anchor_generator(ImageList(x, [(0, 0)]), features)[0]  # sizes: only counted there
        per_level = [f.size(2) * f.size(3) for f in features]
        total = per_level[0]
        for v in per_level[1:]:
            total = total + v
        per_anchor = head["cls_logits"].size(1) // total  # RetinaNet: anchors per location
        per_level = [v * per_anchor for v in per_level]

        splits = {k: head[k].split(per_level, dim=1) for k in head}
        boxes_all, scores_all, labels_all = [], [], []
        for level, anchors_l in enumerate(anchors.split(per_level)):
            logits = splits["cls_logits"][level]
            num_classes = logits.shape[-1]
            if self.fcos:
                scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(splits["bbox_ctrness"][level]))
            else:
                scores = torch.sigmoid(logits)
            scores = scores.flatten(1)
            # torchvision keeps the scores above the threshold, then the best k of them; the best
            # k after pushing the others below zero is the same set, in a fixed shape.
            k = det_utils._topk_min(scores, m.topk_candidates, 1)
            top, index = scores.masked_fill(scores <= m.score_thresh, -1.0).topk(k, dim=1)
            anchor_index = torch.div(index, num_classes, rounding_mode="floor")
            codes = torch.gather(splits["bbox_regression"][level], 1, anchor_index.unsqueeze(-1).expand(-1, -1, 4))
            refs = anchors_l[anchor_index]
            if self.fcos:
                boxes = m.box_coder.decode(codes, refs)
            else:
                boxes = m.box_coder.decode_single(codes.reshape(-1, 4), refs.reshape(-1, 4)).reshape(codes.shape)
            boxes_all.append(_clip(boxes, hw))
            scores_all.append(top)
            labels_all.append(index % num_classes)
        boxes = torch.cat(boxes_all, 1)  # (N, M, 4)
        scores = torch.cat(scores_all, 1)  # (N, M), -1 below the threshold
        labels = torch.cat(labels_all, 1)
        # Each candidate's score in its class's row, -1 in the others: ONNX's NonMaxSuppression
        # then suppresses per (image, class) and never compares boxes across images or classes.
        rows = labels.unsqueeze(1) == torch.arange(num_classes).view(1, -1, 1)
        by_class = torch.where(rows, scores.unsqueeze(1), torch.full_like(rows, -1.0, dtype=scores.dtype))
        selected = ClasswiseNMS.apply(boxes, by_class, float(m.nms_thresh), self.detections)
        image, labels = selected[:, 0], selected[:, 1]
        flat = image * boxes.shape[1] + selected[:, 2]
        boxes, scores = boxes.reshape(-1, 4)[flat], scores.reshape(-1)[flat]
        # Image by image, best score first: the order torchvision's per-image NMS returns.
        order = torch.argsort(image.to(scores.dtype) * 4 - scores)
        boxes, scores, labels, image = boxes[order], scores[order], labels[order], image[order]
        # The first detections_per_img of each image, then torchvision's background class
        # (label 0) dropped, as the plugin's evaluation does.
        take = (_rank_in_image(image, n) < self.detections) & (labels > 0)
        boxes, scores, labels, image = boxes[take], scores[take], labels[take], image[take]
        slot = image * self.detections + _rank_in_image(image, n)
        count = (image.unsqueeze(1) == torch.arange(n).unsqueeze(0)).to(torch.int64).sum(0)

        ratio = (in_hw / hw.to(torch.float32)).flip(0).repeat(2)  # (w, h, w, h): back to input pixels
        slots = n * self.detections
        out_boxes = _filled(slots, boxes.new_zeros(1, 4))
        out_boxes[slot] = boxes * ratio
        out_scores = _filled(slots, scores.new_zeros(1))
        out_scores[slot] = scores
        out_labels = _filled(slots, torch.full((1,), -1, dtype=torch.int64))
        out_labels[slot] = labels - 1
        return (out_boxes.reshape(n, self.detections, 4), out_scores.reshape(n, self.detections),
                out_labels.reshape(n, self.detections), count)


class PerImageDetectorGraph(nn.Module):
    """torchvision's own eager forward for one image (batch 1), outputs padded to D."""

    def __init__(self, model: nn.Module, detections: int):
        super().__init__()
        self.model = model
        self.detections = detections

    def forward(self, images: torch.Tensor):
        out = self.model([images[0]])[0]
        keep = out["labels"] > 0
        boxes, scores, labels = out["boxes"][keep][: self.detections], out["scores"][keep][: self.detections], \
            out["labels"][keep][: self.detections] - 1
        count = boxes.shape[0]
        missing = self.detections - count  # padding keeps a fixed output shape (F.pad traces sizes)
        boxes = F.pad(boxes, (0, 0, 0, missing))
        scores = F.pad(scores, (0, missing))
        labels = F.pad(labels, (0, missing), value=-1)
        count = torch.ones(1, dtype=torch.int64) * count
        return boxes[None], scores[None], labels[None], count


def is_dense(model: nn.Module) -> bool:
    return isinstance(model, (FCOS, RetinaNet))


def _nms_thresh(model: nn.Module) -> float:
    if hasattr(model, "nms_thresh"):
        return float(model.nms_thresh)
    heads = getattr(model, "roi_heads", None)
    return float(getattr(heads, "nms_thresh", 0.0))


def _detections(out: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    keep = out["labels"] > 0
    return {"boxes": out["boxes"][keep].float().numpy(), "scores": out["scores"][keep].float().numpy(),
            "labels": (out["labels"][keep] - 1).numpy()}


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def match(ref: dict[str, np.ndarray], exp: dict[str, np.ndarray], score_thresh: float) -> dict[str, Any]:
    """Greedy one-to-one matching, best score first, same label, highest IoU."""
    used = np.zeros(len(exp["scores"]), dtype=bool)
    ious, score_diffs, unmatched, borderline = [], [], 0, 0
    for j in np.argsort(-ref["scores"], kind="stable"):
        same = (exp["labels"] == ref["labels"][j]) & ~used
        overlap = _iou(ref["boxes"][j], exp["boxes"]) if len(exp["scores"]) else np.zeros(0)
        # Boxes of zero width or height (an untrained head makes them) have no IoU: equal
        # coordinates count as a perfect match.
        overlap = np.where(np.abs(exp["boxes"] - ref["boxes"][j]).max(axis=1, initial=0) <= SAME_BOX_PX, 1.0, overlap)
        iou = np.where(same, overlap, -1.0)
        best = int(np.argmax(iou)) if len(iou) else -1
        if best >= 0 and iou[best] >= MIN_IOU:
            used[best] = True
            ious.append(float(iou[best]))
            score_diffs.append(abs(float(ref["scores"][j]) - float(exp["scores"][best])))
        elif ref["scores"][j] < score_thresh + MAX_SCORE_DIFF:
            borderline += 1  # at the score threshold, float rounding decides either way
        else:
            unmatched += 1
    extra = exp["scores"][~used]
    borderline += int((extra < score_thresh + MAX_SCORE_DIFF).sum())
    return {"matched": len(ious), "unmatched_torch": unmatched,
            "unmatched_onnx": int((extra >= score_thresh + MAX_SCORE_DIFF).sum()), "borderline": borderline,
            "min_iou": min(ious, default=1.0), "max_score_diff": max(score_diffs, default=0.0)}


class DetectionExporter(Exporter):
    """A detector with NMS inside the graph: ``boxes``, ``scores``, ``labels``, ``num_detections``."""

    def plan(self, model: nn.Module, classes: list[str], sections: Any, options: ExportOptions) -> ExportPlan:
        category_ids, _ = read_categories(sections.data)
        cfg = sections.model
        dense = is_dense(model)
        graph = DenseDetectorGraph(model) if dense else PerImageDetectorGraph(model, cfg.detections_per_img)
        t = model.transform
        post = {"nms": "in graph (class-wise, per image)",
                "score_thresh": float(getattr(model, "score_thresh", cfg.score_thresh)),
                "nms_thresh": _nms_thresh(model), "detections_per_img": cfg.detections_per_img,
                "model_resize": {"min_size": int(t.min_size[-1]), "max_size": int(t.max_size)},
                "boxes": "xyxy, input pixels", "model": cfg.name}
        return ExportPlan(
            module=graph, output_names=OUTPUTS, channels=3, dynamic_batch=dense, dynamic_size=dense,
            preprocess=resize_steps(sections.data.val_transforms, "data.val_transforms"),
            normalization={"mean": list(t.image_mean), "std": list(t.image_std), "in_graph": True},
            postprocess=post, category_ids=list(category_ids))

    def source(self, dataset, index: int):
        return dataset.split.records[index].file

    @torch.no_grad()
    def reference(self, model: nn.Module, dataset, indices: Sequence[int]) -> list[dict[str, Any]]:
        """torchvision's eager inference per image, on the validation transform's output."""
        model.eval()
        return [_detections(model([dataset[i][0]])[0]) for i in indices]

    def compare(self, reference: list[dict[str, Any]], exported: list[dict[str, Any]], precision: str,
                plan: ExportPlan) -> dict[str, Any]:
        score_thresh = plan.postprocess["score_thresh"]
        totals = {"images": len(reference), "torch_detections": 0, "matched": 0, "unmatched_torch": 0,
                  "unmatched_onnx": 0, "borderline": 0, "min_iou": 1.0, "max_score_diff": 0.0}
        for ref, out in zip(reference, exported):
            n = int(out["num_detections"])
            exp = {"boxes": out["boxes"][:n].astype(np.float64), "scores": out["scores"][:n].astype(np.float64),
                   "labels": out["labels"][:n]}
            found = match({k: np.asarray(v, dtype=np.float64 if k != "labels" else np.int64)
                           for k, v in ref.items()}, exp, score_thresh)
            totals["torch_detections"] += len(ref["scores"])
            for key in ("matched", "unmatched_torch", "unmatched_onnx", "borderline"):
                totals[key] += found[key]
            totals["min_iou"] = min(totals["min_iou"], found["min_iou"])
            totals["max_score_diff"] = max(totals["max_score_diff"], found["max_score_diff"])
        if precision == "fp32":
            ok = (totals["unmatched_torch"] == 0 and totals["unmatched_onnx"] == 0
                  and totals["max_score_diff"] <= MAX_SCORE_DIFF)
            totals.update(threshold=f"every detection matched one-to-one, same label, IoU >= {MIN_IOU}, "
                                    f"|score diff| <= {MAX_SCORE_DIFF:g} (ties at the score threshold aside)", ok=ok)
        else:
            totals.update(threshold="reduced precision: judged by the validation metric", ok=True)
        return totals

    def metric_inputs(self, dataset, indices: Sequence[int], results: list[dict[str, Any]]):
        """The runtime's detections (original pixels) as :meth:`DetectionPlugin.predict` gives them."""
        outputs, targets = [], []
        for i, result in zip(indices, results):
            rec = dataset.split.records[i]
            dets = result["detections"]
            boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)],
                                 dtype=torch.float64).reshape(-1, 4)
            outputs.append({"boxes": boxes, "scores": torch.tensor([d["score"] for d in dets], dtype=torch.float64),
                            "labels": torch.tensor([d["label"] + 1 for d in dets], dtype=torch.int64)})
            targets.append({"image_id": rec.id, "orig_size": (rec.height, rec.width), "gt": rec.gt,
                            "file": str(rec.file)})
        return outputs, (None, targets)
