"""``visionkit export RUN_DIR|CHECKPOINT -o model.onnx``: trace, describe, check, (quantize).

The file is written only if every check passes; otherwise the graph is kept beside it as
``<name>.failed.onnx`` for inspection, the report says which check failed, and the command
exits with status 3. The report is always written as ``<name>.report.json``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from .. import __version__
from .. import checkpoint
from ..errors import ExportCheckFailed, UserError
from ..fileio import atomic_write_text
from ..plugin import ExportOptions, ExportPlan
from ..runtime import Metadata, Model
from ..runtime.preprocess import decode, prepare
from ..train.ema import weights_label
from .checks import all_ok, format_check, latency_ms, parity, sample_indices
from .evaluate import evaluate_model
from .graph import export_graph, write_metadata
from .precision import PRECISIONS, set_precision, to_fp16, to_int8
from .run import LoadedRun, load_run


def metadata_for(run: LoadedRun, plan: ExportPlan, opset: int) -> Metadata:
    resizes = [s for s in plan.preprocess if s.get("op") == "resize"]
    best = dict(run.state.best or {})
    if best.get("epoch") is not None:
        best["epoch"] += 1  # 1-based, as the logs print it
    best["metric"] = run.plugin.build_metric(run.classes).primary
    return Metadata(
        task=run.cfg.task, classes=list(run.classes), channels=plan.channels,
        input_size=[resizes[-1]["height"], resizes[-1]["width"]] if resizes else None,
        dynamic_batch=plan.dynamic_batch, dynamic_size=plan.dynamic_size, preprocess=plan.preprocess,
        normalization=plan.normalization, outputs=list(plan.output_names), postprocess=plan.postprocess,
        category_ids=plan.category_ids, precision="fp32", opset=opset, version=__version__,
        source={"run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint), "epoch": run.state.epoch + 1,
                "best": best, "model": run.sections.model.model_dump(mode="json").get("name"),
                # the checkpoint's: "ema" (train.ema's average, its settings beside it) or "trained"
                "weights": run.state.weights, **({"ema": dict(run.state.ema or {})} if run.state.weights == "ema" else {}),
                "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        data=run.sections.data.model_dump(mode="json"))


def example_input(run: LoadedRun, plan: ExportPlan, dataset) -> torch.Tensor:
    """The first validation image as the runtime prepares it; two of them for a dynamic batch."""
    image = prepare(decode(run.exporter.source(dataset, 0)), plan.preprocess, plan.channels)
    batch = torch.from_numpy(image)[None]
    return batch.repeat(2, 1, 1, 1) if plan.dynamic_batch else batch


def metric_drop_check(metric, base: dict[str, Any], after: dict[str, Any], precision: str, images: int,
                      max_drop: float) -> dict[str, Any]:
    """The reduced-precision model may lose at most ``max_drop`` points of the primary metric, lost
    in the metric's own direction: for an error (MAE, lower is better) a rise is the loss."""
    key = metric.primary
    higher = bool(metric.higher_is_better)
    lost = float(base[key]) - float(after[key]) if higher else float(after[key]) - float(base[key])
    drop = lost * 100
    return {"metric": key, "direction": "higher is better" if higher else "lower is better", "images": images,
            "fp32": float(base[key]), precision: float(after[key]), "drop_points": round(drop, 4),
            "threshold": f"drop <= {max_drop:g} points ({'higher' if higher else 'lower'} is better)",
            "ok": drop <= max_drop}


def reduced_precision(run: LoadedRun, plan: ExportPlan, fp32: Path, reduced: Path, precision: str, val, indices,
                      calibration_images: int, max_drop: float) -> dict[str, Any]:
    info: dict[str, Any] = {}
    if precision == "fp16":
        to_fp16(fp32, reduced)
        info = {"method": "float16 weights and activations, float32 input/outputs"}
    else:
        train = run.dataset("train")
        sources = [run.exporter.source(train, i) for i in sample_indices(len(train), calibration_images)]
        info = to_int8(fp32, reduced, sources)
    set_precision(reduced, precision)
    checks = parity(reduced, run, plan, val, indices, precision)
    checks["conversion"] = {**{k: v for k, v in info.items() if isinstance(v, (int, float, str))}, "ok": True}
    if not all_ok(checks):
        return checks
    full, low = Model.load(fp32, providers=["CPUExecutionProvider"]), Model.load(reduced, providers=["CPUExecutionProvider"])
    base, metric = evaluate_model(full, run.plugin, val)
    after, _ = evaluate_model(low, run.plugin, val)
    checks["validation_metric"] = metric_drop_check(metric, base, after, precision, len(val), max_drop)
    prepared = full.preprocess([run.exporter.source(val, i) for i in indices[:8]])
    t_full, t_low = latency_ms(full, prepared), latency_ms(low, prepared)
    checks["speed"] = {"ms_per_image_fp32": round(t_full, 3), f"ms_per_image_{precision}": round(t_low, 3),
                       "speedup": round(t_full / t_low, 3), "batch": 1, "ok": True}
    return checks


