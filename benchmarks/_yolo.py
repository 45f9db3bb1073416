"""COCO instances JSON -> the YOLO (Ultralytics) layout, for the detection peer in peers.py.

    python benchmarks/_yolo.py COCO_ROOT OUT_DIR

COCO_ROOT is the layout `visionkit data synth scenes` writes (and configs/detection/shapes.yaml
reads): images/{train,val}/*.png and annotations/instances_{train,val}.json. OUT_DIR gets

    images/{train,val}/*.png          copies of the images (Ultralytics finds a label file by
    labels/{train,val}/*.txt          replacing /images/ with /labels/ in the image's path)
    data.yaml                         path, train, val and names

one label line per box, "class cx cy w h", normalised to the image's width and height, class =
the category's position among the categories sorted by id (the contiguous 1..K labels of
visionkit's detection plugin, minus one). Crowd annotations are left out, as Ultralytics' own COCO
converter does; an image without boxes gets an empty label file (a negative). Only the standard
library: it runs in either venv.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

SPLITS = ("train", "val")


def categories(coco_json: Path) -> list[dict]:
    """The categories in label order (sorted by id)."""
    return sorted(json.loads(Path(coco_json).read_text())["categories"], key=lambda c: c["id"])


def convert(coco_root: Path, out_dir: Path, images: str = "images/{split}",
            annotations: str = "annotations/instances_{split}.json") -> Path:
    """Writes the YOLO layout under ``out_dir``; returns its data.yaml. Idempotent."""
    coco_root, out_dir = Path(coco_root).resolve(), Path(out_dir).resolve()
    names = None
    for split in SPLITS:
        coco = json.loads((coco_root / annotations.format(split=split)).read_text())
        cats = sorted(coco["categories"], key=lambda c: c["id"])
        split_names = [c["name"] for c in cats]
        if names is not None and split_names != names:
            raise SystemExit(f"{split}: categories {split_names} differ from train's {names}")
        names = split_names
        label_of = {c["id"]: k for k, c in enumerate(cats)}
        boxes: dict[int, list[str]] = {img["id"]: [] for img in coco["images"]}
        sizes = {img["id"]: (img["width"], img["height"]) for img in coco["images"]}
        for ann in coco["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            w_img, h_img = sizes[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            x0, y0 = max(0.0, x), max(0.0, y)
            x1, y1 = min(float(w_img), x + w), min(float(h_img), y + h)
            if x1 <= x0 or y1 <= y0:
                continue
            cx, cy = (x0 + x1) / 2 / w_img, (y0 + y1) / 2 / h_img
            boxes[ann["image_id"]].append(
                f"{label_of[ann['category_id']]} {cx:.6f} {cy:.6f} {(x1 - x0) / w_img:.6f} {(y1 - y0) / h_img:.6f}")
        image_dir, label_dir = out_dir / "images" / split, out_dir / "labels" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        source_dir = coco_root / images.format(split=split)
        for img in coco["images"]:
            source, target = source_dir / img["file_name"], image_dir / Path(img["file_name"]).name
            if not target.exists() or target.stat().st_size != source.stat().st_size:
                shutil.copyfile(source, target)
            lines = boxes[img["id"]]
            (label_dir / f"{target.stem}.txt").write_text("".join(f"{line}\n" for line in lines))
        (out_dir / "labels" / f"{split}.cache").unlink(missing_ok=True)  # Ultralytics' label cache
    # data.yaml by hand (JSON strings are valid YAML): no PyYAML needed here
    lines = [f"path: {json.dumps(str(out_dir))}", "train: images/train", "val: images/val", "names:"]
    lines += [f"  {k}: {json.dumps(name)}" for k, name in enumerate(names)]
    data_yaml = out_dir / "data.yaml"
    data_yaml.write_text("\n".join(lines) + "\n")
    return data_yaml


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.split("\n\n")[1])
    print(convert(Path(sys.argv[1]), Path(sys.argv[2])))
