"""``visionkit eval model.onnx``: the task plugin's own metric on the runtime's predictions.

The validation set is built by the plugin from the data section recorded in the model (or
``--data ROOT`` / ``data.*`` overrides), exactly as ``visionkit eval`` of the checkpoint builds
it; the images themselves go through the torch-free runtime, as in deployment. So the two
evaluations differ only by what ONNX changes. Torch is imported here, for the plugin's dataset
and metric; the predictions never touch it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from ..config import _resolve_paths, apply_overrides, validate_section
from ..errors import ConfigError, UserError
from ..registry import get_plugin
from ..runtime import Model


#: data keys that decide what the model sees: fixed by training, whatever data is used
FIXED_DATA_KEYS = ("image_size", "channels", "mean", "std", "val_transforms", "classes")


def check_data_overrides(overrides: Sequence[str], what: str) -> None:
    """Where the data is may change; how it is pre-processed may not (the graph bakes it in,
    and a parity check against PyTorch with the same change could not notice)."""
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if not key.startswith("data."):
            raise ConfigError(f"override {override!r}: {what}, only data.* keys can be set")
        if key.split(".")[1] in FIXED_DATA_KEYS:
            raise ConfigError(f"override {override!r}: {key} is fixed by the training run (the model was trained "
                              f"with it); {what}, only where the data is can change")


def data_section(model: Model, plugin, data_root: Optional[str], overrides: list[str]):
    meta = model.metadata
    check_data_overrides(overrides, "evaluating an exported model")
    raw = {"data": dict(meta.data or {})}
    if data_root:
        raw["data"]["root"] = data_root
    raw = apply_overrides(raw, list(overrides))
    if not raw["data"]:  # a task whose data has no root (generated) records a section all the same
        raise ConfigError(f"{model.path}: the model records no data section; give --data ROOT (and data.* keys)")
    source = f"{model.path} (recorded data section{' with overrides' if data_root or overrides else ''})"
    section = validate_section(plugin.DataConfig, raw["data"], source, prefix="data")
    _resolve_paths(section, Path.cwd())
    return section


def evaluate_model(model: Model, plugin, dataset, batch_size: int = 8) -> tuple[dict[str, Any], Any]:
    """The metric over ``dataset`` from the runtime's predictions; returns (result, metric)."""
    from .run import exporter_of

    exporter = exporter_of(plugin, str(model.path))
    classes = list(model.metadata.classes)
    if list(dataset.classes) != classes:
        raise UserError(f"{model.path}: the model's classes {classes} differ from the data's {list(dataset.classes)}")
    metric = plugin.build_metric(classes)
    chunk = max(batch_size, 16)
    for start in range(0, len(dataset), chunk):
        indices = list(range(start, min(start + chunk, len(dataset))))
        sources = [exporter.source(dataset, i) for i in indices]
        # the runtime's eval options: e.g. every class's score, masks at the size the metric scores at
        results = model.predict(sources, batch_size=batch_size, **model.task.eval_options(model.metadata))
        outputs, batch = exporter.metric_inputs(dataset, indices, results)
        metric.update(outputs, batch)
    metric.merge([metric.state()])  # the contract: compute() follows a merge, as in training's eval
    return metric.compute(), metric


def evaluate(path: str, data_root: Optional[str] = None, overrides: list[str] = (), output: Optional[str] = None,
             batch_size: int = 8, threads: Optional[int] = None) -> dict[str, Any]:
    from ..fileio import atomic_write_text

    model = Model.load(path, threads=threads)
    plugin = get_plugin(model.metadata.task)
    data = data_section(model, plugin, data_root, list(overrides))
    dataset = plugin.build_dataset(data, "val")
    tic = time.perf_counter()
    result, metric = evaluate_model(model, plugin, dataset, batch_size)
    payload = {"model": str(Path(path).resolve()), "precision": model.metadata.precision,
               "num_images": len(dataset), "seconds": round(time.perf_counter() - tic, 3),
               "primary": metric.primary, **result}
    out = Path(output) if output else Path(path).with_suffix(".eval.json")
    atomic_write_text(out, json.dumps(payload, indent=1))
    return payload
