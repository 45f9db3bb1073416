"""What ``visionkit predict`` writes: JSON results, mask PNGs, drawn images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from ..fileio import atomic_write_text
from .model import Model
from .tasks import mask_png, to_json

CHUNK = 64  # images per predict() call: bounded memory on large folders


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """One output name per input: a/x.png, b/x.png and x-2.png must not overwrite each other."""
    used: set[str] = set()
    out = []
    for p in paths:
        stem, n = p.stem, 1
        while stem in used:
            n += 1
            stem = f"{p.stem}-{n}"
        used.add(stem)
        out.append(stem)
    return out


def write_predictions(model: Model, images: Sequence[Path], out_dir: Path, draw: bool = False,
                      batch_size: int = 8, **options: Any) -> dict[str, Any]:
    """Runs ``model`` over ``images`` and writes ``out_dir/predictions.json`` (+ masks/, drawn/).

    classification: one record per image with the top-k classes; detection: COCO results
    (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``) with ``images.json``
    naming each image id's file; segmentation: ``masks/<name>.png`` (palette PNG, pixel value =
    class index) and a record per image.
    """
    out_dir = Path(out_dir)
    task = model.metadata.task
    stems = _unique_stems(images)
    records: list[dict[str, Any]] = []
    coco_images: list[dict[str, Any]] = []
    for start in range(0, len(images), CHUNK):
        chunk = list(images[start:start + CHUNK])
        results = model.predict(chunk, batch_size=batch_size, **options)
        for k, (path, result) in enumerate(zip(chunk, results)):
            n = start + k
            mask_path: Optional[str] = None
            if "mask" in result:
                target = out_dir / "masks" / f"{stems[n]}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(mask_png(result["mask"]))
                mask_path = str(target.relative_to(out_dir))
            if draw:
                target = out_dir / "drawn" / f"{stems[n]}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                model.draw(path, result, **options).save(target)
            if task == "detection":
                coco_images.append({"id": n + 1, "file_name": str(path), "width": result["width"],
                                    "height": result["height"]})
                records += [{"image_id": n + 1, "category_id": d["category_id"], "bbox": [round(v, 3) for v in d["bbox"]],
                             "score": round(d["score"], 5), "class": d["class"]} for d in result["detections"]]
            else:
                records.append(to_json(result, mask_path))
    atomic_write_text(out_dir / "predictions.json", json.dumps(records, indent=1))
    written = ["predictions.json"]
    if task == "detection":
        atomic_write_text(out_dir / "images.json", json.dumps(coco_images, indent=1))
        written.append("images.json")
    if task == "segmentation":
        written.append("masks/")
    if draw:
        written.append("drawn/")
    return {"images": len(images), "records": len(records), "written": written}
