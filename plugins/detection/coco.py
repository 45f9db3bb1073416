"""COCO instances JSON, read directly and checked once, up front.

Every record keeps two views of its boxes:

* training targets: crowd boxes left out, boxes clipped to the image, degenerate ones dropped,
  category ids mapped to contiguous labels ``0..K-1`` (in category-id order);
* evaluation ground truth: every annotation as written (crowd ones included, with their
  ``area``), so the metric scores exactly what pycocotools scores on the file.

A bad annotation stops the run with one line naming the file, the annotation id and the field,
rather than a shape error deep inside a worker an hour later.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visionkit.errors import DataError

log = logging.getLogger("visionkit.detection")


@dataclass
class ImageRecord:
    id: int
    file: Path
    width: int
    height: int
    boxes: np.ndarray  # (n, 4) float32 xyxy in pixels: training targets, cleaned
    labels: np.ndarray  # (n,) int64 in 0..K-1
    gt: list[dict[str, Any]] = field(default_factory=list)  # evaluation ground truth, label space
    #: what states width/height, for messages ("x.json: image id 3", "Annotations/x.xml"); None:
    #: the size was read from the image's own header (YOLO)
    size_from: str | None = None
    #: the image's own annotation file (a VOC XML, a YOLO label file); None for COCO
    annotation: Path | None = None
    #: where each of ``gt``'s objects is written in ``annotation`` ("line 4", "object 2")
    places: list[str] = field(default_factory=list)


@dataclass
class BoxCounts:
    """What cleaning did to the training targets, logged once per split."""

    kept: int = 0
    clipped: int = 0
    degenerate: int = 0  # zero/negative size, or below data.min_box_size after clipping
    outside: int = 0  # entirely outside the image
    crowd: int = 0  # left out of training, kept for evaluation
    empty_images_dropped: int = 0

    def summary(self) -> str:
        return (f"{self.kept} boxes kept, {self.clipped} clipped to the image, {self.degenerate} degenerate "
                f"dropped, {self.outside} outside the image dropped, {self.crowd} crowd (evaluation only), "
                f"{self.empty_images_dropped} images without boxes dropped")


@dataclass
class CocoSplit:
    ann_file: Path
    image_dir: Path
    classes: list[str]
    category_ids: list[int]  # label k <-> category_ids[k]
    records: list[ImageRecord]
    counts: BoxCounts
    format: str = "coco"  # the reader that made it: coco, yolo or voc


def _fail(ann_file: Path, where: str, problem: str) -> DataError:
    return DataError(f"{ann_file}: {where}: {problem}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_categories(ann_file: Path, coco: dict[str, Any]) -> tuple[list[int], list[str]]:
    cats = coco.get("categories")
    if not isinstance(cats, list) or not cats:
        raise _fail(ann_file, "field 'categories'", "missing or empty; a detection set needs at least one category")
    by_id: dict[int, str] = {}
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            raise _fail(ann_file, f"categories[{i}]", "expected {id: int, name: str}")
        if cat["id"] in by_id:
            raise _fail(ann_file, f"categories[{i}] field 'id'", f"category id {cat['id']} appears twice")
        by_id[cat["id"]] = str(cat["name"])
    ids = sorted(by_id)
    return ids, [by_id[i] for i in ids]


def load_json(ann_file: Path) -> dict[str, Any]:
    if not ann_file.is_file():
        raise DataError(f"{ann_file}: annotation file not found (check data.root and the split's annotations path)")
    try:
        coco = json.loads(read_text(ann_file, "a COCO instances JSON file"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{ann_file}: not valid JSON ({exc})") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise DataError(f"{ann_file}: not a COCO instances file (expected 'images' and 'annotations' lists)")
    if not isinstance(coco.get("annotations"), list):
        # Without the key every image would train as background: a file cut short, or an image
        # list (image_info_*.json) given where the instances file belongs.
        got = "missing" if "annotations" not in coco else f"a {type(coco['annotations']).__name__}, not a list"
        raise DataError(f"{ann_file}: field 'annotations': {got}; a COCO instances file lists its boxes there "
                        "(write \"annotations\": [] for a set that truly has no objects)")
    return coco


def read_categories_only(ann_file: Path) -> tuple[list[int], list[str]]:
    """The categories of a (possibly huge) COCO file without building all of its objects.

    Decodes only the value after the top-level ``"categories"`` key; falls back to a full parse
    when the text does not look as expected.
    """
    if not ann_file.is_file():
        return read_categories(ann_file, load_json(ann_file))  # raises the not-found error
    text = read_text(ann_file, "a COCO instances JSON file")
    at = text.rfind('"categories"')
    if at >= 0:
        start = text.find(":", at) + 1
        while start < len(text) and text[start].isspace():
            start += 1
        try:
            value, _ = json.JSONDecoder().raw_decode(text, start)
            return read_categories(ann_file, {"categories": value})
        except (json.JSONDecodeError, DataError, ValueError):
            pass
    return read_categories(ann_file, load_json(ann_file))


def _read_images(ann_file: Path, coco: dict[str, Any]) -> dict[int, dict[str, Any]]:
    images: dict[int, dict[str, Any]] = {}
    for i, img in enumerate(coco["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("id"), int):
            raise _fail(ann_file, f"images[{i}] field 'id'", "missing or not an integer")
        where = f"image id {img['id']}"
        if img["id"] in images:
            raise _fail(ann_file, f"{where} field 'id'", "appears twice in 'images'")
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise _fail(ann_file, f"{where} field 'file_name'", "missing")
        for key in ("width", "height"):
            if not isinstance(img.get(key), int) or img[key] <= 0:
                raise _fail(ann_file, f"{where} field {key!r}", f"expected a positive integer, got {img.get(key)!r}")
        images[img["id"]] = img
    return images


def _check_annotation(ann_file: Path, i: int, ann: Any, images: dict, cat_ids: set[int]) -> None:
    if not isinstance(ann, dict) or not isinstance(ann.get("id"), int):
        raise _fail(ann_file, f"annotations[{i}] field 'id'", "missing or not an integer")
    where = f"annotation id {ann['id']}"
    if ann.get("image_id") not in images:
        raise _fail(ann_file, f"{where} field 'image_id'", f"no image with id {ann.get('image_id')!r} in 'images'")
    if ann.get("category_id") not in cat_ids:
        known = ", ".join(str(c) for c in sorted(cat_ids))
        raise _fail(ann_file, f"{where} field 'category_id'",
                    f"unknown category id {ann.get('category_id')!r} (known: {known})")
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        got = f"{len(bbox)} values" if isinstance(bbox, (list, tuple)) else repr(bbox)
        raise _fail(ann_file, f"{where} field 'bbox'", f"expected 4 numbers [x, y, width, height], got {got}")
    if not all(_number(v) for v in bbox):
        raise _fail(ann_file, f"{where} field 'bbox'", f"expected 4 finite numbers, got {bbox!r}")
    if ann.get("iscrowd", 0) not in (0, 1):
        raise _fail(ann_file, f"{where} field 'iscrowd'", f"expected 0 or 1, got {ann.get('iscrowd')!r}")
    if "area" in ann and not _number(ann["area"]):
        raise _fail(ann_file, f"{where} field 'area'", f"expected a number, got {ann['area']!r}")


def _clean_box(bbox: list[float], width: int, height: int, min_size: float, counts: BoxCounts) -> list[float] | None:
    """xywh -> clipped xyxy, or None (counted) when nothing usable is left."""
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        counts.degenerate += 1
        return None
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        counts.outside += 1
        return None
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        counts.clipped += 1
    if x1 - x0 < min_size or y1 - y0 < min_size:
        counts.degenerate += 1
        return None
    counts.kept += 1
    return [x0, y0, x1, y1]


def read_split(ann_file: Path, image_dir: Path, min_box_size: float, keep_empty: bool,
               categories: tuple[list[int], list[str]] | None = None) -> CocoSplit:
    """Parses and checks ``ann_file``; ``categories`` (from the train split) must match if given."""
    coco = load_json(ann_file)
    cat_ids, names = read_categories(ann_file, coco)
    if categories is not None and (cat_ids, names) != (list(categories[0]), list(categories[1])):
        raise _fail(ann_file, "field 'categories'",
                    f"differs from the train split's ({dict(zip(*categories))} there, {dict(zip(cat_ids, names))} here)")
    label_of = {c: k for k, c in enumerate(cat_ids)}
    images = _read_images(ann_file, coco)
    per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
    known = set(cat_ids)
    for i, ann in enumerate(coco.get("annotations", [])):
        _check_annotation(ann_file, i, ann, images, known)
        per_image[ann["image_id"]].append(ann)

    for image_id, img in images.items():
        path = image_dir / img["file_name"]
        if not path.is_file():
            anns = per_image[image_id]
            who = f"annotation id {anns[0]['id']} (image id {image_id})" if anns else f"image id {image_id} (no annotations)"
            raise _fail(ann_file, f"{who} field 'file_name'", f"image file {path} not found")

    entries = []
    for image_id, img in images.items():
        objects = [RawObject(ann["id"], tuple(float(v) for v in ann["bbox"]), label_of[ann["category_id"]],
                             crowd=int(ann.get("iscrowd", 0)), area=float(ann["area"]) if "area" in ann else None)
                   for ann in per_image[image_id]]
        entries.append(RawImage(image_id, image_dir / img["file_name"], img["width"], img["height"], objects,
                                f"{ann_file}: image id {image_id}"))
    records, counts = assemble(entries, min_box_size, keep_empty, str(ann_file))
    return CocoSplit(ann_file, image_dir, names, cat_ids, records, counts)


@dataclass
class RawObject:
    """One annotated object as a reader found it, before cleaning: what every format parses into."""

    id: int
    xywh: tuple[float, float, float, float]  # pixels, as written (may be outside the image)
    label: int  # 0..K-1
    crowd: int = 0  # left out of training, an ignore region in evaluation (COCO iscrowd)
    ignore_in_eval: bool = False  # trained on, an ignore region in evaluation (VOC difficult)
    area: float | None = None
    place: str | None = None  # where its own annotation file has it ("line 4", "object 2")


@dataclass
class RawImage:
    id: int
    file: Path
    width: int
    height: int
    objects: list[RawObject]
    size_from: str | None = None
    annotation: Path | None = None


def assemble(entries: list[RawImage], min_box_size: float, keep_empty: bool, source: str) -> tuple[list[ImageRecord], BoxCounts]:
    """Raw images -> records with both views of their boxes (see the module's docstring), and
    what cleaning did, logged once for ``source``. Shared by the COCO, YOLO and VOC readers."""
    counts, records = BoxCounts(), []
    for img in entries:
        boxes, labels, gt = [], [], []
        places = [obj.place or f"object {k}" for k, obj in enumerate(img.objects, start=1)]
        for obj in img.objects:
            x, y, w, h = obj.xywh
            gt.append({"id": obj.id, "bbox": [x, y, w, h], "category_id": obj.label + 1,
                       "iscrowd": int(bool(obj.crowd or obj.ignore_in_eval)),
                       "area": obj.area if obj.area is not None else w * h})
            if obj.crowd:
                counts.crowd += 1
                continue
            box = _clean_box(obj.xywh, img.width, img.height, min_box_size, counts)
            if box is not None:
                boxes.append(box)
                labels.append(obj.label)
        if not boxes and not keep_empty:
            counts.empty_images_dropped += 1
            continue
        records.append(ImageRecord(
            id=img.id, file=img.file, width=img.width, height=img.height,
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64), gt=gt, size_from=img.size_from,
            annotation=img.annotation, places=places))
    if counts.clipped or counts.degenerate or counts.outside or counts.empty_images_dropped:
        log.warning("%s: %s", source, counts.summary())
    else:
        log.info("%s: %s", source, counts.summary())
    return records, counts


def read_text(path: Path, expected: str) -> str:
    """A text file a format defines (a JSON, an image list, a label file), as UTF-8 (a leading
    BOM dropped): another encoding or a binary file is one line naming it, not a traceback."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                        f"expected {expected}") from None


def finite_number(text: str, prefix: str) -> float:
    """``text`` as a float, or a DataError ``"{prefix} {text!r} is not a (finite) number"``: the
    YOLO and VOC readers' one wording for a bad coordinate."""
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{prefix} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{prefix} {text!r} is not a finite number")
    return value
