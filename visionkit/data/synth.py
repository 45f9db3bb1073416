"""The built-in "shapes" data: deterministic by seed, written as real files in standard formats.

Tests and demos read these files through the same loaders as real data, so a demo that works
proves the loaders, not a shortcut. Two layouts:

* ``classification``: one shape per image, ImageFolder (``train/<class>/*.png``, ``val/...``).
* ``scenes``: 1-4 shapes per image; COCO instances JSON (boxes + RLE masks) in
  ``annotations/instances_<split>.json``, images in ``images/<split>/``, and semantic masks
  (class index per pixel, 0 = background) in ``masks/<split>/`` for segmentation.

The class is the shape, never the colour: colours, sizes, positions and backgrounds are random.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ["circle", "square", "triangle", "star"]


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "circle":
        n, radii = 48, [r]
    elif kind == "square":
        n, radii, angle = 4, [r], angle + math.pi / 4
    elif kind == "triangle":
        n, radii = 3, [r]
    elif kind == "star":
        n, radii = 10, [r, r * 0.45]
    else:  # pragma: no cover - CLASSES is closed
        raise ValueError(kind)
    return [
        (cx + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / n),
         cy + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / n))
        for i in range(n)
    ]


def _background(rng: np.random.Generator, size: int, noise: float = 12.0, spread: float = 255.0) -> Image.Image:
    """A smooth random gradient with noise, so the model must find edges, not flat colour."""
    a = rng.uniform(0, 255, 3)
    b = np.clip(a + rng.uniform(-spread, spread, 3), 0, 255)
    t = np.linspace(0, 1, size)[None, :, None]
    if rng.random() < 0.5:
        t = t.transpose(1, 0, 2)
    img = a * (1 - t) + b * t + rng.normal(0, noise, (size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _colour(rng: np.random.Generator, avoid: Image.Image, poly, contrast: float = 120) -> tuple[int, int, int]:
    """A colour that stands out from the background under the shape."""
    xs, ys = zip(*poly)
    cx, cy = int(np.clip(np.mean(xs), 0, avoid.width - 1)), int(np.clip(np.mean(ys), 0, avoid.height - 1))
    bg = np.array(avoid.getpixel((cx, cy)), dtype=float)
    for _ in range(20):
        c = rng.uniform(0, 255, 3)
        if np.abs(c - bg).sum() >= contrast:
            break
    return tuple(int(v) for v in c)


def classification(out: Path, num_train: int = 1600, num_val: int = 400, size: int = 32, seed: int = 0) -> Path:
    out = Path(out)
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        for name in CLASSES:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            kind = CLASSES[i % len(CLASSES)]
            img = _background(rng, size, noise=6.0, spread=60.0)
            r = rng.uniform(0.22, 0.45) * size
            cx, cy = rng.uniform(r, size - r, 2)
            poly = _polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi))
            ImageDraw.Draw(img).polygon(poly, fill=_colour(rng, img, poly, contrast=200))
            if rng.random() < 0.2:
                img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
            img.save(out / split / kind / f"{split}_{i:05d}.png")
    return out


#: the detection layouts ``scenes`` writes (see README "Bring your own data")
SCENE_FORMATS = ("coco", "yolo", "voc")


def scenes(out: Path, num_train: int = 400, num_val: int = 100, size: int = 128, seed: int = 0,
           max_shapes: int = 4, format: str = "coco") -> Path:
    """``format``: coco (instances JSON + semantic mask PNGs), yolo (Ultralytics txt labels and
    data.yaml) or voc (Pascal VOC XML); the same images and boxes for the same seed."""
    from pycocotools import mask as mask_utils

    if format not in SCENE_FORMATS:
        raise ValueError(f"format {format!r}: expected one of {', '.join(SCENE_FORMATS)}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    ann_id = 1
    for split, count in (("train", num_train), ("val", num_val)):
        image_dir = out / ("JPEGImages" if format == "voc" else "images" / Path(split))
        image_dir.mkdir(parents=True, exist_ok=True)
        if format == "coco":
            (out / "masks" / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            img = _background(rng, size)
            instance_map = np.zeros((size, size), dtype=np.int32)  # 0 = background, k = k-th shape
            semantic = np.zeros((size, size), dtype=np.uint8)
            kinds = []
            placed: list[tuple[float, float, float]] = []
            for k in range(1, int(rng.integers(1, max_shapes + 1)) + 1):
                for _ in range(30):  # keep shapes mostly apart so every one stays visible
                    r = rng.uniform(0.08, 0.2) * size
                    cx, cy = rng.uniform(r, size - r, 2)
                    if all(math.hypot(cx - x, cy - y) > 0.8 * (r + rr) for x, y, rr in placed):
                        break
                placed.append((cx, cy, r))
                kind = CLASSES[int(rng.integers(len(CLASSES)))]
                poly = _polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi))
                ImageDraw.Draw(img).polygon(poly, fill=_colour(rng, img, poly))
                layer = Image.new("L", (size, size), 0)
                ImageDraw.Draw(layer).polygon(poly, fill=1)
                inside = np.array(layer, dtype=bool)
                instance_map[inside] = k
                semantic[inside] = CLASSES.index(kind) + 1
                kinds.append(kind)
            file_name = f"{split}_{i:05d}.png"
            img.save(image_dir / file_name)
            if format == "coco":
                Image.fromarray(semantic).save(out / "masks" / split / file_name)
            image_id = i + 1
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
            for k, kind in enumerate(kinds, start=1):
                visible = instance_map == k
                if visible.sum() < 16:
                    continue  # fully hidden by later shapes: not annotated, as a labeller would
                rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
                x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
                rle["counts"] = rle["counts"].decode("ascii")
                annotations.append({
                    "id": ann_id, "image_id": image_id, "category_id": CLASSES.index(kind) + 1,
                    "bbox": [x, y, w, h], "area": float(visible.sum()), "iscrowd": 0,
                    "segmentation": rle,
                })
                ann_id += 1
        coco = {"images": images, "annotations": annotations, "categories": categories}
        if format == "coco":
            (out / "annotations").mkdir(parents=True, exist_ok=True)
            (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        else:
            _write_other(out, split, coco, format)
    if format == "coco":
        (out / "classes.txt").write_text("\n".join(["background", *CLASSES]) + "\n")
    elif format == "yolo":
        (out / "data.yaml").write_text("# written by visionkit data synth scenes --format yolo\n"
                                       "path: .\ntrain: images/train\nval: images/val\n"
                                       f"names: [{', '.join(CLASSES)}]\n")
    return out


def _write_other(out: Path, split: str, coco: dict, format: str) -> None:
    """One split's boxes in YOLO or VOC files (the detection plugin's own writers)."""
    from visionkit_plugins.detection import voc, yolo

    per_image: dict[int, list[dict]] = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        per_image[ann["image_id"]].append(ann)
    ids = []
    for img in coco["images"]:
        anns = per_image[img["id"]]
        stem = Path(img["file_name"]).stem
        if format == "yolo":
            yolo.write_labels(out / "labels" / split / f"{stem}.txt",
                              [(a["category_id"] - 1, a["bbox"]) for a in anns], img["width"], img["height"])
        else:
            voc.write_annotation(out / "Annotations" / f"{stem}.xml", img["file_name"], img["width"], img["height"],
                                 [(CLASSES[a["category_id"] - 1], a["bbox"]) for a in anns])
            ids.append(stem)
    if format == "voc":
        (out / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
