"""Detection's part of report.html: PR curves, per-class AP, and validation images with the
predicted boxes beside the true ones, worst first.

Curves and APs come from the best epoch's COCO evaluation (eval_best.json); the images from
running checkpoints/best.pt on up to :data:`SCANNED` validation images spread over the split,
here, ranked by how many objects the model misses, misnames or invents.
"""

from __future__ import annotations

import math
from typing import Any

from visionkit.errors import UserError
from visionkit.report import ReportSection, blocks
from visionkit.report.charts import Series, line_chart

from .metric import SAMPLE_MIN_SCORE, STAT_NAMES
from .visuals import _iou, best_per_object

SCANNED = 48
SHOWN = 8
#: a prediction and a true box are the same object from this IoU (COCO's AP50 criterion)
MATCH_IOU = 0.5
#: images are drawn with their longest side at least / at most this many pixels
MIN_SIDE, MAX_SIDE = 256, 512
#: classes up to which each gets its own PR curve (beyond: their mean)
CURVES_MAX = 10

TRUE_COLOUR, PRED_COLOUR, WRONG_COLOUR = (0, 170, 0), (220, 30, 30), (255, 140, 0)


def report_sections(run) -> list[ReportSection]:
    sections = []
    best = run.best
    if best and "pr_curve" in best:
        sections.append(ReportSection("Precision and recall", _pr_curves(best) + _ap_table(best)))
    sections.append(ReportSection("Validation images: predicted and true boxes, worst first", _images(run)))
    return sections


def _pr_curves(result: dict[str, Any]) -> str:
    pr = result["pr_curve"]
    recall = pr["recall"]
    charts = []
    for key, title, table in (("precision_iou50", "precision-recall at IoU 0.50", "per_class_AP50"),
                              ("precision_iou50_95", "precision-recall, mean over IoU 0.50:0.95", "per_class_AP")):
        rows = [(name, precision) for name, precision in zip(pr["classes"], pr[key]) if min(precision) >= 0]
        if not rows:
            continue
        aps = result.get(table, {})
        if len(rows) <= CURVES_MAX:
            series = [Series(f"{name} (AP {aps.get(name, 0.0):.3f})", list(zip(recall, precision))) for name, precision in rows]
        else:  # one line per class would be unreadable: their mean
            mean = [sum(p[i] for _, p in rows) / len(rows) for i in range(len(recall))]
            series = [Series(f"mean of {len(rows)} classes", list(zip(recall, mean)))]
        charts.append(line_chart(series, title, x_label="recall", y_label="precision", integer_x=False,
                                 x_range=(0.0, 1.0), y_range=(0.0, 1.0)))
    note = blocks.note(f"Best epoch ({result['epoch'] + 1}), every validation image, COCO evaluation "
                       "(pycocotools, up to 100 detections per image).")
    return note + blocks.charts(charts)


def _ap_table(result: dict[str, Any]) -> str:
    names = result["pr_curve"]["classes"]
    ap, ap50 = result.get("per_class_AP", {}), result.get("per_class_AP50", {})

    def shown(value):
        return None if value is None or value < 0 else float(value)

    rows = [(name, shown(ap.get(name)), shown(ap50.get(name))) for name in names]
    if len(rows) > 20:
        rows.sort(key=lambda r: (r[1] is None, r[1] or 0.0))
    out = [blocks.heading("Average precision per class" + (", worst first" if len(rows) > 20 else "")),
           blocks.table(["class", "AP (IoU 0.50:0.95)", "AP50"], rows, numeric=[False, True, True])]
    if any(r[1] is None for r in rows):
        out.append(blocks.note("\u2013: no object of this class in the validation set."))
    stats = result.get("coco_stats") or {}
    if stats:
        table = blocks.table(["COCO statistic", "value"], [(name, shown(stats.get(name))) for name in STAT_NAMES],
                             numeric=[False, True])
        out.append(blocks.details("All twelve COCO statistics (\u2013: no object of that size)", table))
    return "".join(out)


def _xywh(box) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def judge(gt: list[dict[str, Any]], preds: list[list[float]]) -> dict[str, Any]:
    """Matches the shown predictions (``x, y, w, h, score, label``) to the true boxes: each
    prediction, best score first, takes the unmatched true box it overlaps most (IoU >= 0.5).
    Same class: found; another class: misnamed; none: false. Unmatched true boxes: missed.
    Crowd regions are neither found nor missed, and predictions on them are not false."""
    real = [g for g in gt if not g.get("iscrowd")]
    crowd = [g for g in gt if g.get("iscrowd")]
    taken: set[int] = set()
    found = misnamed = false = 0
    verdicts = []
    for p in sorted(preds, key=lambda r: -r[4]):
        best, best_iou = None, MATCH_IOU
        for k, g in enumerate(real):
            iou = _iou(p, g["bbox"])
            if k not in taken and iou >= best_iou:
                best, best_iou = k, iou
        if best is None:
            on_crowd = any(_iou(p, g["bbox"]) >= MATCH_IOU for g in crowd)
            false += not on_crowd
            verdicts.append((p, "crowd" if on_crowd else "false"))
            continue
        taken.add(best)
        same = int(p[5]) == int(real[best]["category_id"])
        found += same
        misnamed += not same
        verdicts.append((p, "found" if same else "misnamed"))
    missed = len(real) - len(taken)
    return {"objects": len(real), "found": found, "misnamed": misnamed, "false": false, "missed": missed,
            "errors": misnamed + false + missed, "verdicts": verdicts}


