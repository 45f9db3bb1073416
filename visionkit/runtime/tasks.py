"""Per-task post-processing and drawing of graph outputs, with numpy and Pillow only.

The built-in tasks are here; a third-party task plugin adds its own torch-free module through
the ``visionkit.runtime`` entry-point group (``mytask = "my_package.runtime:MyTaskRuntime"``),
so that its exported models run in the same runtime.

A result is a dict that ``json.dumps`` accepts, except segmentation's ``mask`` (a uint8 numpy
array): see :func:`visionkit.runtime.to_json`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import numpy as np

from ..errors import UserError
from .metadata import Metadata, ModelError
from .preprocess import Prepared


class TaskRuntime:
    """One task's outputs -> results, and results -> a picture."""

    name: ClassVar[str]
    #: graph outputs this task needs, by name
    outputs: ClassVar[tuple[str, ...]] = ()

    def postprocess(self, outputs: dict[str, np.ndarray], image: Prepared, meta: Metadata,
                    options: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def draw(self, image: np.ndarray, result: dict[str, Any], meta: Metadata, options: dict[str, Any]):
        """A PIL image showing ``result`` on ``image`` (HxWx3 uint8)."""
        raise NotImplementedError


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size font
        return ImageFont.load_default()


def palette(num_classes: int) -> np.ndarray:
    """Pascal VOC's colour map (bit-interleaved): VOC classes get their familiar colours, in the
    segmentation plugin's plots as in predict and serve."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours[i] = (r, g, b)
    return colours[: max(num_classes, 1)]


class Classification(TaskRuntime):
    name = "classification"
    outputs = ("probabilities",)

    def postprocess(self, outputs, image, meta, options):
        scores = outputs[meta.outputs[0] if meta.outputs else "probabilities"].astype(np.float64).reshape(-1)
        if len(scores) != len(meta.classes):
            raise ModelError(f"the model gives {len(scores)} scores per image but its metadata names "
                             f"{len(meta.classes)} classes")
        if meta.postprocess.get("softmax"):
            scores = _softmax(scores)
        k = max(1, min(int(options.get("top_k") or 5), len(scores)))
        order = np.argsort(-scores, kind="stable")[:k]
        top = [{"class": meta.classes[i], "index": int(i), "probability": float(scores[i])} for i in order]
        return {"file": image.name, "class": top[0]["class"], "index": top[0]["index"],
                "probability": top[0]["probability"], "top_k": top}

    def draw(self, image, result, meta, options):
        from PIL import Image, ImageDraw

        scale = max(1, 256 // max(image.shape[:2]))  # tiny images (32 px) are enlarged to be readable
        pil = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
        font = _font(max(10, pil.height // 14))
        text = f"{result['class']} {result['probability']:.2f}"
        draw = ImageDraw.Draw(pil)
        box = draw.textbbox((4, 4), text, font=font)
        draw.rectangle((box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3), fill=(0, 0, 0))
        draw.text((4, 4), text, fill=(255, 255, 255), font=font)
        return pil


class Detection(TaskRuntime):
    """Boxes after NMS come out of the graph; here they are mapped back to the original image."""

    name = "detection"
    outputs = ("boxes", "scores", "labels", "num_detections")

    def postprocess(self, outputs, image, meta, options):
        n = int(outputs["num_detections"].reshape(-1)[0])
        boxes = outputs["boxes"].reshape(-1, 4)[:n].astype(np.float64)
        scores = outputs["scores"].reshape(-1)[:n].astype(np.float64)
        labels = outputs["labels"].reshape(-1)[:n].astype(np.int64)
        (h0, w0), (h1, w1) = image.orig_size, image.size
        if (h0, w0) != (h1, w1):  # undo the runtime's resize, as the plugin's predict() does
            boxes = boxes * np.array([w0 / w1, h0 / h1, w0 / w1, h0 / h1])
        keep = scores >= float(options.get("score_thresh") or 0.0)
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
        font = _font(max(10, 11 * scale // 2))
        colours = palette(len(meta.classes) + 1)[1:]
        thresh = float(options.get("draw_thresh", 0.3))
        for det in sorted(result["detections"], key=lambda d: d["score"]):
            if det["score"] < thresh:
                continue
            x, y, w, h = (v * scale for v in det["bbox"])
            colour = tuple(int(c) for c in colours[det["label"] % len(colours)])
            draw.rectangle((x, y, x + w, y + h), outline=colour, width=max(1, scale))
            text = f"{det['class']} {det['score']:.2f}"
            box = draw.textbbox((x, y), text, font=font)
            draw.rectangle((box[0], box[1] - (box[3] - box[1]) - 2, box[2] + 2, box[1]), fill=colour)
            draw.text((x + 1, y - (box[3] - box[1]) - 2), text, fill=(0, 0, 0), font=font)
        return pil


class Segmentation(TaskRuntime):
    """A class per pixel at the input's resolution; back at the original size if it was resized."""

    name = "segmentation"
    outputs = ("class_map",)

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
        # Back at the original size, unless ``graph_size`` (evaluation: the metric scores at the
        # validation Resize's size, and resizing there and back is not the identity).
        if mask.shape != (h0, w0) and not options.get("graph_size"):
            mask = nearest(mask, (h0, w0))
        counts = np.bincount(mask.reshape(-1), minlength=len(meta.classes))[: len(meta.classes)]
        total = max(int(mask.size), 1)
        fractions = {meta.classes[i]: round(float(c) / total, 6) for i, c in enumerate(counts) if c}
        return {"file": image.name, "width": w0, "height": h0, "mask": mask,
                "classes_present": [meta.classes[i] for i, c in enumerate(counts) if c], "pixel_fraction": fractions}

    def draw(self, image, result, meta, options):
        from PIL import Image

        mask = result["mask"]
        colours = palette(len(meta.classes))
        out = image.astype(np.float32).copy()
        labelled = (mask > 0) & (mask < len(colours))
        out[labelled] = 0.45 * out[labelled] + 0.55 * colours[mask[labelled]]
        return Image.fromarray(np.hstack([image, out.clip(0, 255).astype(np.uint8)]))


BUILT_IN: dict[str, type[TaskRuntime]] = {t.name: t for t in (Classification, Detection, Segmentation)}
ENTRY_POINT_GROUP = "visionkit.runtime"


def task_runtime(name: str) -> TaskRuntime:
    """The runtime of task ``name``: built in, or from the one package declaring it in the
    ``visionkit.runtime`` group. A name declared twice (by two packages, or by a package and the
    built-ins) is refused, not resolved by sys.path order; other names are unaffected."""
    from importlib import metadata

    # by target: the same target declared twice loads the same object
    eps = {ep.value: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)}
    declared = [f"{ep.dist.name} {ep.dist.version} ({target})" if ep.dist else f"unknown distribution ({target})"
                for target, ep in sorted(eps.items())]
    if name in BUILT_IN:
        declared.insert(0, f"visionkit (built in, {BUILT_IN[name].__module__}:{BUILT_IN[name].__qualname__})")
    if len(declared) > 1:
        raise UserError(f"runtime for task {name!r} is declared more than once: {' and '.join(declared)}; "
                        "uninstall one of the packages (the other tasks are unaffected)")
    if name in BUILT_IN:
        return BUILT_IN[name]()
    for target, ep in eps.items():
        try:
            obj = ep.load()
        except Exception as exc:
            raise UserError(f"runtime for task {name!r} ({target}) failed to import: {type(exc).__name__}: {exc}") from exc
        return obj() if isinstance(obj, type) else obj
    raise ModelError(f"no runtime for task {name!r}: built in are {', '.join(BUILT_IN)}; a plugin adds one "
                     f"through the {ENTRY_POINT_GROUP!r} entry-point group")


def nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a class map, as masks are resized in training."""
    rows = np.minimum((np.arange(shape[0]) * mask.shape[0] / shape[0]).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * mask.shape[1] / shape[1]).astype(np.int64), mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def to_json(result: dict[str, Any], mask_path: Optional[str] = None) -> dict[str, Any]:
    """A result as ``visionkit predict`` writes it: a segmentation mask becomes its PNG's path
    (or, without a path, base64 PNG bytes under ``mask_png``, e.g. for an HTTP answer)."""
    if "mask" not in result:
        return dict(result)
    out = {k: v for k, v in result.items() if k != "mask"}
    if mask_path is not None:
        out["mask"] = mask_path
    else:
        import base64

        out["mask_png"] = base64.b64encode(mask_png(result["mask"])).decode("ascii")
    return out


def mask_png(mask: np.ndarray) -> bytes:
    """A palette PNG: pixel values are class indices (as training masks), colours for viewing."""
    import io

    from PIL import Image

    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    img = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    img.putpalette(palette(256).reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
