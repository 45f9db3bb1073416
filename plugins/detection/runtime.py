"""Detection at inference: the graph's boxes (NMS is inside it) mapped back to the original
image, filtered by score; ``predict`` writes COCO results (numpy and Pillow only: a deployment
imports this without torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visionkit.runtime import Option, PredictionWriter, TaskRuntime
from visionkit.runtime.tasks import font, palette


class DetectionRuntime(TaskRuntime):
    """Boxes after NMS come out of the graph; here they are mapped back to the original image."""

    name = "detection"
    outputs = ("boxes", "scores", "labels", "num_detections")

    def options(self, meta):
        exported = meta.postprocess.get("score_thresh")
        kept = f"; the graph keeps boxes from {exported:g}" if isinstance(exported, (int, float)) else ""
        return [Option("score_thresh", float, None, f"drop boxes below this score (default: keep all{kept})",
                       min=0.0, max=1.0),
                Option("draw_thresh", float, 0.3, "--draw: draw boxes from this score", min=0.0, max=1.0)]

    def postprocess(self, outputs, image, meta, options):
        n = int(outputs["num_detections"].reshape(-1)[0])
        boxes = outputs["boxes"].reshape(-1, 4)[:n].astype(np.float64)
        scores = outputs["scores"].reshape(-1)[:n].astype(np.float64)
        labels = outputs["labels"].reshape(-1)[:n].astype(np.int64)
        (h0, w0), (h1, w1) = image.orig_size, image.size
        if (h0, w0) != (h1, w1):  # undo the runtime's resize, as the plugin's predict() does
            boxes = boxes * np.array([w0 / w1, h0 / h1, w0 / w1, h0 / h1])
        keep = scores >= (options["score_thresh"] or 0.0)
        cats = meta.category_ids or list(range(1, len(meta.classes) + 1))
        dets = []
        for (x0, y0, x1, y1), score, label in zip(boxes[keep].tolist(), scores[keep].tolist(), labels[keep].tolist()):
            dets.append({"bbox": [x0, y0, x1 - x0, y1 - y0], "score": score, "label": label,
                         "class": meta.classes[label], "category_id": int(cats[label])})
        return {"file": image.name, "width": w0, "height": h0, "detections": dets}

    def draw(self, image, result, meta, options):
        from PIL import Image, ImageDraw

        scale = max(1, 384 // max(image.shape[:2]))
        pil = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.BILINEAR)
        draw = ImageDraw.Draw(pil)
        face = font(max(10, 11 * scale // 2))
        colours = palette(len(meta.classes) + 1)[1:]
        for det in sorted(result["detections"], key=lambda d: d["score"]):
            if det["score"] < options["draw_thresh"]:
                continue
            x, y, w, h = (v * scale for v in det["bbox"])
            colour = tuple(int(c) for c in colours[det["label"] % len(colours)])
            draw.rectangle((x, y, x + w, y + h), outline=colour, width=max(1, scale))
            text = f"{det['class']} {det['score']:.2f}"
            box = draw.textbbox((x, y), text, font=face)
            draw.rectangle((box[0], box[1] - (box[3] - box[1]) - 2, box[2] + 2, box[1]), fill=colour)
            draw.text((x + 1, y - (box[3] - box[1]) - 2), text, fill=(0, 0, 0), font=face)
        return pil

    def writer(self, meta, out_dir):
        return CocoWriter(self, meta, out_dir)


class CocoWriter(PredictionWriter):
    """COCO results in ``predictions.json`` (``image_id``, ``category_id``, ``bbox`` [x, y, w, h],
    ``score``), and ``images.json`` naming each image id's file (ids count from 1)."""

    def __init__(self, runtime, meta, out_dir):
        super().__init__(runtime, meta, out_dir)
        self.images: list[dict] = []

    def add(self, index: int, path: Path, stem: str, result):
        self.images.append({"id": index + 1, "file_name": str(path), "width": result["width"],
                            "height": result["height"]})
        self.records += [{"image_id": index + 1, "category_id": d["category_id"],
                          "bbox": [round(v, 3) for v in d["bbox"]], "score": round(d["score"], 5),
                          "class": d["class"]} for d in result["detections"]]

    def close(self):
        return [*super().close(), self.write_json("images.json", self.images)]
