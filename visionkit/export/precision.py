"""fp16 and int8 variants of an exported fp32 graph (onnxruntime's own tools).

* fp16: weights and activations in half precision, input and outputs kept float32 so the
  runtime is unchanged; NMS, TopK and other index-heavy ops stay float32 (onnxruntime's default
  block list). Meant for GPUs: x86 CPUs without fp16 arithmetic gain little. Graphs with control
  flow (the detectors' batched NMS) are refused: the converter wires casts across the If's
  subgraph boundary and the result is invalid.
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

from ..errors import UserError
from ..runtime import Model

PRECISIONS = ("fp32", "fp16", "int8")
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]


def to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    props = [(p.key, p.value) for p in model.metadata_props]
    if any(n.op_type in ("If", "Loop", "Scan") for n in model.graph.node):
        raise UserError("--precision fp16: this graph has control flow (If/Loop nodes), "
                        "which onnxruntime's float16 converter miswires; export fp32 or int8 instead")
    with contextlib.redirect_stdout(io.StringIO()):
        half = convert_float_to_float16(model, keep_io_types=True)
    # The converter appends its input/output casts at the end of the node list; the ONNX
    # checker (rightly) wants nodes in topological order.
    _topological_sort(half.graph)
    del half.metadata_props[:]
    for key, value in props:
        half.metadata_props.add(key=key, value=value)
    onnx.save(half, str(dst))


def _used_names(node) -> set[str]:
    """A node's inputs, and the outer-scope names its subgraphs (If/Loop bodies) read."""
    names = {i for i in node.input if i}
    for attr in node.attribute:
        for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            inner = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
            inner |= {t.name for t in graph.initializer}
            for n in graph.node:
                names |= _used_names(n) - inner
    return names


def _topological_sort(graph) -> None:
    """Kahn's order over the node list, in place; ties keep the original order."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if _used_names(n) <= available]
        if not ready:
            raise RuntimeError(f"fp16 graph has a cycle or an unknown input near node {pending[0].name!r}")
        for n in ready:
            available.update(n.output)
        ordered += ready
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


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
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice on the root logger, once per tensor
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=QUANTIZED_OPS, per_channel=True, reduce_range=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    finally:
        root.setLevel(level)
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
