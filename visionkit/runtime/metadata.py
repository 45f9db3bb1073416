"""What an exported graph needs around it, stored in the ONNX file's ``metadata_props``.

Every key is ``visionkit.<field>`` with a JSON value, so any ONNX tool shows them and the runtime
reads them through onnxruntime alone (``custom_metadata_map``), without the ``onnx`` package.
The pre-processing recorded here is the training pipeline's validation transform, replayed by
:mod:`visionkit.runtime.preprocess`; normalisation lives inside the graph, so a deployment
cannot get it wrong.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from ..errors import UserError

PREFIX = "visionkit."
#: bumped when a key's meaning changes; a newer file is refused rather than misread
FORMAT = 1


class ModelError(UserError):
    """A model file that cannot be used: not ONNX, no visionkit metadata, inconsistent metadata."""


@dataclass
class Metadata:
    task: str
    classes: list[str]
    #: graph input: float32 NCHW, RGB (or grey when channels == 1), values in [0, 1]
    input_name: str = "images"
    channels: int = 3
    #: (height, width) every image is resized to before the graph; None: images keep their size
    input_size: Optional[list[int]] = None
    dynamic_batch: bool = True
    dynamic_size: bool = True
    #: runtime steps before the graph, in order: [{"op": "resize", "height", "width", "interpolation"}]
    preprocess: list[dict[str, Any]] = field(default_factory=list)
    #: {"mean": [...], "std": [...], "in_graph": bool}; in_graph False: the runtime applies it
    normalization: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    #: task-specific, written by the plugin's exporter and read by its runtime (detection
    #: thresholds, segmentation ignore value...)
    postprocess: dict[str, Any] = field(default_factory=dict)
    #: detection: COCO category id of each class, for COCO-format results
    category_ids: Optional[list[int]] = None
    precision: str = "fp32"
    opset: Optional[int] = None
    version: str = ""
    #: where the weights came from: run directory, checkpoint, epoch, its validation metric
    source: dict[str, Any] = field(default_factory=dict)
    #: the run's resolved ``data`` section: ``visionkit eval model.onnx`` finds the validation set
    data: Optional[dict[str, Any]] = None
    format: int = FORMAT

    # --- (de)serialisation ---------------------------------------------------------------------
    def to_props(self) -> dict[str, str]:
        return {PREFIX + k: json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str) -> "Metadata":
        ours = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
        if "task" not in ours:
            raise ModelError(f"{where}: no visionkit metadata (metadata_props 'visionkit.task' is missing): export it "
                             "with `visionkit export`, or describe a foreign model with --task and --classes")
        values: dict[str, Any] = {}
        known = set(cls.__dataclass_fields__)
        for key, text in ours.items():
            if key not in known:
                continue  # written by a newer visionkit; harmless unless the format says otherwise
            try:
                values[key] = json.loads(text)
            except json.JSONDecodeError:
                raise ModelError(f"{where}: metadata 'visionkit.{key}' is not valid JSON ({text[:60]!r})") from None
        meta = cls(**values) if "classes" in values else None
        if meta is None:
            raise ModelError(f"{where}: metadata 'visionkit.classes' is missing")
        meta.validate(where)
        return meta

    def validate(self, where: str) -> None:
        if not isinstance(self.format, int) or self.format > FORMAT:
            raise ModelError(f"{where}: metadata format {self.format!r} is newer than this visionkit reads ({FORMAT}); "
                             "upgrade visionkit")
        if not isinstance(self.classes, list) or not self.classes or not all(isinstance(c, str) for c in self.classes):
            raise ModelError(f"{where}: metadata 'visionkit.classes': expected a non-empty list of names")
        kinds = {"preprocess": list, "normalization": dict, "outputs": list, "postprocess": dict, "source": dict,
                 "data": (dict, type(None)), "dynamic_batch": bool, "dynamic_size": bool, "task": str}
        for key, kind in kinds.items():
            if not isinstance(getattr(self, key), kind):
                raise ModelError(f"{where}: metadata 'visionkit.{key}': expected "
                                 f"{' or '.join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))}, "
                                 f"got {getattr(self, key)!r}")
        if self.input_size is not None and not (
                isinstance(self.input_size, list) and len(self.input_size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in self.input_size)):
            raise ModelError(f"{where}: metadata 'visionkit.input_size': expected [height, width], got {self.input_size!r}")
        if self.category_ids is not None and not (
                isinstance(self.category_ids, list) and len(self.category_ids) == len(self.classes)
                and all(isinstance(v, int) for v in self.category_ids)):
            raise ModelError(f"{where}: metadata 'visionkit.category_ids': expected one integer id per class "
                             f"({len(self.classes)}), got {self.category_ids!r}")
        if isinstance(self.channels, bool) or self.channels not in (1, 3):
            raise ModelError(f"{where}: metadata 'visionkit.channels': expected 1 or 3, got {self.channels!r}")
        for i, step in enumerate(self.preprocess):
            if not isinstance(step, dict) or step.get("op") != "resize" or not all(
                    isinstance(step.get(k), int) and step[k] > 0 for k in ("height", "width")):
                raise ModelError(f"{where}: metadata 'visionkit.preprocess'[{i}]: expected "
                                 f"{{op: resize, height, width}}, got {step!r}")
        norm = self.normalization or {}
        if not norm.get("in_graph", True):
            for key in ("mean", "std"):
                if not (isinstance(norm.get(key), list) and len(norm[key]) == self.channels):
                    raise ModelError(f"{where}: metadata 'visionkit.normalization.{key}': expected "
                                     f"{self.channels} numbers")

    def summary(self) -> str:
        size = "x".join(map(str, self.input_size)) if self.input_size else "any size"
        return (f"{self.task}, {len(self.classes)} classes, input {self.channels}x{size} "
                f"({'dynamic' if self.dynamic_batch else 'fixed'} batch), {self.precision}")
