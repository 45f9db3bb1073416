"""fp16 and int8 variants of an exported fp32 graph (onnxruntime's own tools).

* fp16: weights and activations in half precision, input and outputs kept float32 so the
  runtime is unchanged; NMS, TopK and other index-heavy ops stay float32 (onnxruntime's default
  block list). Meant for GPUs: most x86 CPUs have no fp16 arithmetic and run it slower.
* int8: static quantization in QDQ format, calibrated on training images pre-processed by the
  runtime itself. Only Conv / MatMul / Gemm are quantized: box decoding, NMS, softmax and
  arg-max stay float32, where a coarse grid would move boxes and flip classes for no speed.
  Weights per channel, activations uint8, ``reduce_range`` (7-bit weights) because CPUs
  without VNNI (AVX2 only, like this project's machines) can otherwise saturate.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..runtime import Model

PRECISIONS = ("fp32", "fp16", "int8")
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]


def to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    props = [(p.key, p.value) for p in model.metadata_props]
    with contextlib.redirect_stdout(io.StringIO()):
        half = convert_float_to_float16(model, keep_io_types=True)
    del half.metadata_props[:]
    for key, value in props:
        half.metadata_props.add(key=key, value=value)
    onnx.save(half, str(dst))


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over runtime-prepared images, one at a time."""

    def __init__(self, model: Model, sources: Sequence[Any]):
        self.model = model
        self.sources = list(sources)
        self.position = 0

    def get_next(self):
        if self.position >= len(self.sources):
            return None
        item = self.model.preprocess([self.sources[self.position]])[0]
        self.position += 1
        return {self.model.input_name: item.array[None]}

    def rewind(self) -> None:
        self.position = 0


def to_int8(src: Path, dst: Path, sources: Sequence[Any]) -> dict[str, Any]:
    """``sources``: calibration images (training files or arrays) as the runtime takes them."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = Model.load(src, providers=["CPUExecutionProvider"])
    props = [(p.key, p.value) for p in onnx.load(str(src), load_external_data=False).metadata_props]
    reader = _Calibration(model, sources)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=QUANTIZED_OPS, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    quantized = onnx.load(str(dst))
    del quantized.metadata_props[:]
    for key, value in props:
        quantized.metadata_props.add(key=key, value=value)
    onnx.save(quantized, str(dst))
    return {"calibration_images": len(reader.sources), "method": "static QDQ, MinMax calibration",
            "quantized_ops": QUANTIZED_OPS, "weights": "int8 per channel (7-bit range)", "activations": "uint8"}


def set_precision(path: Path, precision: str) -> None:
    """Rewrites ``visionkit.precision`` in the file's metadata."""
    import json

    import onnx

    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "visionkit.precision":
            prop.value = json.dumps(precision)
    onnx.save(model, str(path))


def relative_change(before: float, after: float) -> float:
    return float(np.round((after - before) * 100, 4))  # metric points (x100)
