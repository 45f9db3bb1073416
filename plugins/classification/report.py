"""Classification's part of report.html: where the model is wrong.

The confusion matrix and per-class accuracy come from the best epoch's evaluation
(eval_best.json, every validation image); the most confidently wrong images from running
checkpoints/best.pt on up to :data:`SCANNED` validation images spread over the split, here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from visionkit.errors import UserError
from visionkit.report import ReportSection, blocks

#: validation images run through the best checkpoint to find its mistakes
SCANNED = 256
#: mistakes shown, most confident first
SHOWN = 12
#: thumbnails: small images are enlarged (whole pixels) to at least this side, large ones shrunk to it
THUMB = 112
#: classes up to which the confusion matrix is a full table; above, the most frequent confusions
MATRIX_MAX = 20


def report_sections(run) -> list[ReportSection]:
    sections = []
    if run.best and "confusion_matrix" in run.best:
        sections.append(ReportSection("Confusion matrix and per-class accuracy", _confusion(run.best, run.classes)))
    sections.append(ReportSection("Most confidently wrong validation images", _mistakes(run)))
    return sections


def _confusion(result: dict[str, Any], classes: list[str]) -> str:
    matrix = np.asarray(result["confusion_matrix"], dtype=np.int64)
    totals = matrix.sum(1)
    out = [blocks.note(f"Best epoch ({result['epoch'] + 1}), all {int(matrix.sum())} validation images. Rows: the "
                       "true class; columns: the prediction; shading: the share of the row.")]
    if len(classes) <= MATRIX_MAX:
        share = matrix / np.maximum(totals[:, None], 1)
        out.append(blocks.heat_table(matrix.tolist(), classes, classes, corner="true \\ predicted", shade=share.tolist()))
    else:
        off = matrix.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(off, axis=None)[::-1][:25]
        rows = [(classes[i], classes[j], int(off[i, j]), f"{off[i, j] / max(totals[i], 1):.1%}")
                for i, j in (np.unravel_index(k, off.shape) for k in order) if off[i, j] > 0]
        out.append(blocks.heading(f"The {len(rows)} most frequent confusions ({len(classes)} classes)"))
        out.append(blocks.table(["true", "predicted", "images", "of the true class"], rows,
                                numeric=[False, False, True, True]))
    per_class = result.get("per_class_accuracy") or []
    items = [(name, acc, f"{int(totals[k])} image{'s' * (int(totals[k]) != 1)}")
             for k, (name, acc) in enumerate(zip(classes, per_class))]
    if len(items) <= MATRIX_MAX:
        out += [blocks.heading("Per-class accuracy"), blocks.bars(items, missing="no image")]
        return "".join(out)
    items.sort(key=lambda item: (item[1] is None, item[1] if item[1] is not None else 0.0))
    out += [blocks.heading(f"Per-class accuracy: the {MATRIX_MAX} worst classes"),
            blocks.bars(items[:MATRIX_MAX], missing="no image"),
            blocks.details(f"All {len(items)} classes, worst first", blocks.bars(items, missing="no image"))]
    return "".join(out)


def thumbnail(image, data) -> "Image.Image":  # noqa: F821
    """A validation tensor as the model saw it (normalisation undone), at a readable size."""
    from PIL import Image

    x = image.detach().float().cpu().numpy()
    channels = x.shape[0]
    mean = np.asarray(data.mean[:channels] if len(data.mean) >= channels else data.mean[:1] * channels, dtype=np.float32)
    std = np.asarray(data.std[:channels] if len(data.std) >= channels else data.std[:1] * channels, dtype=np.float32)
    pixels = ((x * std[:, None, None] + mean[:, None, None]).clip(0, 1) * 255).round().astype(np.uint8)
    picture = Image.fromarray(pixels[0], "L") if channels == 1 else Image.fromarray(pixels.transpose(1, 2, 0), "RGB")
    side = max(picture.size)
    if side < THUMB:
        factor = math.ceil(THUMB / side)
        return picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    if side > 2 * THUMB:
        picture.thumbnail((2 * THUMB, 2 * THUMB), Image.Resampling.BILINEAR)
    return picture


def _name(dataset, index: int) -> str:
    samples = getattr(dataset, "samples", None)
    if samples is not None and index < len(samples) and hasattr(samples[index][0], "name"):
        return samples[index][0].name
    return f"image {index}"


def _mistakes(run) -> str:
    classes = run.classes
    wrong: list[tuple[float, int, int, int, float]] = []  # confidence, index, true, predicted, p(true)
    scanned = 0
    try:
        for indices, batch, logits in run.predictions(SCANNED):
            probs = logits.float().softmax(1)
            confidence, predicted = probs.max(1)
            labels = batch[1]
            for k, index in enumerate(indices):
                scanned += 1
                true, guess = int(labels[k]), int(predicted[k])
                if guess != true:
                    wrong.append((float(confidence[k]), index, true, guess, float(probs[k, true])))
        dataset = run.val_dataset
    except UserError as exc:
        return blocks.note(f"Not drawn: {exc}")
    total = len(dataset)
    where = f"all {total}" if scanned == total else f"{scanned} of {total} (spread over the split)"
    summary = (f"checkpoints/best.pt (epoch {run.checkpoint.epoch + 1}) on {where} validation images: "
               f"{len(wrong)} wrong ({1 - len(wrong) / max(scanned, 1):.1%} right).")
    if not wrong:
        return blocks.paragraph(summary + " Nothing to show.")
    wrong.sort(key=lambda w: (-w[0], w[1]))
    figures = []
    for confidence, index, true, guess, p_true in wrong[:SHOWN]:
        picture = thumbnail(dataset[index][0], run.sections.data)
        caption = (f"<b>{blocks.esc(classes[guess])}</b> {confidence:.2f} &middot; true: "
                   f"<b>{blocks.esc(classes[true])}</b> {p_true:.2f}<br><small>{blocks.esc(_name(dataset, index))}</small>")
        alt = f"{_name(dataset, index)}: predicted {classes[guess]}, true {classes[true]}"
        figures.append(blocks.figure(blocks.img(picture, alt), caption_html=caption))
    shown = f"The {min(SHOWN, len(wrong))} most confident mistakes: the prediction and its probability, then the " \
            "true class and the probability the model gave it."
    return blocks.paragraph(summary) + blocks.note(shown) + blocks.gallery(figures)
