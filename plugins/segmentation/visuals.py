"""Plots from an evaluation: overlays of ground truth and prediction, per-class IoU, confusion.

Reads only the JSON-able result of :meth:`SegmentationMetric.compute`, so the same plots can be
drawn later from ``eval_best.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .data import IGNORE_INDEX
from .metric import decode_sample


def palette(num_classes: int) -> np.ndarray:
    """Pascal VOC's colour map (bit-interleaved), so VOC classes get their familiar colours."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours[i] = (r, g, b)
    return colours[: max(num_classes, 1)]


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
    plt = _pyplot()
    colours = palette(len(classes))
    rows = len(samples)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows), squeeze=False)
    for row, sample in zip(axes, samples):
        image, target, pred = (decode_sample(sample[k]) for k in ("image", "target", "pred"))
        for ax, picture, title in zip(row, (image, overlay(image, target, colours), overlay(image, pred, colours)),
                                      ("image", "ground truth", "prediction")):
            ax.imshow(picture)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[i] / 255) for i in range(1, len(classes))]
    fig.legend(handles, classes[1:], loc="lower center", ncol=min(6, max(1, len(handles))), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if rows > 1 else 0.12, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
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
