"""Tracing a plugin's export wrapper to ONNX, and writing visionkit's metadata into the file."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch

from ..errors import UserError
from ..plugin import ExportPlan
from ..runtime.metadata import Metadata

#: the TorchScript-based exporter writes opsets up to 20; below 13 per-channel int8 is impossible
OPSETS = range(13, 21)


def dynamic_axes(plan: ExportPlan) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {"images": {}}
    if plan.dynamic_batch:
        axes["images"][0] = "batch"
    if plan.dynamic_size:
        axes["images"].update({2: "height", 3: "width"})
    for name in plan.output_names:
        if plan.dynamic_axes and name in plan.dynamic_axes:
            axes[name] = {k: v for k, v in plan.dynamic_axes[name].items() if plan.dynamic_batch or k != 0}
        elif plan.dynamic_batch:
            axes[name] = {0: "batch"}
    return {k: v for k, v in axes.items() if v}


def export_graph(plan: ExportPlan, example: torch.Tensor, path: Path, opset: int) -> None:
    """``example``: real images (N, C, H, W) in [0, 1]; two of them when the batch is dynamic,
    so that nothing in the trace can take the batch size for a constant 1."""
    if opset not in OPSETS:
        raise UserError(f"--opset {opset}: choose {OPSETS.start}..{OPSETS.stop - 1} (the TorchScript-based "
                        "exporter's range; 13 is the least for per-channel int8)")
    module = plan.module.eval()
    if plan.dynamo:
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise UserError("this model exports with torch.export (dynamo), which needs the onnxscript package: "
                            "pip install onnxscript") from None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        # The TorchScript exporter is deprecated upstream and warns about every traced size
        # computation; the parity check that follows is what says whether the graph is right.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            kwargs = dict(input_names=["images"], output_names=plan.output_names, opset_version=opset,
                          dynamic_axes=dynamic_axes(plan), do_constant_folding=True)
            if plan.dynamo:
                torch.onnx.export(module, (example,), str(path), dynamo=True, **kwargs)
            else:
                torch.onnx.export(module, (example,), str(path), dynamo=False, **kwargs)


def write_metadata(path: Path, meta: Metadata) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in meta.to_props().items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "visionkit", meta.version
    model.doc_string = f"visionkit {meta.task} model: {meta.summary()}"
    onnx.save(model, str(path))
