"""COCO box mAP: predictions gathered from every worker, scored once with pycocotools.

Averaging per-worker mAPs would be wrong (AP is not additive), so each worker keeps its raw
predictions and the ground truth of the images it saw; ``merge`` takes the union and ``compute``
runs ``COCOeval`` on it. Images are evaluated in id order and each image's detections in the
model's order, so the numbers are the same whatever the worker count.

Categories are the contiguous labels ``1..K`` (the dataset's category ids in sorted order); COCOeval
scores each category on its own, so this equals scoring with the file's own ids. Ground truth is
the annotation file's, crowd boxes included as ``iscrowd`` (detections on them are ignored, not
false positives), and uncleaned, so the figures match pycocotools on the file itself.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import numpy as np

from visionkit.plugin import Metric

#: indices into COCOeval.stats (see COCOeval.summarize)
STAT_NAMES = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")
#: the ones logged per epoch; all twelve go to the JSON under "coco_stats"
LOGGED = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large", "AR100")
SAMPLE_IMAGES = 6
SAMPLE_MIN_SCORE = 0.3


def to_coco_results(dets: np.ndarray, image_id: int, category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Rows ``(x, y, w, h, score, label)`` -> COCO result dicts; ``category_ids`` maps label-1 back."""
    out = []
    for x, y, w, h, score, label in dets.tolist():
        cat = int(label) if category_ids is None else int(category_ids[int(label) - 1])
        out.append({"image_id": int(image_id), "category_id": cat, "bbox": [x, y, w, h], "score": score})
    return out


def coco_eval(images: list[dict[str, Any]], gt: list[dict[str, Any]], results: list[dict[str, Any]],
              categories: list[dict[str, Any]]):
    """Runs COCOeval (bbox) quietly; returns the evaluated, accumulated and summarised object."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gt, "categories": categories}
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes rejects an empty list; no detections is a valid (zero) result
            coco_dt = COCO()
            coco_dt.dataset = {"images": images, "annotations": [], "categories": categories}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _mean_defined(values: np.ndarray) -> float:
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else -1.0


class DetectionMetric(Metric):
    primary = "mAP"
    higher_is_better = True

    def __init__(self, classes: list[str]):
        self.classes = list(classes)
        self.images: dict[int, dict[str, Any]] = {}  # image_id -> {width, height, file}
        self.gt: dict[int, list[dict[str, Any]]] = {}
        self.dets: dict[int, np.ndarray] = {}  # image_id -> (n, 6) x, y, w, h, score, label

    def update(self, outputs: list[dict[str, Any]], batch: Any) -> None:
        """``outputs``: :meth:`DetectionPlugin.predict`'s, boxes in original-image pixels."""
        _, targets = batch
        for out, target in zip(outputs, targets):
            image_id = int(target["image_id"])
            height, width = (int(v) for v in target["orig_size"])
            self.images[image_id] = {"width": width, "height": height, "file": target.get("file")}
            self.gt[image_id] = list(target["gt"])
            boxes = out["boxes"].detach().float().cpu().numpy().astype(np.float64).reshape(-1, 4)
            scores = out["scores"].detach().float().cpu().numpy().astype(np.float64).reshape(-1, 1)
            labels = out["labels"].detach().cpu().numpy().astype(np.float64).reshape(-1, 1)
            xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
            self.dets[image_id] = np.concatenate([xywh, scores, labels], axis=1)

    def state(self) -> dict[str, Any]:
        return {"images": self.images, "gt": self.gt, "dets": self.dets}

    def merge(self, states: Sequence[dict[str, Any]]) -> None:
        images, gt, dets = {}, {}, {}
        for st in states:
            for image_id, info in st["images"].items():
                if image_id in images:  # an image seen twice (padded sampler) counts once
                    continue
                images[image_id], gt[image_id], dets[image_id] = info, st["gt"][image_id], st["dets"][image_id]
        self.images, self.gt, self.dets = images, gt, dets

    def compute(self) -> dict[str, Any]:
        ids = sorted(self.images)
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(self.classes)]
        images = [{"id": i, "width": self.images[i]["width"], "height": self.images[i]["height"]} for i in ids]
        gt, results = [], []
        for i in ids:
            for ann in self.gt[i]:
                # Fresh ids from 1: pycocotools treats an annotation id 0 as "unmatched".
                gt.append({**ann, "id": len(gt) + 1, "image_id": i})
            results += to_coco_results(self.dets[i], i)
        if not ids:
            return {**{name: 0.0 for name in LOGGED}, "coco_stats": {name: 0.0 for name in STAT_NAMES}}
        ev = coco_eval(images, gt, results, categories)
        stats = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}  # -1: no such ground truth
        result: dict[str, Any] = {name: stats[name] for name in LOGGED}
        result["coco_stats"] = stats
        precision = ev.eval["precision"]  # [iou T, recall R, class K, area A, max dets M]
        all_area, most_dets = 0, len(ev.params.maxDets) - 1
        per_class = precision[:, :, :, all_area, most_dets]
        result["per_class_AP"] = {c: _mean_defined(per_class[:, :, k]) for k, c in enumerate(self.classes)}
        result["per_class_AP50"] = {c: _mean_defined(per_class[0, :, k]) for k, c in enumerate(self.classes)}
        result["pr_curve"] = {
            "recall": [float(r) for r in ev.params.recThrs],
            "classes": self.classes,
            "precision_iou50": per_class[0].T.round(4).tolist(),  # [class][recall]; -1 = no ground truth
            "precision_iou50_95": np.where(per_class.min(axis=0) > -1, per_class.mean(axis=0), -1).T.round(4).tolist(),
        }
        result["samples"] = [self._sample(i) for i in ids[:SAMPLE_IMAGES]]
        return result

    def _sample(self, image_id: int) -> dict[str, Any]:
        """One image's boxes for the visuals: ground truth and confident predictions."""
        dets = self.dets[image_id]
        dets = dets[dets[:, 4] >= SAMPLE_MIN_SCORE][:50]
        return {"image_id": image_id, "file": self.images[image_id]["file"],
                "gt": [[*a["bbox"], a["category_id"], a["iscrowd"]] for a in self.gt[image_id]],
                "pred": dets.round(2).tolist()}
