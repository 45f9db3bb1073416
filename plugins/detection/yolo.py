"""YOLO txt labels in the Ultralytics layout, read into the records the COCO reader makes.

::

    data.yaml                 names: [cat, dog] (or {0: cat, 1: dog}), train: images/train, val: images/val
    images/train/a.jpg        path: (optional) the dataset folder; relative paths are against data.yaml's folder
    labels/train/a.txt        one object per line: class x_center y_center width height (fractions of the image)

An image's label file is its path with the last ``/images/`` replaced by ``/labels/`` and the
suffix by ``.txt`` (Ultralytics' rule); an image without one has no objects. ``train``/``val``
may each be a folder (searched recursively), a ``.txt`` file listing image paths, or a list of
those. A line with more than 5 values is a polygon (``class x1 y1 x2 y2 ...``, Ultralytics'
segment labels): its box is the polygon's extent. YOLO files give no image size, so every
image's header is read (in parallel): a corrupt or empty image fails here, naming the file.

A bad line stops the run with one line naming the file, the line and the value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from visionkit.data.images import IMAGE_SUFFIXES
from visionkit.datacheck.images import header_sizes
from visionkit.errors import DataError

from .coco import CocoSplit, RawImage, RawObject, assemble, finite_number, read_text

_FIELDS = ("x_center", "y_center", "width", "height")


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: YOLO data.yaml not found (data.root / data.yolo_yaml)")
    try:
        data = yaml.safe_load(read_text(path, "a YOLO data.yaml"))
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping with names, train and val")
    return data


def read_names(path: Path, data: dict[str, Any] | None = None) -> list[str]:
    """Class names in index order, from ``names`` (a list, or a dict of index -> name)."""
    data = read_yaml(path) if data is None else data
    names = data.get("names")
    if isinstance(names, dict):
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in names):
            raise DataError(f"{path}: field 'names': keys must be class indices 0..N-1, got {sorted(map(str, names))}")
        missing = sorted(set(range(len(names))) - set(names))
        if missing:
            raise DataError(f"{path}: field 'names': indices must be 0..{len(names) - 1} without gaps; "
                            f"missing {missing[0]}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: field 'names': missing or empty; give the class names as a list "
                        "(names: [cat, dog]) or a dict (names: {0: cat, 1: dog})")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: field 'names': {dup!r} appears twice")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise DataError(f"{path}: field 'nc': {nc!r}, but 'names' has {len(names)} entries")
    return names


def _base(path: Path, data: dict[str, Any]) -> Path:
    base = data.get("path")
    if base is None:
        return path.parent
    base = Path(str(base))
    return base if base.is_absolute() else path.parent / base


def image_files(path: Path, data: dict[str, Any], split: str) -> list[Path]:
    """The images of ``split`` (train or val) as data.yaml lists them, sorted, without repeats."""
    if split not in data or data[split] in (None, ""):
        raise DataError(f"{path}: field {split!r}: missing; give the {split} images' folder (e.g. images/{split})")
    entries = data[split] if isinstance(data[split], list) else [data[split]]
    base = _base(path, data)
    files: list[Path] = []
    for entry in entries:
        where = base / str(entry)
        if where.is_dir():
            files += [p for p in where.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        elif where.is_file() and where.suffix == ".txt":
            for n, line in enumerate(read_text(where, "a list of image paths, one per line").splitlines(), start=1):
                line = line.strip()
                if not line:
                    continue
                image = Path(line) if Path(line).is_absolute() else base / line
                if not image.is_file():
                    raise DataError(f"{where} line {n}: image {image} not found")
                files.append(image)
        else:
            raise DataError(f"{path}: field {split!r}: {where} is neither a folder of images nor a .txt list of them")
    files = sorted(set(files))
    if not files:
        raise DataError(f"{path}: field {split!r}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under "
                        f"{', '.join(str(base / str(e)) for e in entries)}")
    return files


def label_file(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``, the suffix ``.txt``."""
    text = str(image)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in text:
        head, tail = text.rsplit(sa, 1)
        text = head + sb + tail
    return Path(text).with_suffix(".txt")


def parse_labels(label: Path, names: list[str], yaml_path: Path) -> list[tuple[int, tuple[float, float, float, float], int]]:
    """``(class, (x_center, y_center, width, height), line number)`` per object, fractions of the image."""
    text = read_text(label, "YOLO labels, one object per line (class x_center y_center width height)")
    objects = []
    for n, line in enumerate(text.splitlines(), start=1):
        values = line.split()
        if not values:
            continue
        where = f"{label} line {n}"
        if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
            raise DataError(f"{where}: expected 5 values (class x_center y_center width height) or a polygon "
                            f"(class x1 y1 x2 y2 x3 y3 ...), got {len(values)}")
        cls = finite_number(values[0], f"{where}: class")
        if cls != int(cls) or not 0 <= cls < len(names):
            raise DataError(f"{where}: class {values[0]} is not in {yaml_path.name} names (0-{len(names) - 1})")
        coords = [finite_number(v, f"{where}: {_FIELDS[i] if len(values) == 5 else f'coordinate {i + 1}'}")
                  for i, v in enumerate(values[1:])]
        for i, v in enumerate(coords):
            if not 0.0 <= v <= 1.0:
                what = _FIELDS[i] if len(values) == 5 else f"coordinate {i + 1}"
                raise DataError(f"{where}: {what} {values[i + 1]} is outside 0..1 (YOLO coordinates are fractions "
                                "of the image's width and height)")
        if len(values) == 5:
            box = tuple(coords)
        else:
            xs, ys = coords[0::2], coords[1::2]
            box = ((min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys))
        objects.append((int(cls), box, n))
    return objects


def read_split(yaml_path: Path, split: str, min_box_size: float, keep_empty: bool) -> CocoSplit:
    data = read_yaml(yaml_path)
    names = read_names(yaml_path, data)
    files = image_files(yaml_path, data, split)
    sizes = header_sizes(files)
    entries, next_id = [], 1
    for image_id, (image, (width, height)) in enumerate(zip(files, sizes), start=1):
        label = label_file(image)
        parsed = parse_labels(label, names, yaml_path) if label.is_file() else []
        objects = []
        for cls, (cx, cy, w, h), line in parsed:
            # Fractions written with 6 decimals land a few 1e-5 px off the pixel grid (a box on the
            # edge would count as clipped): 0.01 px is finer than any annotation.
            x0, y0 = round((cx - w / 2) * width, 2) + 0.0, round((cy - h / 2) * height, 2) + 0.0
            x1, y1 = round((cx + w / 2) * width, 2), round((cy + h / 2) * height, 2)
            objects.append(RawObject(next_id, (x0, y0, x1 - x0, y1 - y0), cls, place=f"line {line}"))
            next_id += 1
        entries.append(RawImage(image_id, image, width, height, objects, None, label))
    records, counts = assemble(entries, min_box_size, keep_empty, f"{yaml_path} ({split})")
    image_dir = Path(os.path.commonpath([str(f.parent) for f in files]))
    return CocoSplit(yaml_path, image_dir, names, list(range(len(names))), records, counts, format="yolo")


def write_labels(path: Path, objects: list[tuple[int, list[float]]], width: int, height: int) -> None:
    """``(class, [x, y, w, h] in pixels)`` -> a YOLO label file (for the synthesiser and tests)."""
    lines = []
    for cls, (x, y, w, h) in objects:
        cx, cy = (x + w / 2) / width, (y + h / 2) / height
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {w / width:.6f} {h / height:.6f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
