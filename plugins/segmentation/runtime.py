"""Segmentation at inference: the graph's class map -> a mask at the image's size, the classes
present and their pixel shares; ``predict`` writes masks as palette PNGs (numpy and Pillow only:
a deployment imports this without torch). Served, the mask comes as base64 palette-PNG bytes
under ``mask_png`` (TaskRuntime.to_json's default for a 2-D uint8 array)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visionkit.runtime import Option, PredictionWriter, TaskRuntime
from visionkit.runtime.metadata import ModelError
from visionkit.runtime.tasks import mask_png, nearest, palette


class SegmentationRuntime(TaskRuntime):
    """A class per pixel at the input's resolution; back at the original size if it was resized."""

    name = "segmentation"
    outputs = ("class_map",)

    def options(self, meta):
        return [Option("graph_size", bool, False, "masks at the graph's input size (after the recorded resize) "
                       "instead of the image's: what `visionkit eval` scores")]

    def eval_options(self, meta):
        # The metric scores at the validation Resize's size; resizing there and back is not the identity.
        return {"graph_size": True}

    def postprocess(self, outputs, image, meta, options):
        if "class_map" in outputs:
            classes = outputs["class_map"]
        else:  # a foreign model's logits, C x H x W
            classes = outputs[meta.outputs[0]].argmax(axis=0)
        mask = np.asarray(classes, dtype=np.uint8)
        if mask.ndim != 2:  # a foreign graph's output
            raise ModelError(f"segmentation output of shape {mask.shape} per image: expected H x W class indices "
                             "or C x H x W class scores")
        h0, w0 = image.orig_size
        if mask.shape != (h0, w0) and not options["graph_size"]:
            mask = nearest(mask, (h0, w0))
        counts = np.bincount(mask.reshape(-1), minlength=len(meta.classes))[: len(meta.classes)]
        total = max(int(mask.size), 1)
        fractions = {meta.classes[i]: round(float(c) / total, 6) for i, c in enumerate(counts) if c}
        return {"file": image.name, "width": w0, "height": h0, "mask": mask,
                "classes_present": [meta.classes[i] for i, c in enumerate(counts) if c], "pixel_fraction": fractions}

    def draw(self, image, result, meta, options):
        from PIL import Image

        mask = result["mask"]
        if mask.shape != image.shape[:2]:  # graph_size: drawn over the image at the mask's size
            mask = nearest(mask, image.shape[:2])
        colours = palette(len(meta.classes))
        out = image.astype(np.float32).copy()
        labelled = (mask > 0) & (mask < len(colours))
        out[labelled] = 0.45 * out[labelled] + 0.55 * colours[mask[labelled]]
        return Image.fromarray(np.hstack([image, out.clip(0, 255).astype(np.uint8)]))

    def writer(self, meta, out_dir):
        return MaskWriter(self, meta, out_dir)

    def foreign(self, meta):
        return meta  # class indices or per-pixel scores: postprocess reads either


class MaskWriter(PredictionWriter):
    """``masks/<name>.png`` per image (palette PNG, pixel value = class index) and one record per
    image in ``predictions.json`` naming its mask file."""

    def add(self, index: int, path: Path, stem: str, result):
        target = self.out_dir / "masks" / f"{stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(mask_png(result["mask"]))
        self.records.append({**{k: v for k, v in result.items() if k != "mask"},
                             "mask": str(target.relative_to(self.out_dir))})

    def close(self):
        return [*super().close(), "masks/"]
