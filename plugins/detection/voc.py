"""Pascal VOC XML, read into the records the COCO reader makes.

::

    Annotations/2008_000008.xml     <size><width>, <height>; per <object>: <name>, <bndbox> xmin ymin xmax ymax, <difficult>
    JPEGImages/2008_000008.jpg      the file <filename> names (else <id>.jpg, .png, ...)
    ImageSets/Main/train.txt        image ids, one per line (val.txt for the val split)

VOC boxes are 1-based inclusive pixel indices: ``xmin - 1, ymin - 1, xmax, ymax`` are the box's
edges in the pixel coordinates the COCO reader uses (detectron2's convention). ``difficult``
objects are trained on and are ignore regions in evaluation, as VOC's own evaluation has them.
Classes are ``data.classes`` when given, else the sorted names found in the train split's files.
A missing or zero ``<size>`` is read from the image's header.

A bad file stops the run with one line naming the file, the object and the field.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

from visionkit.data.images import IMAGE_SUFFIXES
from visionkit.datacheck.images import header_size, parallel_map
from visionkit.errors import DataError

from .coco import CocoSplit, RawImage, RawObject, assemble, finite_number, read_text


def read_ids(list_file: Path) -> list[str]:
    if not list_file.is_file():
        raise DataError(f"{list_file}: VOC image set list not found (data.voc_train_list / data.voc_val_list)")
    ids = [line.split()[0] for line in read_text(list_file, "image ids, one per line").splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{list_file}: the image set list is empty")
    return ids


def _parse(xml_file: Path) -> ET.Element:
    try:
        return ET.parse(xml_file).getroot()
    except FileNotFoundError:
        raise DataError(f"{xml_file}: annotation file not found") from None
    except ET.ParseError as exc:
        raise DataError(f"{xml_file}: not valid XML ({exc})") from None


def _text(node: Optional[ET.Element], tag: str) -> Optional[str]:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text is not None else None


def _number(xml_file: Path, where: str, field: str, text: Optional[str]) -> float:
    if text is None:
        raise DataError(f"{xml_file} {where}: field {field!r} missing")
    return finite_number(text, f"{xml_file} {where}: field {field!r}:")


def object_names(xml_file: Path) -> list[str]:
    return [(_text(obj, "name") or "") for obj in _parse(xml_file).findall("object")]


def _image_file(xml_file: Path, root: ET.Element, image_dir: Path, image_id: str) -> Path:
    name = _text(root, "filename")
    candidates = [image_dir / name] if name else []
    candidates += [image_dir / f"{image_id}{s}" for s in (".jpg", ".jpeg", ".png", *sorted(IMAGE_SUFFIXES))]
    for path in candidates:
        if path.is_file():
            return path
    shown = image_dir / (name or f"{image_id}.jpg")
    raise DataError(f"{xml_file} field 'filename': image file {shown} not found")


def read_classes(annotations: Path, list_file: Path) -> list[str]:
    """The sorted object names of a split (the train split's: the default class list)."""
    files = [annotations / f"{i}.xml" for i in read_ids(list_file)]
    names = sorted({n for found in parallel_map(object_names, files) for n in found if n})
    if not names:
        raise DataError(f"{list_file}: no <object> with a <name> in the split's annotations; "
                        "a detection set needs at least one class")
    return names


def _read_one(xml_file: Path, image_dir: Path, image_id: str, label_of: dict[str, int], classes_from: str):
    root = _parse(xml_file)
    image = _image_file(xml_file, root, image_dir, image_id)
    size = root.find("size")
    width, height = (_text(size, "width"), _text(size, "height"))
    try:
        width, height = int(float(width)), int(float(height))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        width = height = 0
    size_from = f"{xml_file} <size>"
    if width <= 0 or height <= 0:
        width, height = header_size(image)
        size_from = None
    objects = []
    for k, obj in enumerate(root.findall("object"), start=1):
        where = f"object {k}"
        name = _text(obj, "name")
        if not name:
            raise DataError(f"{xml_file} {where}: field 'name' missing")
        if name not in label_of:
            raise DataError(f"{xml_file} {where}: class {name!r} is not {classes_from}; known: "
                            f"{', '.join(label_of)}")
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{xml_file} {where}: field 'bndbox' missing")
        xmin, ymin, xmax, ymax = (_number(xml_file, where, f"bndbox {f}", _text(box, f))
                                  for f in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin:
            raise DataError(f"{xml_file} {where}: bndbox xmax {xmax:g} < xmin {xmin:g}")
        if ymax < ymin:
            raise DataError(f"{xml_file} {where}: bndbox ymax {ymax:g} < ymin {ymin:g}")
        difficult = _text(obj, "difficult") or "0"
        if difficult not in ("0", "1"):
            raise DataError(f"{xml_file} {where}: field 'difficult': expected 0 or 1, got {difficult!r}")
        x0, y0 = xmin - 1, ymin - 1
        objects.append(RawObject(0, (x0, y0, xmax - x0, ymax - y0), label_of[name],
                                 ignore_in_eval=difficult == "1", place=where))
    return image, width, height, objects, size_from


def read_split(annotations: Path, image_dir: Path, list_file: Path, classes: list[str], classes_from: str,
               min_box_size: float, keep_empty: bool) -> CocoSplit:
    ids = read_ids(list_file)
    label_of = {name: k for k, name in enumerate(classes)}
    parsed = parallel_map(lambda i: _read_one(annotations / f"{i}.xml", image_dir, i, label_of, classes_from), ids)
    entries, next_id = [], 1
    for image_id, (name, (image, width, height, objects, size_from)) in enumerate(zip(ids, parsed), start=1):
        for obj in objects:
            obj.id, next_id = next_id, next_id + 1
        entries.append(RawImage(image_id, image, width, height, objects, size_from, annotations / f"{name}.xml"))
    records, counts = assemble(entries, min_box_size, keep_empty, str(list_file))
    return CocoSplit(list_file, image_dir, list(classes), list(range(1, len(classes) + 1)), records, counts,
                     format="voc")


def write_annotation(path: Path, filename: str, width: int, height: int,
                     objects: list[tuple[str, list[float]]]) -> None:
    """``(name, [x, y, w, h] in pixels)`` -> a VOC XML file (for the synthesiser and tests)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for name, (x, y, w, h) in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
            ET.SubElement(box, tag).text = f"{value:g}"
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="unicode")
