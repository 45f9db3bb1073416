"""``check_data`` for detection: each image's file, stated size and objects, and the boxes that
training clips or drops (named, not just counted as the reader's log line does)."""

from __future__ import annotations

from visionkit.datacheck import Sample, SplitCheck, _examples


def check_data(dataset, split: str) -> SplitCheck:
    coco = dataset.split
    min_size = dataset.min_box_size
    samples, degenerate, outside, clipped = [], [], [], []
    for rec in coco.records:
        labels = []
        for k, ann in enumerate(rec.gt, start=1):
            labels.append(int(ann["category_id"]) - 1)
            if ann["iscrowd"]:
                continue
            x, y, w, h = ann["bbox"]
            if rec.annotation is not None:  # a VOC XML or YOLO label file, and the object's place in it
                name = f"{rec.annotation} {rec.places[k - 1] if rec.places else f'object {k}'}"
            else:
                name = f"{rec.file.name} (annotation id {ann['id']})"
            name += f": [x {x:g}, y {y:g}, w {w:g}, h {h:g}]"
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, rec.width), min(y + h, rec.height)
            if w <= 0 or h <= 0:
                degenerate.append(name)
            elif x1 <= x0 or y1 <= y0:
                outside.append(name)
            elif x1 - x0 < min_size or y1 - y0 < min_size:
                degenerate.append(name)
            elif (x0, y0, x1, y1) != (x, y, x + w, y + h):
                clipped.append(name)
        size = (rec.width, rec.height) if rec.size_from else None  # YOLO: the size came from the header
        samples.append(Sample(rec.file, size, labels, rec.size_from or ""))
    findings = []
    where = f"{coco.ann_file}"
    dropped = "left out of training" if split == "train" else "scored as annotated by evaluation"
    if degenerate:
        findings.append(("warning", f"{where}: {len(degenerate)} degenerate box(es) (no area, or under "
                                    f"data.min_box_size {min_size:g} px inside the image), {dropped}: "
                                    f"{_examples(degenerate)}"))
    if outside:
        findings.append(("warning", f"{where}: {len(outside)} box(es) entirely outside their image, {dropped}: "
                                    f"{_examples(outside)}"))
    if clipped:
        findings.append(("warning", f"{where}: {len(clipped)} box(es) partly outside their image, clipped to it: "
                                    f"{_examples(clipped)}"))
    if coco.counts.empty_images_dropped:
        findings.append(("warning", f"{where}: {coco.counts.empty_images_dropped} image(s) without boxes left out "
                                    "(data.keep_empty_images: false)"))
    return SplitCheck(list(dataset.classes), samples, findings, counts="objects")


def draw_sample(dataset, index: int, augmented: bool):
    """Boxes in a colour per class with the class name above each, on the image as stored or
    after the split's transform (``dataset[index]``, what the loop feeds the model)."""
    from PIL import Image, ImageDraw

    from visionkit.data.images import load_rgb
    from visionkit.datacheck.show import fit, to_uint8
    from visionkit.runtime.tasks import font, palette

    rec = dataset.split.records[index]
    if augmented:
        image, target = dataset[index]
        image = to_uint8(image)
        boxes, labels = target["boxes"].numpy(), target["labels"].numpy() - 1
    else:
        image, boxes, labels = load_rgb(rec.file), rec.boxes, rec.labels
    tile, scale = fit(image)  # a photo drawn smaller, a 32-px scene larger
    pil = Image.fromarray(tile)
    draw = ImageDraw.Draw(pil)
    face = font(max(10, round(5 * scale)))
    colours = palette(len(dataset.classes) + 1)[1:]
    for (x0, y0, x1, y1), label in zip(boxes.tolist(), labels.tolist()):
        colour = tuple(int(c) for c in colours[int(label) % len(colours)])
        left, top = x0 * scale, y0 * scale
        right, bottom = max(left, x1 * scale - 1), max(top, y1 * scale - 1)  # a box under a pixel: a line
        draw.rectangle((left, top, right, bottom), outline=colour, width=max(1, int(scale // 2)))
        text = dataset.classes[int(label)]
        box = draw.textbbox((x0 * scale, y0 * scale), text, font=face)
        lift = box[3] - box[1] + 2
        draw.rectangle((box[0], box[1] - lift, box[2] + 2, box[1]), fill=colour)
        ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        draw.text((x0 * scale + 1, y0 * scale - lift), text, fill=ink, font=face)
    return pil, f"{rec.file.name} ({len(labels)} boxes)"