def export(target: str, output: Optional[str] = None, overrides: list[str] = (), data_root: Optional[str] = None,
           opset: int = 17, precision: str = "fp32", logits: bool = False, check_images: int = 32,
           calibration_images: int = 64, max_metric_drop: float = 2.0, mlflow: Optional[bool] = None) -> dict[str, Any]:
    """``mlflow``: attach the model and its report to the run's MLflow run (RUN/mlflow.json): None
    when the run was tracked (a failure only warns), True required, False never."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: choose {', '.join(PRECISIONS)}")
    if check_images < 1:
        raise UserError("--check-images: at least 1 (every export is checked)")
    if precision == "int8" and calibration_images < 1:
        raise UserError(f"--calibration-images {calibration_images}: at least 1 (int8 is calibrated on training images)")
    overrides = list(overrides) + ([f"data.root={data_root}"] if data_root else [])
    run = load_run(target, overrides)
    out = Path(output) if output else run.run_dir / ("model.onnx" if precision == "fp32" else f"model.{precision}.onnx")
    if out.suffix != ".onnx":
        raise UserError(f"-o {out}: the model file name must end in .onnx")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    val = run.dataset("val")
    checkpoint.check_classes(run.state, val.classes, "the validation data")
    plan = run.exporter.plan(run.model, run.classes, run.sections, ExportOptions(opset=opset, logits=logits))
    example = example_input(run, plan, val)
    if not plan.dynamic_size and not any(s.get("op") == "resize" for s in plan.preprocess):
        # A graph traced for one size: the runtime brings other images to it (a no-op for
        # validation images of that size, which the check then compares exactly).
        h, w = example.shape[-2:]
        plan.preprocess = [*plan.preprocess, {"op": "resize", "height": int(h), "width": int(w), "interpolation": 1}]
    meta = metadata_for(run, plan, opset)
    indices = sample_indices(len(val), check_images)
    print(f"[visionkit] exporting the {run.cfg.task} model of {run.checkpoint} (epoch {meta.source['epoch']}) with its "
          f"{weights_label(run.state.weights, run.state.ema)}, opset {opset}, {precision}; checking on {len(indices)} "
          "validation images", flush=True)

    report: dict[str, Any] = {"model": str(out), "task": run.cfg.task, "precision": precision, "opset": opset,
                              "metadata": {k: v for k, v in meta.__dict__.items() if k != "data"}}
    with tempfile.TemporaryDirectory(prefix=".visionkit-export-", dir=out.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_graph(plan, example, fp32, opset)
        write_metadata(fp32, meta)
        report["checks"] = parity(fp32, run, plan, val, indices, "fp32")
        ok, final = all_ok(report["checks"]), fp32
        if ok and precision != "fp32":
            final = Path(tmp) / f"{precision}.onnx"
            report[f"checks_{precision}"] = reduced_precision(run, plan, fp32, final, precision, val, indices,
                                                              calibration_images, max_metric_drop)
            ok = all_ok(report[f"checks_{precision}"])
        report["ok"] = ok
        kept = out if ok else out.with_name(out.stem + ".failed.onnx")
        with open(final, "rb+") as fh:  # on disk before the rename: a crash leaves no torn model.onnx
            os.fsync(fh.fileno())
        os.replace(final, kept)
        os.chmod(kept, 0o644)
    report["size_bytes"] = kept.stat().st_size
    report_path = out.with_suffix(".report.json")
    atomic_write_text(report_path, json.dumps(report, indent=1, default=str))
    for section in ("checks", f"checks_{precision}"):
        for name, check in report.get(section, {}).items():
            label = name if section == "checks" else f"{precision} {name}"
            print(format_check(label, check), flush=True)
    if not ok:
        failed = [name for section in ("checks", f"checks_{precision}") for name, c in report.get(section, {}).items()
                  if isinstance(c, dict) and not c.get("ok")]
        raise ExportCheckFailed(f"{out}: export check failed ({', '.join(failed)}): graph kept as {kept.name} for "
                                f"inspection; details in {report_path}")
    print(f"[visionkit] wrote {out} ({report['size_bytes'] / 1e6:.2f} MB) and {report_path.name}", flush=True)
    if mlflow is not False:
        from ..tracking.mlflow import attach_export

        attach_export(run.run_dir, [out, report_path], mlflow)
    return report
