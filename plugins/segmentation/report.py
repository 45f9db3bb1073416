"""Segmentation's part of report.html: per-class IoU, and image / truth / prediction triplets,
worst images first.

The IoUs come from the best epoch's evaluation (eval_best.json, every validation pixel); the
triplets from running checkpoints/best.pt on up to :data:`SCANNED` validation images spread over
the split, here, ranked by each image's own mean IoU.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from visionkit.errors import UserError
from visionkit.report import ReportSection, blocks

from .data import IGNORE_INDEX
from .visuals import palette

SCANNED = 64
SHOWN = 6
#: each tile of a triplet is drawn with its longest side at least / at most this many pixels
MIN_SIDE, MAX_SIDE = 160, 320


def report_sections(run) -> list[ReportSection]:
    sections = []
    if run.best and "IoU_per_class" in run.best:
        sections.append(ReportSection("IoU per class", _per_class(run.best, run.classes)))
    sections.append(ReportSection("Validation images, worst first", _triplets(run)))
    return sections


def _per_class(result: dict[str, Any], classes: list[str]) -> str:
    colours = palette(len(classes))
    accuracy = result.get("acc_per_class") or [None] * len(classes)
    items = [(name, iou, "" if acc is None else f"pixel accuracy {acc:.3f}")
             for name, iou, acc in zip(classes, result["IoU_per_class"], accuracy)]
    head = (f"Best epoch ({result['epoch'] + 1}), every validation pixel: mIoU {result['mIoU']:.3f}, "
            f"pixel accuracy {result['pixel_acc']:.3f}, mean class accuracy {result['mAcc']:.3f}.")
    out = [blocks.paragraph(head), blocks.bars(items, colours=[tuple(c) for c in colours])]
    if None in result["IoU_per_class"]:
        out.append(blocks.note("n/a: in neither the truth nor the predictions, left out of the mIoU."))
    return "".join(out)


def image_iou(target: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """One image's mean IoU over the classes in its truth or its prediction (ignore pixels out)."""
    valid = target != IGNORE_INDEX
    t, p = target[valid].astype(np.int64), pred[valid].astype(np.int64)
    counts = np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)
    tp = np.diag(counts).astype(np.float64)
    union = counts.sum(0) + counts.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else float("nan")


def tint(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """The mask's class colours over a pale grey copy of the image: on colourful images a tint
    over the pixels themselves hides which class is where. Class 0 stays pale, ignore is white."""
    pale = (image.astype(np.float32).mean(axis=2, keepdims=True) * 0.5 + 110).repeat(3, axis=2)
    labelled = (mask > 0) & (mask < len(colours))
    pale[labelled] = (1 - alpha) * pale[labelled] + alpha * colours[mask[labelled]]
    pale[mask == IGNORE_INDEX] = 255
    return pale.clip(0, 255).astype(np.uint8)


def triplet(image: np.ndarray, target: np.ndarray, pred: np.ndarray, colours: np.ndarray):
    """[image | truth | prediction] in one picture."""
    from PIL import Image

    tiles = [image, tint(image, target, colours), tint(image, pred, colours)]
    h, w = image.shape[:2]
    side = max(h, w)
    if side < MIN_SIDE:
        k = math.ceil(MIN_SIDE / side)
        tiles = [np.kron(t, np.ones((k, k, 1), dtype=np.uint8)) for t in tiles]
    elif side > MAX_SIDE:
        size = (round(w * MAX_SIDE / side), round(h * MAX_SIDE / side))
        tiles = [np.asarray(Image.fromarray(t).resize(size, Image.Resampling.BILINEAR)) for t in tiles]
    gap = np.full((tiles[0].shape[0], 6, 3), 255, dtype=np.uint8)
    return Image.fromarray(np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1))


def _name(dataset, index: int) -> str:
    try:
        return str(dataset.source.name(index))
    except (AttributeError, IndexError, TypeError):
        return f"image {index}"


def _triplets(run) -> str:
    classes = run.classes
    colours = palette(len(classes))
    scored = []
    try:
        for indices, batch, preds in run.predictions(SCANNED):
            images, targets = batch
            for k, index in enumerate(indices):
                image = (images[k].float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
                target, pred = targets[k].numpy().astype(np.uint8), preds[k].numpy().astype(np.uint8)
                scored.append((image_iou(target, pred, len(classes)), index, image, target, pred))
        dataset = run.val_dataset
    except UserError as exc:
        return blocks.note(f"Not drawn: {exc}")
    if not scored:
        return blocks.note("The validation set has no images.")
    total = len(dataset)
    where = f"all {total}" if len(scored) == total else f"{len(scored)} of {total} (spread over the split)"
    defined = [s[0] for s in scored if not math.isnan(s[0])]
    mean = f"; their per-image mean IoU averages {sum(defined) / len(defined):.3f}" if defined else ""
    summary = f"checkpoints/best.pt (epoch {run.checkpoint.epoch + 1}) on {where} validation images{mean}."
    scored.sort(key=lambda s: (math.isnan(s[0]), s[0], s[1]))
    figures = []
    for iou, index, image, target, pred in scored[:SHOWN]:
        name = _name(dataset, index)
        caption = (f"IoU {iou:.3f}" if not math.isnan(iou) else "IoU n/a") + \
                  f" &middot; image, truth, prediction<br><small>{blocks.esc(name)}</small>"
        figures.append(blocks.figure(blocks.img(triplet(image, target, pred, colours), f"{name}: image, truth, prediction"),
                                     caption_html=caption))
    legend = blocks.swatches([(name, tuple(colours[i])) for i, name in enumerate(classes) if i > 0])
    note = blocks.note("Each image's IoU is the mean over the classes in its truth or its prediction; "
                       f"{classes[0]} is pale grey, ignored pixels white.")
    return blocks.paragraph(summary) + note + legend + blocks.gallery(figures, wide=True)
