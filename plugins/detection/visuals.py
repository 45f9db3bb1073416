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


def sample_images(result: dict[str, Any], classes: list[str], out: Path) -> Path | None:
    """Ground truth dashed green, predictions solid red with class and score."""
    samples = [s for s in result.get("samples", []) if s.get("file") and Path(s["file"]).is_file()]
    if not samples:
        return None
    from PIL import Image

    plt = _pyplot()
    cols = min(3, len(samples))
    rows = -(-len(samples) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, s in zip(axes.flat, samples):
        with Image.open(s["file"]) as img:
            ax.imshow(img.convert("RGB"))
        for x, y, w, h, label, crowd in s["gt"]:
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, ec="lime", lw=1.2, ls=":" if crowd else "--"))
        for x, y, w, h, score, label in s["pred"]:
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, ec="red", lw=1.2))
            name = classes[int(label) - 1] if 0 < int(label) <= len(classes) else str(int(label))
            ax.text(x, y - 1, f"{name} {score:.2f}", color="white", fontsize=6,
                    bbox={"facecolor": "red", "alpha": 0.7, "pad": 0.5, "lw": 0})
        ax.set_title(f"image {s['image_id']}", fontsize=8)
    fig.suptitle("validation: ground truth (green, dashed) and predictions (red)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
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
