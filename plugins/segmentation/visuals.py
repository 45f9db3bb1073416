"""Plots from an evaluation: overlays of ground truth and prediction, per-class IoU, confusion.

Reads only the JSON-able result of :meth:`SegmentationMetric.compute`, so the same plots can be
drawn later from ``eval_best.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from visionkit.runtime.tasks import palette  # one colour map for plots, predict and serve

from .data import IGNORE_INDEX
from .metric import decode_sample


def overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Classes tinted over the image; background (0) left clear, ignore pixels greyed."""
    out = image.astype(np.float32).copy()
    labelled = (mask > 0) & (mask < len(colours))
    out[labelled] = (1 - alpha) * out[labelled] + alpha * colours[mask[labelled]]
    ignored = mask == IGNORE_INDEX
    out[ignored] = 0.5 * out[ignored] + 0.5 * 200
    return out.clip(0, 255).astype(np.uint8)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_samples(samples: list[dict[str, str]], classes: list[str], path: Path) -> Path:
    """Rows of [image | ground truth | prediction], composed with PIL: matplotlib took seconds
    for this grid, on the rank that every other worker waits for."""
    from PIL import Image, ImageDraw

    colours = palette(len(classes))
    rows = []
    for sample in samples:
        image, target, pred = (decode_sample(sample[k]) for k in ("image", "target", "pred"))
        scale = max(1, 256 // max(image.shape[:2]))  # small images drawn 2x, for the eye
        tiles = [image, overlay(image, target, colours), overlay(image, pred, colours)]
        tiles = [np.kron(t, np.ones((scale, scale, 1), dtype=np.uint8)) for t in tiles]
        gap = np.full((tiles[0].shape[0], 6, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    header, legend = 16, 18
    grid = Image.new("RGB", (width, header + sum(r.shape[0] for r in rows) + legend), "white")
    y = header
    for r in rows:
        grid.paste(Image.fromarray(r), (0, y))
        y += r.shape[0]
    draw = ImageDraw.Draw(grid)
    tile_w = (rows[0].shape[1] - 12) // 3 if rows else 0
    for k, title in enumerate(("image", "ground truth", "prediction")):
        draw.text((k * (tile_w + 6) + 4, 2), title, fill="black")
    x = 4
    for i, name in enumerate(classes[1:], start=1):
        draw.rectangle((x, y + 4, x + 10, y + 14), fill=tuple(int(c) for c in colours[i]))
        draw.text((x + 14, y + 3), name, fill="black")
        x += 14 + int(draw.textlength(name)) + 12
    grid.save(path)
    return path


def plot_per_class_iou(result: dict[str, Any], classes: list[str], path: Path) -> Path:
    plt = _pyplot()
    ious = result["IoU_per_class"]
    values = [v if v is not None else 0.0 for v in ious]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(classes) + 1.5), 3.2))
    bars = ax.bar(range(len(classes)), values, color=palette(len(classes)) / 255, edgecolor="black", linewidth=0.5)
    for bar, v in zip(bars, ious):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, "n/a" if v is None else f"{v:.2f}",
                ha="center", va="bottom", fontsize=7)
    ax.axhline(result["mIoU"], color="grey", linestyle="--", linewidth=1, label=f"mIoU {result['mIoU']:.3f}")
    ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 6 else 0, ha="right" if len(classes) > 6 else "center", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("IoU")
    ax.set_title("per-class IoU", fontsize=9)
    if None in ious:
        fig.text(0.01, 0.01, "n/a: in neither ground truth nor prediction (left out of mIoU)", fontsize=7)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(result: dict[str, Any], classes: list[str], path: Path) -> Path:
    """Rows normalised: where each true class's pixels went."""
    plt = _pyplot()
    cm = np.asarray(result["confusion"], dtype=np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = max(3.5, 0.4 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 12:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_visuals(result: dict[str, Any], classes: list[str], out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_per_class_iou(result, classes, out_dir / "per_class_iou.png"),
               plot_confusion(result, classes, out_dir / "confusion_matrix.png")]
    if result.get("samples"):
        written.append(plot_samples(result["samples"], classes, out_dir / "val_samples.png"))
    return written