def draw(file: str, gt: list[dict[str, Any]], verdicts: list, classes: list[str]):
    """The image with true boxes (green, class above) and predictions (red, or orange when the
    box is right but the class is not; class and score below the box)."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(file) as img:
        picture = img.convert("RGB")
    side = max(picture.size)
    scale = math.ceil(MIN_SIDE / side) if side < MIN_SIDE else (MAX_SIDE / side if side > MAX_SIDE else 1)
    if scale != 1:
        size = (round(picture.width * scale), round(picture.height * scale))
        picture = picture.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR)
    canvas = ImageDraw.Draw(picture)
    font = ImageFont.load_default()

    def name(label: int) -> str:
        return classes[label - 1] if 0 < label <= len(classes) else str(label)

    def box(xywh, colour, text, below: bool, width: int) -> None:
        x, y, w, h = (v * scale for v in xywh)
        canvas.rectangle([x, y, x + w, y + h], outline=colour, width=width)
        left, top, right, bottom = canvas.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        tx = min(max(0, x), max(0, picture.width - tw))
        ty = y + h if below else y - th
        ty = min(max(0, ty), max(0, picture.height - th))
        canvas.rectangle([tx, ty, tx + tw, ty + th], fill=colour)
        canvas.text((tx + 2, ty + 2 - top), text, fill=(255, 255, 255), font=font)

    for g in gt:
        box(g["bbox"], TRUE_COLOUR, name(int(g["category_id"])) + (" (crowd)" if g.get("iscrowd") else ""),
            below=False, width=1 if g.get("iscrowd") else 2)
    for p, verdict in verdicts:
        colour = WRONG_COLOUR if verdict == "misnamed" else PRED_COLOUR
        box(p[:4], colour, f"{name(int(p[5]))} {p[4]:.2f}", below=True, width=2)
    return picture


def _caption(judged: dict[str, Any], file: str) -> str:
    from pathlib import Path

    parts = [f"{judged['found']} of {judged['objects']} found"]
    for key, word in (("missed", "missed"), ("misnamed", "wrong class"), ("false", "false")):
        if judged[key]:
            parts.append(f"{judged[key]} {word}")
    return f"{', '.join(parts)}<br><small>{blocks.esc(Path(file).name)}</small>"


def _images(run) -> str:
    classes = run.classes
    scored = []
    try:
        for indices, batch, outputs in run.predictions(SCANNED):
            for index, target, out in zip(indices, batch[1], outputs):
                preds = [[*_xywh(b), float(s), int(lab)] for b, s, lab in
                         zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist())]
                shown = best_per_object(preds, min_score=SAMPLE_MIN_SCORE)
                judged = judge(target["gt"], shown)
                scored.append((judged, index, target))
        dataset = run.val_dataset
    except UserError as exc:
        return blocks.note(f"Not drawn: {exc}")
    if not scored:
        return blocks.note("The validation set has no images.")
    total = len(dataset)
    where = f"all {total}" if len(scored) == total else f"{len(scored)} of {total} (spread over the split)"
    errors = sum(j["errors"] for j, _, _ in scored)
    objects = sum(j["objects"] for j, _, _ in scored)
    found = sum(j["found"] for j, _, _ in scored)
    summary = (f"checkpoints/best.pt (epoch {run.checkpoint.epoch + 1}) on {where} validation images: "
               f"{found} of {objects} objects found, {errors} error(s) (missed, wrong class or false), counting "
               f"the best-scoring box per object with score \u2265 {SAMPLE_MIN_SCORE} at IoU \u2265 {MATCH_IOU}.")
    scored.sort(key=lambda s: (-s[0]["errors"], s[1]))
    figures = []
    for judged, index, target in scored[:SHOWN]:
        picture = draw(target["file"], target["gt"], judged["verdicts"], classes)
        figures.append(blocks.figure(blocks.img(picture, f"validation image {index} with boxes"),
                                     caption_html=_caption(judged, target["file"])))
    legend = blocks.swatches([("true box", TRUE_COLOUR), ("prediction", PRED_COLOUR),
                              ("right box, wrong class", WRONG_COLOUR)])
    return blocks.paragraph(summary) + legend + blocks.gallery(figures, wide=True)
