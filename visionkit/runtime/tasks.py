"""The task runtime contract: a task's graph outputs -> results, drawings and written files.

Every task's runtime, the built-in ones included, lives next to its plugin in a torch-free
module (numpy and Pillow) and is found through the ``visionkit.runtime`` entry-point group
(``mytask = "my_package.runtime:MyTaskRuntime"``). The core calls the methods below and
nothing else, so a third-party task's exported models predict and serve like the built-ins,
with their own query options (:class:`~visionkit.runtime.options.Option`).

Shared drawing and mask helpers (palette, font, label, nearest, mask_png) are here for them.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from ..errors import UserError
from .metadata import Metadata, ModelError
from .options import Option
from .preprocess import Prepared

ENTRY_POINT_GROUP = "visionkit.runtime"


class TaskRuntime(abc.ABC):
    """One task's inference side. Subclass it, set ``name`` (the ``task`` the exported model's
    metadata records) and implement :meth:`postprocess`; the rest has defaults."""

    name: ClassVar[str]
    #: graph outputs a visionkit-exported model of this task must have, by name (checked at load)
    outputs: ClassVar[tuple[str, ...]] = ()

    def options(self, meta: Metadata) -> Sequence[Option]:
        """The query options this task takes (predict flags, serve query parameters). ``meta``
        is the model's, so ranges may depend on it (top_k: 1 to the number of classes)."""
        return ()

    def eval_options(self, meta: Metadata) -> dict[str, Any]:
        """Options ``visionkit eval model.onnx`` predicts with, so the plugin's metric sees what it
        needs (every class's score, masks at the graph's size); declared ones only."""
        return {}

    @abc.abstractmethod
    def postprocess(self, outputs: dict[str, np.ndarray], image: Prepared, meta: Metadata,
                    options: dict[str, Any]) -> dict[str, Any]:
        """One image's result. ``outputs``: the graph's outputs by name, this image's slice
        (batch axis removed); ``image``: its :class:`~visionkit.runtime.preprocess.Prepared`
        (``name``, ``orig_size`` (h, w) before the recorded resize, ``size`` after it);
        ``options``: every declared option's value. Return a dict with ``"file": image.name``
        that :meth:`to_json` makes JSON-able."""

    def draw(self, image: np.ndarray, result: dict[str, Any], meta: Metadata, options: dict[str, Any]):
        """A PIL image showing ``result`` on ``image`` (HxWx3 uint8, the original), for ``--draw``."""
        raise ModelError(f"the {self.name} runtime draws nothing; leave out --draw")

    def to_json(self, result: dict[str, Any]) -> dict[str, Any]:
        """``result`` as ``serve`` answers it, in JSON types only (default: :func:`to_json`)."""
        return to_json(result)

    def writer(self, meta: Metadata, out_dir: Path) -> "PredictionWriter":
        """What ``visionkit predict`` writes into ``out_dir``; the default: ``predictions.json``,
        one :meth:`to_json` record per image."""
        return PredictionWriter(self, meta, out_dir)

    def foreign(self, meta: Metadata) -> Metadata:
        """``meta`` (from ``predict --task``) completed for a graph that visionkit did not export,
        or a ModelError when this task's graphs have no standard layout."""
        raise ModelError(f"--task {self.name}: its runtime needs a model exported by visionkit (with metadata)")


class PredictionWriter:
    """Collects one ``visionkit predict`` run's results and writes its files.

    :meth:`add` is called once per image, in order; :meth:`close` writes and returns what it
    wrote, for the summary line. A task writing other files (COCO results, mask PNGs) returns a
    subclass from :meth:`TaskRuntime.writer`.
    """

    def __init__(self, runtime: TaskRuntime, meta: Metadata, out_dir: Path):
        self.runtime, self.meta, self.out_dir = runtime, meta, Path(out_dir)
        self.records: list[dict[str, Any]] = []

    def add(self, index: int, path: Path, stem: str, result: dict[str, Any]) -> None:
        """Image ``index`` (0-based) read from ``path``; ``stem``: a file name unique in this run."""
        self.records.append(self.runtime.to_json(result))

    def write_json(self, name: str, value: Any) -> str:
        from ..fileio import atomic_write_text

        atomic_write_text(self.out_dir / name, json.dumps(value, indent=1))
        return name

    def close(self) -> list[str]:
        return [self.write_json("predictions.json", self.records)]


# --- the registry ---------------------------------------------------------------------------------
def task_runtime(name: str) -> TaskRuntime:
    """The runtime of task ``name``, from the one package declaring it in the
    ``visionkit.runtime`` group (visionkit declares its three there too). A name declared by two
    packages is refused, not resolved by sys.path order; other names are unaffected."""
    from importlib import metadata

    # by target: the same target declared twice (one package seen twice on sys.path) is one
    eps = {ep.value: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)}
    if len(eps) > 1:
        declared = [f"{ep.dist.name} {ep.dist.version} ({target})" if ep.dist else f"unknown distribution ({target})"
                    for target, ep in sorted(eps.items())]
        raise UserError(f"runtime for task {name!r} is declared more than once: {' and '.join(declared)}; "
                        "uninstall one of the packages (the other tasks are unaffected)")
    if not eps:
        known = sorted({ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)})
        raise ModelError(f"no runtime for task {name!r}: installed are {', '.join(known) or 'none'}; a plugin "
                         f"adds one through the {ENTRY_POINT_GROUP!r} entry-point group")
    [(target, ep)] = eps.items()
    try:
        obj = ep.load()
        runtime = obj() if isinstance(obj, type) else obj
    except Exception as exc:
        raise UserError(f"runtime for task {name!r} ({target}) failed to load: {type(exc).__name__}: {exc}") from exc
    if not isinstance(runtime, TaskRuntime):
        raise UserError(f"runtime for task {name!r} ({target}) is a {type(runtime).__name__}, expected a "
                        "visionkit.runtime.TaskRuntime subclass")
    return runtime


# --- helpers shared by the runtimes -----------------------------------------------------------
def to_json(result: dict[str, Any]) -> dict[str, Any]:
    """A result in JSON types: a 2-D uint8 array under key ``k`` (a class map) becomes base64
    palette-PNG bytes under ``k_png``; other arrays become lists, numpy scalars numbers."""
    import base64

    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    out: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, np.ndarray) and value.ndim == 2 and value.dtype == np.uint8:
            out[f"{key}_png"] = base64.b64encode(mask_png(value)).decode("ascii")
        else:
            out[key] = plain(value)
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size font
        return ImageFont.load_default()


def label(image: np.ndarray, text: str):
    """A PIL image of ``image`` with ``text`` in a box at its top left; tiny images (32 px) are
    enlarged first, so the text stays readable."""
    from PIL import Image, ImageDraw

    scale = max(1, 256 // max(image.shape[:2]))
    pil = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    face = font(max(10, pil.height // 14))
    draw = ImageDraw.Draw(pil)
    box = draw.textbbox((4, 4), text, font=face)
    draw.rectangle((box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3), fill=(0, 0, 0))
    draw.text((4, 4), text, fill=(255, 255, 255), font=face)
    return pil


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


def nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a class map, as masks are resized in training."""
    rows = np.minimum((np.arange(shape[0]) * mask.shape[0] / shape[0]).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * mask.shape[1] / shape[1]).astype(np.int64), mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


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
