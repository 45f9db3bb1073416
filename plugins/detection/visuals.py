"""Plots from a :meth:`DetectionMetric.compute` result: PR curves and validation images.

Everything drawn comes from the result dict itself (lists, file paths), so the plots can be
redrawn later from ``eval_best.json`` alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pr_curve(result: dict[str, Any], out: Path) -> Path:
    plt = _pyplot()
    pr = result["pr_curve"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, key, title in ((axes[0], "precision_iou50", "IoU 0.50"),
                           (axes[1], "precision_iou50_95", "mean over IoU 0.50:0.95")):
        for name, precision, ap in zip(pr["classes"], pr[key], _aps(result, key, pr["classes"])):
            if min(precision) < 0:
                continue  # no ground truth of this class
            ax.plot(pr["recall"], precision, label=f"{name} (AP {ap:.3f})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("precision")
    fig.suptitle(f"mAP {result['mAP']:.3f}   mAP50 {result['mAP50']:.3f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _aps(result: dict[str, Any], key: str, classes: list[str]) -> list[float]:
    table = result.get("per_class_AP50" if key == "precision_iou50" else "per_class_AP", {})
    return [float(table.get(c, -1.0)) for c in classes]


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / max(a[2] * a[3] + b[2] * b[3] - inter, 1e-9)


def best_per_object(preds: list[list[float]], min_score: float = 0.4, iou: float = 0.5) -> list[list[float]]:
    """For display only: the model keeps same-box guesses of other classes (they help mAP), which
    would be drawn over each other; keep the best-scoring box per location."""
    kept: list[list[float]] = []
    for p in sorted(preds, key=lambda r: -r[4]):
        if p[4] >= min_score and all(_iou(p, k) < iou for k in kept):
            kept.append(p)
    return kept


def sample_images(result: dict[str, Any], classes: list[str], out: Path, scale: int = 2) -> Path | None:
    """Ground truth in green, the best prediction per object in red with class and score.

    Drawn with PIL (a few ms; matplotlib took ~1 s, paid on every new best epoch).
    """
    samples = [s for s in result.get("samples", []) if s.get("file") and Path(s["file"]).is_file()]
    if not samples:
        return None
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    tiles = []
    for s in samples:
        with Image.open(s["file"]) as img:
            tile = img.convert("RGB")
        tile = tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(tile)
        for x, y, w, h, _label, crowd in s["gt"]:
            draw.rectangle([x * scale, y * scale, (x + w) * scale, (y + h) * scale], outline=(0, 255, 0),
                           width=1 if crowd else 2)
        for x, y, w, h, score, label in best_per_object(s["pred"]):
            name = classes[int(label) - 1] if 0 < int(label) <= len(classes) else str(int(label))
            box = [x * scale, y * scale, (x + w) * scale, (y + h) * scale]
            draw.rectangle(box, outline=(255, 0, 0), width=1)
            text = f"{name} {score:.2f}"
            left, top, right, bottom = draw.textbbox((box[0], box[1]), text, font=font)
            lift = bottom - top + 2
            draw.rectangle([left, top - lift, right + 2, bottom - lift], fill=(200, 0, 0))
            draw.text((box[0] + 1, box[1] - lift), text, fill=(255, 255, 255), font=font)
        tiles.append(tile)
    cols = min(3, len(tiles))
    rows = -(-len(tiles) // cols)
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    pad, header = 6, 16
    sheet = Image.new("RGB", (cols * (cell_w + pad) + pad, header + rows * (cell_h + pad) + pad), (255, 255, 255))
    ImageDraw.Draw(sheet).text((pad, 2), "validation: ground truth (green), best prediction per object (red)",
                               fill=(0, 0, 0), font=font)
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (pad + (i % cols) * (cell_w + pad), header + pad + (i // cols) * (cell_h + pad)))
    sheet.save(out)
    return out


def write_visuals(result: dict[str, Any], classes: list[str], out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if "pr_curve" in result:
        written.append(pr_curve(result, out_dir / "pr_curve.png"))
    samples = sample_images(result, classes, out_dir / "val_predictions.png")
    if samples is not None:
        written.append(samples)
    return written
