"""onnxruntime vs PyTorch eager: latency at batch 1 and 8, and throughput, for each task's demo model.

For each of configs/{classification,detection,segmentation}/shapes.yaml: the demo's model,
with random weights (default) or trained for --epochs in this process, exported by
`visionkit export` as fp32 and int8 (both pass the export checks), then timed on real
validation images of the demo's size:

* eager: the PyTorch evaluation path (classification: model + softmax; detection: the
  torchvision detector's own forward with its NMS; segmentation: model + arg-max);
* onnxruntime fp32 and int8: the bare graph (`Model.run`), pre-processing excluded on both sides.

Both sides get the same number of threads (--threads, default: all cores). Each figure is the
median of --repeats timed calls after warm-up; ratios are onnxruntime / eager from the same run.

    python benchmarks/onnx_latency.py [--epochs 0] [--threads 2] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from _common import REPO, machine

sys.path.insert(0, str(REPO))

TASKS = {
    "classification": ("configs/classification/shapes.yaml", "classification"),
    "detection": ("configs/detection/shapes.yaml", "scenes"),
    "segmentation": ("configs/segmentation/shapes.yaml", "scenes"),
}


def data(out: Path) -> dict[str, Path]:
    from visionkit.data import synth

    cls, scenes = out / "shapes_cls", out / "shapes_scenes"
    if not (cls / "val").is_dir():
        synth.classification(cls, num_train=400, num_val=100, size=32, seed=0)
    if not (scenes / "annotations").is_dir():
        synth.scenes(scenes, num_train=100, num_val=40, size=128, seed=0)
    return {"classification": cls, "scenes": scenes}


def checkpoint(task: str, roots: dict[str, Path], out: Path, epochs: int, threads: int) -> Path:
    """The demo config's model: trained for ``epochs`` in this process, or random weights."""
    import torch

    from visionkit.config import load_config, resolved_dict, task_configs
    from visionkit.fileio import atomic_torch_save
    from visionkit.registry import get_plugin
    from visionkit.train import launch

    config, kind = TASKS[task]
    overrides = [f"data.root={roots[kind]}", "ray.num_workers=0", "train.progress=false",
                 f"output.storage_path={out / 'runs'}", f"output.name={task}-{epochs}ep"]
    run_dir = out / "runs" / f"{task}-{epochs}ep"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return run_dir / "checkpoints" / "last.pt"
    if epochs:
        launch.train(str(REPO / config), overrides + [f"train.epochs={epochs}"])
        return run_dir / "checkpoints" / "last.pt"
    torch.manual_seed(0)
    cfg, _ = load_config(REPO / config, overrides)
    plugin = get_plugin(cfg.task)
    sections = task_configs(cfg, plugin, config, base=Path.cwd())
    classes = list(plugin.build_dataset(sections.data, "train").classes)
    model = plugin.build_model(sections.model, classes, sections.data)
    state = {"format": 1, "task": task, "classes": classes, "epoch": -1, "best": {"value": None, "epoch": None},
             "model": model.state_dict(), "config": resolved_dict(cfg, sections)}
    path = run_dir / "checkpoints" / "last.pt"
    atomic_torch_save(state, path)
    return path


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times) * 1000


def bench(task: str, ckpt: Path, out: Path, threads: int, repeats: int) -> dict:
    import torch

    from visionkit.export.exporter import export
    from visionkit.export.run import load_run
    from visionkit.plugin import ExportOptions
    from visionkit.runtime import Model

    models = {}
    reports = {}
    for precision in ("fp32", "int8"):
        path = out / "models" / f"{task}.{precision}.onnx"
        report = path.with_suffix(".report.json")
        if path.is_file() and report.is_file():  # exported (and checked) by an earlier run
            reports[precision] = json.loads(report.read_text())
        else:
            reports[precision] = export(str(ckpt), str(path), precision=precision, check_images=8,
                                        calibration_images=32, max_metric_drop=100.0)
        models[precision] = Model.load(path, providers=["CPUExecutionProvider"], threads=threads)

    run = load_run(str(ckpt), [])
    val = run.dataset("val")
    prepared = models["fp32"].preprocess([run.exporter.source(val, i) for i in range(8)])
    batch8 = np.stack([p.array for p in prepared])
    plan = run.exporter.plan(run.model, run.classes, run.sections, ExportOptions())
    torch.set_num_threads(threads)
    model = run.model.eval()

    def eager(batch: np.ndarray):
        x = torch.from_numpy(batch)
        with torch.inference_mode():
            if task == "detection":
                return model(list(x.unbind(0)))  # torchvision's own inference, NMS included
            return plan.module(x)

    row = {"task": task, "model": run.sections.model.name, "input": "x".join(map(str, batch8.shape[1:]))}
    for n in (1, 8):
        batch = batch8[:n]
        row[f"eager_ms_b{n}"] = median_ms(lambda: eager(batch), repeats)
        for precision, m in models.items():
            if m.fixed_batch and m.fixed_batch < n:
                row[f"{precision}_ms_b{n}"] = sum(median_ms(lambda b=b: m.run(b[None]), repeats) for b in batch)
            else:
                row[f"{precision}_ms_b{n}"] = median_ms(lambda: m.run(batch), repeats)
    metric = reports["int8"].get("checks_int8", {}).get("validation_metric", {})
    row["int8_metric"] = {k: metric.get(k) for k in ("metric", "fp32", "int8", "drop_points")}
    row["sizes_mb"] = {p: round(r["size_bytes"] / 1e6, 2) for p, r in reports.items()}
    return row


def table(rows: list[dict]) -> str:
    lines = ["| task (model, input) | batch | eager ms | ORT fp32 ms (ratio) | ORT int8 ms (ratio) | "
             "throughput img/s eager / fp32 / int8 |", "|---|---|---|---|---|---|"]
    for r in rows:
        for n in (1, 8):
            e, f, q = r[f"eager_ms_b{n}"], r[f"fp32_ms_b{n}"], r[f"int8_ms_b{n}"]
            lines.append(f"| {r['task']} ({r['model']}, {r['input']}) | {n} | {e:.2f} | {f:.2f} ({f / e:.2f}x) | "
                         f"{q:.2f} ({q / e:.2f}x) | {n * 1000 / e:.0f} / {n * 1000 / f:.0f} / {n * 1000 / q:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=0, help="train each demo model this long first (0: random weights)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "onnx"))
    args = parser.parse_args()
    out = Path(args.out)
    roots = data(out / "data")
    load_before = os.getloadavg()
    rows = [bench(t, checkpoint(t, roots, out, args.epochs, args.threads), out, args.threads, args.repeats)
            for t in args.tasks]
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "threads": args.threads,
              "weights": f"trained {args.epochs} epochs" if args.epochs else "random (seed 0)",
              "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
              "command": "python " + " ".join(sys.argv), "rows": rows}
    (out / "onnx_latency.json").write_text(json.dumps(result, indent=1))
    print(f"\n- date: {result['date']}\n- machine: {result['machine']}\n- threads: {args.threads} (torch and "
          f"onnxruntime)\n- weights: {result['weights']}\n- load average (1 min) before / after: "
          f"{result['load_average_before_after']}\n- command: `{result['command']}`\n")
    print(table(rows))
    for r in rows:
        print(f"- {r['task']}: int8 {r['int8_metric']}, file sizes MB {r['sizes_mb']}")


if __name__ == "__main__":
    main()
