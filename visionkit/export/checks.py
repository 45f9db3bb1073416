"""Every export is checked: the ONNX checker, then the deployment path against PyTorch.

"Deployment path" means the runtime end to end: the image file decoded and pre-processed by
:mod:`visionkit.runtime` (numpy, no torch), run by onnxruntime. It is compared with the
training side: the plugin's validation dataset (albumentations) and the PyTorch model's
evaluation forward pass. So a pre-processing drift fails the check as surely as a wrong graph.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..plugin import ExportPlan
from ..runtime import Model
from .run import LoadedRun

#: runtime pre-processing must give the training tensors to within half a grey level
MAX_PREPROCESS_DIFF_LEVELS = 0.5


def sample_indices(count: int, wanted: int) -> list[int]:
    """``wanted`` indices spread evenly over the data set (not just its first images)."""
    if count <= wanted:
        return list(range(count))
    return sorted(set(np.linspace(0, count - 1, wanted).round().astype(int).tolist()))


def onnx_checker(path: Path) -> dict[str, Any]:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        return {"ok": False, "error": str(exc).strip().splitlines()[0][:300]}
    return {"ok": True}


def preprocessing(run: LoadedRun, dataset, indices: Sequence[int], prepared) -> dict[str, Any]:
    worst, differing, values = 0.0, 0, 0
    for i, item in zip(indices, prepared):
        ref = run.exporter.graph_input(dataset, run.sections.data, i).detach().float().numpy()
        if ref.shape != item.array.shape:
            return {"images": len(indices), "ok": False,
                    "error": f"sample {i}: training gives {ref.shape}, the runtime {item.array.shape} ({item.name})"}
        levels = np.abs(ref - item.array) * 255.0
        worst = max(worst, float(levels.max()))
        differing += int((levels > MAX_PREPROCESS_DIFF_LEVELS).sum())
        values += levels.size
    return {"images": len(indices), "max_abs_diff_levels": round(worst, 6), "values_differing": differing,
            "values": values, "threshold": f"every value within {MAX_PREPROCESS_DIFF_LEVELS} of 255 grey levels",
            "ok": differing == 0}


def outputs(run: LoadedRun, plan: ExportPlan, model: Model, dataset, indices: Sequence[int], prepared,
            precision: str) -> dict[str, Any]:
    exported = model.outputs_per_image(prepared, batch_size=8)
    reference = run.exporter.reference(run.model, dataset, indices)
    return run.exporter.compare(reference, exported, precision, plan)


def latency_ms(model: Model, prepared, repeats: int = 3) -> float:
    """Median milliseconds per image at batch 1 (after one warm-up run of each image)."""
    times = []
    for item in prepared:
        batch = item.array[None]
        model.run(batch)
        for _ in range(repeats):
            tic = time.perf_counter()
            model.run(batch)
            times.append(time.perf_counter() - tic)
    return float(np.median(times) * 1000) if times else float("nan")


def parity(path: Path, run: LoadedRun, plan: ExportPlan, dataset, indices: Sequence[int], precision: str) -> dict[str, Any]:
    """The checks of one exported file; ``ok`` only if every one passed."""
    report: dict[str, Any] = {"onnx_checker": onnx_checker(path)}
    if not report["onnx_checker"]["ok"]:
        return report
    model = Model.load(path, providers=["CPUExecutionProvider"])
    sources = [run.exporter.source(dataset, i) for i in indices]
    prepared = model.preprocess(sources)
    report["preprocessing"] = preprocessing(run, dataset, indices, prepared)
    report["outputs"] = outputs(run, plan, model, dataset, indices, prepared, precision)
    return report


def all_ok(checks: dict[str, Any]) -> bool:
    return all(c.get("ok", False) for c in checks.values() if isinstance(c, dict))


def format_check(name: str, check: dict[str, Any]) -> str:
    figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in check.items()
                        if k not in ("ok", "threshold") and isinstance(v, (int, float, str)) and not isinstance(v, bool))
    status = "ok" if check.get("ok") else "FAILED"
    rule = f" [{check['threshold']}]" if "threshold" in check else ""
    return f"[visionkit] check {name}: {status}  {figures}{rule}"
