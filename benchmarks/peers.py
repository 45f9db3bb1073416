"""visionkit and a peer on the same data, the same machine, one after the other (issue 13).

    .venv/bin/python benchmarks/peers.py {classification,detection,segmentation,all}
        [--epochs N] [--peer-epochs N[,M...]] [--data DIR] [--repeats N] [--quick] [KEY=VALUE ...]

Each side runs in a fresh subprocess; the clock starts just before the subprocess is started
(the command's start, as a user waits for it) and every epoch's validation result is stamped
with the wall clock when it is known. Printed: time to the target, time to the first training
step, the final and best metric, the visionkit / peer ratios, and both per-epoch curves; the
same as JSON in benchmarks/out/peers-<task>.json (peers-<task>-quick.json with --quick).

* classification: configs/classification/shapes.yaml vs peer_classification.py (torchvision
  ResNet-18 in a plain loop); target top-1 >= 0.95; bar: visionkit <= 1.25x the peer's time.
* detection: configs/detection/shapes.yaml vs peer_yolo.py (Ultralytics YOLOv8n from scratch);
  target mAP50 >= 0.85; bar: visionkit sooner, and a higher final COCO mAP.
* segmentation: configs/segmentation/shapes.yaml vs peer_segmentation.py (torchvision LR-ASPP,
  MobileNetV3-Large, in a plain loop); target mIoU >= 0.75; bar: visionkit sooner.

KEY=VALUE arguments are visionkit overrides (`train.batch_size=32`); the torchvision peers follow
the resolved config where they share a setting: global batch (batch_size x the run's worker count
x grad_accum_steps), AdamW lr and weight decay (none on norms and biases), linear warmup (epochs,
start factor) then cosine to 0, set every step, epochs, seed, the classifier's normalisation and
image size, the segmentation loss's class weights. YOLO keeps Ultralytics' own recipe.

`--epochs N` sets both sides' epochs; `--peer-epochs` only the peer's, and a list (`30,50`) runs
the peer once per budget and compares visionkit with the budget that reached the target soonest
(YOLO's default: 30 and 50, since its LR schedule and mosaic switch-off follow the epoch count).
`--repeats N` runs N rounds, alternating which side goes first, and reports medians. `--quick`
is a smoke mode: tiny data (written to benchmarks/out/peers-quick/), 2 epochs, to check that the
script works; its numbers mean nothing.

Threads: the torchvision peers use torch.set_num_threads(all cores); YOLO gets the same (its own
default on a CPU is cores - 1, so 1 on 2 cores); visionkit sizes its own Ray workers (the demos:
`ray.num_workers: auto`, one worker with all cores on a CPU machine).

Metrics, the same definition on both sides:
* classification: top-1 on the val split after every epoch.
* detection: COCO box mAP and mAP50 from pycocotools against annotations/instances_val.json.
  visionkit's is its own metric (predictions gathered, pycocotools once), inside the run. YOLO's
  is computed after training from the checkpoint Ultralytics saved at each epoch (save_period=1,
  EMA weights), predicting at conf 0.001, NMS IoU 0.7, 100 boxes per image, scored by the same
  pycocotools; each point sits at the wall time that epoch ended in the timed run (after
  Ultralytics' own validation and checkpoint save, which stay in its time as visionkit's
  evaluation stays in visionkit's). The scoring itself is not timed for YOLO; for visionkit it is
  part of its per-epoch evaluation (well under a second for 100 images).
* segmentation: mIoU over every class, background included, from one confusion matrix; a class
  with an empty union is left out of the mean (plugins/segmentation/metric.py).

The detection peer runs in its own venv, never in the project's dependencies. peers.py creates
it when it is missing (or lacks Ultralytics), with exactly:

    .venv/bin/python -m venv benchmarks/.venv-peers    # the project venv's Python; no system site-packages
    benchmarks/.venv-peers/bin/pip install torch==2.14.1 torchvision==0.29.1 ultralytics pycocotools

On the project's machine (2026-11-30) this installed ultralytics 8.4.190 with opencv-python,
polars, matplotlib and torch's CUDA build (6 GB in all) from the project's package index, with no
workaround needed (no --no-deps). The torchvision peers run in the project venv (torch 2.14.1,
torchvision 0.29.1). benchmarks/_yolo.py converts the COCO json to the YOLO layout before the
timed runs (benchmarks/out/peers-work/yolo-<data>/).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from _common import REPO, machine, timed_train

OUT = REPO / "benchmarks" / "out"
WORK = OUT / "peers-work"
VENV = REPO / "benchmarks" / ".venv-peers"
VENV_PYTHON = VENV / "bin" / "python"
PEER_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "ultralytics", "pycocotools"]
QUICK_EPOCHS = 2
DEFAULT_YOLO_EPOCHS = [30, 50]  # Ultralytics' schedule and mosaic close follow the budget: two tries

TASKS: dict[str, dict[str, Any]] = {
    "classification": {"metric": "top1", "target": 0.95, "data": "synth classification", "quick": (160, 40),
                       "peer": "plain torchvision resnet18 script (benchmarks/peer_classification.py)"},
    "detection": {"metric": "mAP50", "target": 0.85, "final": "mAP", "data": "synth scenes", "quick": (48, 16),
                  "peer": "Ultralytics YOLOv8n from scratch (benchmarks/peer_yolo.py)"},
    "segmentation": {"metric": "mIoU", "target": 0.75, "data": "synth scenes", "quick": (48, 16),
                     "peer": "plain torchvision lraspp_mobilenet_v3_large script (benchmarks/peer_segmentation.py)"},
}


# --- setup ------------------------------------------------------------------------------------

def ensure_data(task: str, args) -> Path:
    """The data folder: --data, else the config's data.root (quick: a tiny copy); written when missing."""
    spec = TASKS[task]
    kind = spec["data"].split()[1]
    if args.quick and not args.data:
        root = OUT / "peers-quick" / ("shapes_cls" if kind == "classification" else "shapes_scenes")
    elif args.data:
        root = Path(args.data).resolve()
    else:
        root = Path(load_config(task, args, args.overrides)[1].data.root)
    marker = root / ("val" if kind == "classification" else "annotations/instances_val.json")
    if not marker.exists():
        cmd = [sys.executable, "-m", "visionkit.cli", "data", "synth", kind, str(root)]
        if args.quick:
            cmd += ["--num-train", str(spec["quick"][0]), "--num-val", str(spec["quick"][1])]
        print(f"[peers] writing the data: {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)
    return root


def load_config(task: str, args, overrides: list[str]):
    from visionkit.config import load_config as load, task_configs
    from visionkit.registry import get_plugin

    path = Path(args.config).resolve() if args.config else REPO / "configs" / task / "shapes.yaml"
    cfg, _ = load(path, overrides)
    if cfg.task != task:
        raise SystemExit(f"{path}: task {cfg.task!r}, not {task!r}")
    return cfg, task_configs(cfg, get_plugin(task), str(path), base=REPO), path


def ensure_peer_venv() -> str:
    """benchmarks/.venv-peers with Ultralytics; returns its Ultralytics version."""
    probe = [str(VENV_PYTHON), "-c",
             "import torch, ultralytics, pycocotools; print(ultralytics.__version__, torch.__version__)"]
    if VENV_PYTHON.exists():
        found = subprocess.run(probe, capture_output=True, text=True)
        if found.returncode == 0:
            return found.stdout.strip()
    print(f"[peers] creating {VENV.relative_to(REPO)} (Ultralytics and torch: several minutes, about 6 GB)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", *PEER_PACKAGES], check=True)
    return subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()


def schedule_args(cfg, workers: int) -> tuple[list[str], list[str]]:
    """The peer's batch/optimizer/schedule arguments from visionkit's resolved config and its run's
    worker count (``ray.num_workers: auto`` is resolved by the run), and notes on whatever the
    plain peers do not reproduce."""
    t, notes = cfg.train, []
    batch = t.batch_size * max(workers, 1) * t.grad_accum_steps
    notes.append(f"global batch {batch} = {t.batch_size} per worker x {workers} visionkit worker(s)"
                 + (f" x {t.grad_accum_steps} accumulation steps" if t.grad_accum_steps > 1 else ""))
    if t.optimizer.name != "adamw":
        notes.append(f"visionkit uses {t.optimizer.name}; the peer script uses AdamW")
    if t.scheduler.name != "cosine" or t.scheduler.min_lr_factor:
        notes.append("visionkit's schedule is not warmup + cosine to 0; the peer's is")
    if t.amp != "off" or t.grad_clip_norm:
        notes.append("visionkit uses amp or gradient clipping; the peer does not")
    return ["--batch-size", str(batch), "--lr", str(t.optimizer.lr), "--weight-decay", str(t.optimizer.weight_decay),
            "--warmup-epochs", str(t.scheduler.warmup_epochs), "--warmup-start-factor",
            str(t.scheduler.warmup_start_factor), "--seed", str(t.seed)], notes


def peer_command(task: str, cfg, sections, data: Path, epochs: int, args, log: Path,
                 workers: int) -> tuple[list[str], list[str]]:
    """The peer's command line, and notes on how it differs from the visionkit run."""
    here = REPO / "benchmarks"
    if task == "detection":
        d = sections.data
        if d.format != "coco":
            raise SystemExit("detection peer: data.format must be coco")
        images = d.train_images.replace("train", "{split}")
        annotations = d.train_annotations.replace("train", "{split}")
        if images.format(split="val") != d.val_images or annotations.format(split="val") != d.val_annotations:
            raise SystemExit("detection peer: the val paths must be the train paths with 'train' -> 'val'")
        yolo_data = _yolo().convert(data, WORK / f"yolo-{data.name}", images=images, annotations=annotations)
        cmd = [str(VENV_PYTHON), str(here / "peer_yolo.py"), "--data-yaml", str(yolo_data),
               "--coco-val", str(data / d.val_annotations), "--val-images", str(data / d.val_images),
               "--log", str(log), "--project", str(WORK / "yolo-run"), "--epochs", str(epochs),
               "--imgsz", str(sections.model.max_size or 128), "--batch", str(args.yolo_batch),
               "--threads", str(args.threads), "--seed", str(cfg.train.seed)]
        cmd += [x for kv in args.yolo_arg for x in ("--train-arg", kv)]
        notes = [f"YOLO trains with Ultralytics' own recipe (optimizer 'auto', its warmup, LR schedule, mosaic "
                 f"and other augmentation, nominal batch 64 by gradient accumulation, EMA) at batch {args.yolo_batch}, "
                 f"imgsz {cmd[cmd.index('--imgsz') + 1]}, {args.threads} torch threads; visionkit with its config's"]
        return cmd, notes
    sched, notes = schedule_args(cfg, workers)
    d = sections.data
    if task == "classification":
        if d.format != "imagefolder":
            raise SystemExit("classification peer: data.format must be imagefolder")
        flips = {"HorizontalFlip", "VerticalFlip"}
        if {s.get("name") for s in d.train_transforms} != flips or d.val_transforms:
            notes.append(f"visionkit's transforms {d.train_transforms} / {d.val_transforms}; the peer: horizontal + "
                         "vertical flips (p 0.5) on train, none on val")
        cmd = [sys.executable, str(here / "peer_classification.py"), "--root", str(data), "--log", str(log),
               "--epochs", str(epochs), *sched, "--image-size", str(d.image_size or 0),
               "--mean", *map(str, d.mean), "--std", *map(str, d.std)]
        return cmd, notes
    if d.format != "masks" or d.images != "images/{split}" or d.masks != "masks/{split}":
        raise SystemExit("segmentation peer: reads images/{split}/ and masks/{split}/ (data.format: masks)")
    loss = sections.loss
    cmd = [sys.executable, str(here / "peer_segmentation.py"), "--root", str(data), "--log", str(log),
           "--epochs", str(epochs), *sched]
    if loss.class_weights:
        cmd += ["--class-weights", *map(str, loss.class_weights)]
    aux = loss.aux_weight if getattr(sections.model, "aux_loss", False) else 0
    notes.append(f"the peer's loss: cross-entropy{' with the same class weights' if loss.class_weights else ''}; "
                 f"visionkit's adds aux {aux} and Dice {loss.dice_weight}; "
                 "the peer normalises with ImageNet mean/std, visionkit's U-Net inside the model")
    return cmd, notes


def _yolo():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import _yolo

    return _yolo


# --- running ----------------------------------------------------------------------------------

def run_visionkit(task: str, config: Path, overrides: list[str]) -> dict[str, Any]:
    spec = TASKS[task]
    load = os.getloadavg()[0]
    start, rows, stdout = timed_train([str(config), *overrides])
    end = time.time()
    # The run's own worker count (ray.num_workers may be auto): its workers.json, last attempt
    run_dir = Path(next(line.split("run directory ", 1)[1].strip() for line in stdout.splitlines()
                        if "run directory" in line))
    workers = len(json.loads((run_dir / "workers.json").read_text())["attempts"][-1]["workers"])
    curve = []
    for r in rows:
        if f"val/{spec['metric']}" not in r:
            continue
        point = {"epoch": r["epoch"] + 1, "wall_s": round(r["end_unix"] - start, 2),
                 "metric": r[f"val/{spec['metric']}"]}
        if "final" in spec:
            point[spec["final"]] = r[f"val/{spec['final']}"]
        curve.append(point)
    (WORK / f"visionkit-{task}.log").write_text(stdout)
    return {"side": "visionkit", "run_dir": str(run_dir), "workers": workers, "load_avg_1m_before": load,
            "first_step_s": round(rows[0]["first_step_unix"] - start, 2), "total_s": round(end - start, 2),
            "curve": curve,
            "images_per_s": [round(r["train/images_per_s"], 1) for r in rows]}


def run_peer(task: str, cmd: list[str], log: Path) -> dict[str, Any]:
    spec = TASKS[task]
    log.unlink(missing_ok=True)
    out = log.with_suffix(".log")
    load = os.getloadavg()[0]
    start = time.time()
    with open(out, "w") as fh:
        proc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    end = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"peer failed ({' '.join(cmd)}):\n{out.read_text()[-3000:]}")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    first = next(e["unix"] for e in events if e["event"] == "first_step")
    own = {e["epoch"]: e["yolo_metrics"] for e in events if e["event"] == "yolo_epoch"}
    curve = []
    for e in events:
        if e["event"] == "epoch":
            point = {"epoch": e["epoch"] + 1, "wall_s": round(e["unix"] - start, 2), "metric": e["metric"]}
            if "final" in spec:
                point[spec["final"]] = e[spec["final"]]
            if e["epoch"] in own:  # Ultralytics' own validation figures, for reference
                point["ultralytics_mAP50"] = own[e["epoch"]].get("metrics/mAP50(B)")
                point["ultralytics_mAP50_95"] = own[e["epoch"]].get("metrics/mAP50-95(B)")
            curve.append(point)
    run = {"side": "peer", "load_avg_1m_before": load, "first_step_s": round(first - start, 2), "curve": curve}
    train_end = next((e["unix"] for e in events if e["event"] == "train_end"), None)
    # YOLO: the training run's end (after its final validation), not the untimed scoring after it
    run["total_s"] = round((train_end or end) - start, 2)
    done = next((e for e in events if e["event"] == "done"), None)
    if done is not None:
        run["network_attempts"] = done["network_attempts"]
        run["yolo_train_args"] = next((e["args"] for e in events if e["event"] == "train_args"), None)
    return run


def reached(run: dict[str, Any], target: float) -> Optional[dict[str, Any]]:
    return next((p for p in run["curve"] if p["metric"] >= target), None)


def describe(run: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    hit = reached(run, spec["target"])
    last = run["curve"][-1] if run["curve"] else {}
    out = {"first_step_s": run["first_step_s"], "time_to_target_s": hit and hit["wall_s"],
           "target_epoch": hit and hit["epoch"], "final": last.get("metric"),
           "best": max((p["metric"] for p in run["curve"]), default=None), "epochs": last.get("epoch"),
           "total_s": run["total_s"]}
    if "final" in spec:
        out[f"final_{spec['final']}"] = last.get(spec["final"])
    return out


def median(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    if not values:
        return None
    mid = statistics.median(values)
    return int(mid) if all(isinstance(v, int) for v in values) and mid == int(mid) else round(mid, 4)


def side_summary(runs: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    """Medians over repeats; time to target over the runs that reached it (counted)."""
    ds = [describe(r, spec) for r in runs]
    out = {key: median([d[key] for d in ds]) for key in ds[0]}
    out["reached_target"] = f"{sum(d['time_to_target_s'] is not None for d in ds)}/{len(ds)} runs"
    return out


def summarise(task: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = TASKS[task]
    vk = side_summary([r for r in runs if r["side"] == "visionkit"], spec)
    budgets = sorted({r["peer_epochs"] for r in runs if r["side"] == "peer"})
    peers = {b: side_summary([r for r in runs if r["side"] == "peer" and r["peer_epochs"] == b], spec) for b in budgets}
    inf = float("inf")
    # The peer at its best: the epoch budget that reached the target soonest (else the best final metric)
    chosen = min(budgets, key=lambda b: (peers[b]["time_to_target_s"] or inf, -(peers[b]["final"] or 0)))
    peer = peers[chosen]
    ratio = lambda a, b: round(a / b, 3) if a is not None and b else None  # noqa: E731
    summary = {"target": f"{spec['metric']} >= {spec['target']}", "visionkit": vk,
               "peer": {"epochs_budget": chosen, **peer}, "peer_by_epochs": {str(b): peers[b] for b in budgets},
               "ratio_time_to_target": ratio(vk["time_to_target_s"], peer["time_to_target_s"]),
               "ratio_first_step": ratio(vk["first_step_s"], peer["first_step_s"])}
    vt, pt = vk["time_to_target_s"], peer["time_to_target_s"]
    sooner = vt is not None and (pt is None or vt < pt)
    if task == "classification":
        summary["bar"] = "visionkit <= 1.25x the peer's time to target"
        summary["bar_met"] = vt is not None and (pt is None or vt <= 1.25 * pt)
    elif task == "detection":
        best_final = max((peers[b]["final_mAP"] or 0) for b in budgets)
        summary["bar"] = ("visionkit reaches the target sooner than the peer's fastest epoch budget, and ends with a "
                          "higher COCO mAP than the peer's best final mAP over its budgets")
        summary["bar_met"] = sooner and (vk["final_mAP"] or 0) > best_final
        # Each peer budget's mAP when visionkit had finished (its last epoch, first round): same wall clock
        budget_s = next(r for r in runs if r["side"] == "visionkit")["curve"][-1]["wall_s"]
        summary["peer_at_visionkit_end"] = {}
        for b in budgets:
            curve = next(r for r in runs if r["side"] == "peer" and r["peer_epochs"] == b)["curve"]
            within = [p for p in curve if p["wall_s"] <= budget_s]
            summary["peer_at_visionkit_end"][str(b)] = {
                "wall_s": budget_s, "epoch": within[-1]["epoch"] if within else None,
                "mAP": within[-1]["mAP"] if within else None, "mAP50": within[-1]["metric"] if within else None}
    else:
        summary["bar"] = "visionkit reaches the target sooner"
        summary["bar_met"] = sooner
    return summary


def fmt(v, digits=1):
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def print_report(task: str, result: dict[str, Any]) -> None:
    spec, s = TASKS[task], result["summary"]
    m = spec["metric"]
    print(f"\n## peers: {task}: visionkit vs {spec['peer']}\n")
    print(f"- date: {result['date']}\n- machine: {result['machine']}\n- command: `{result['command']}`")
    print(f"- data: {result['data']}; repeats: {result['repeats']}; load average (1 min) before each run: "
          + ", ".join(f"{r['side']} {r['load_avg_1m_before']:.1f}" for r in result["runs"]))
    head = f"| side | first step s | {m} >= {spec['target']} at s (epoch) | final {m} | best {m} |"
    extra = f" final {spec['final']} |" if "final" in spec else ""
    print(f"\n{head}{extra} epochs | total s | reached |\n|---|---|---|---|---|{'---|' if extra else ''}---|---|---|")
    rows = [("visionkit", s["visionkit"])]
    for b, d in s["peer_by_epochs"].items():
        mark = " (compared)" if len(s["peer_by_epochs"]) > 1 and int(b) == s["peer"]["epochs_budget"] else ""
        rows.append((f"peer, {b} epochs{mark}", d))
    for name, d in rows:
        cells = [name, fmt(d["first_step_s"]), f"{fmt(d['time_to_target_s'])} ({fmt(d['target_epoch'])})",
                 fmt(d["final"], 4), fmt(d["best"], 4)]
        if extra:
            cells.append(fmt(d[f"final_{spec['final']}"], 4))
        cells += [fmt(d["epochs"]), fmt(d["total_s"]), d["reached_target"]]
        print("| " + " | ".join(cells) + " |")
    print(f"\nvisionkit / peer: time to target **{fmt(s['ratio_time_to_target'], 3)}**, "
          f"first step {fmt(s['ratio_first_step'], 3)}; bar ({s['bar']}): **{'met' if s['bar_met'] else 'NOT met'}**")
    for b, p in s.get("peer_at_visionkit_end", {}).items():
        print(f"peer ({b} epochs) when visionkit ended ({fmt(p['wall_s'])} s): epoch {fmt(p['epoch'])}, "
              f"mAP50 {fmt(p['mAP50'], 4)}, mAP {fmt(p['mAP'], 4)}")
    for run in result["runs"]:
        last = run["curve"][-1] if run["side"] == "peer" and run["curve"] else {}
        if last.get("ultralytics_mAP50") is not None:  # a sanity check of the pycocotools scoring
            print(f"peer ({run['peer_epochs']} epochs, round {run['round']}), last epoch: pycocotools mAP50 "
                  f"{last['metric']:.4f} / mAP {last['mAP']:.4f}; Ultralytics' own validation: mAP50 "
                  f"{last['ultralytics_mAP50']:.4f} / mAP50-95 {last['ultralytics_mAP50_95']:.4f}")
        if run.get("network_attempts"):
            print(f"WARNING: the peer tried the network (blocked): {run['network_attempts']}")
    # the first round's curves, side by side by epoch
    curves = [("visionkit", next(r for r in result["runs"] if r["side"] == "visionkit")["curve"])]
    for b in s["peer_by_epochs"]:
        run = next(r for r in result["runs"] if r["side"] == "peer" and str(r["peer_epochs"]) == b)
        curves.append((f"peer {b} ep", run["curve"]))
    print("\n| epoch | " + " | ".join(f"{name} s | {m}" for name, _ in curves) + " |")
    print("|---|" + "---|---|" * len(curves))
    for i in range(max(len(c) for _, c in curves)):
        cells = []
        for _, c in curves:
            point = c[i] if i < len(c) else None
            cells += [fmt(point and point["wall_s"]), fmt(point and point["metric"], 4)]
        epoch = next(c[i]["epoch"] for _, c in curves if i < len(c))
        print(f"| {epoch} | " + " | ".join(cells) + " |")
    print()
    for note in result["notes"]:
        print(f"- {note}")


def run_task(task: str, args) -> dict[str, Any]:
    spec = TASKS[task]
    WORK.mkdir(parents=True, exist_ok=True)
    data = ensure_data(task, args)
    epochs = args.epochs or (QUICK_EPOCHS if args.quick else None)
    overrides = [f"data.root={data}", f"output.storage_path={WORK / 'runs'}", *args.overrides]
    if epochs:
        overrides.append(f"train.epochs={epochs}")
    cfg, sections, config = load_config(task, args, overrides)
    if args.peer_epochs:
        budgets = [int(b) for b in args.peer_epochs.split(",")]
    else:
        budgets = [epochs] if epochs else (DEFAULT_YOLO_EPOCHS if task == "detection" else [cfg.train.epochs])
    versions = {}
    if task == "detection":
        versions["ultralytics, torch (peer venv)"] = ensure_peer_venv()
    commands: dict[int, list[str]] = {}
    notes = ["wall seconds from just before each subprocess starts to the end of the epoch's evaluation; first step: "
             "the end of the first training step (YOLO: its first batch, which is an optimizer step in its warmup)"]
    if len(budgets) > 1:
        notes.append(f"the peer ran with {len(budgets)} epoch budgets ({', '.join(map(str, budgets))}); the summary "
                     "compares visionkit with the one that reached the target soonest (else: the best final metric)")
    runs = []
    for r in range(args.repeats):
        order = [("visionkit", None)] + [("peer", b) for b in budgets]
        for side, budget in (order if r % 2 == 0 else order[::-1]):
            if runs:
                time.sleep(args.gap)  # let the previous run's processes (Ray's) go away
            print(f"[peers] {task}: round {r + 1}/{args.repeats}, {side}"
                  + (f" ({budget} epochs)" if budget else ""), flush=True)
            if side == "visionkit":
                run = run_visionkit(task, config, overrides)
            else:  # built after the first visionkit run (always round 1's first), which tells its worker count
                log = WORK / f"peer-{task}-{budget}ep.jsonl"
                if budget not in commands:
                    commands[budget], more = peer_command(task, cfg, sections, data, budget, args, log,
                                                          runs[0]["workers"])
                    notes += [n for n in more if n not in notes]
                run = run_peer(task, commands[budget], log)
                run["peer_epochs"] = budget
            run["round"] = r + 1
            runs.append(run)
    result = {"task": task, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
              "command": "python " + " ".join(sys.argv), "data": str(data), "quick": args.quick,
              "repeats": args.repeats, "visionkit": {"config": str(config), "overrides": overrides},
              "peer": {"what": spec["peer"], "commands": {str(b): c for b, c in commands.items()}, **versions},
              "notes": notes, "runs": runs, "summary": summarise(task, runs)}
    name = f"peers-{task}{'-quick' if args.quick else ''}.json"
    (OUT / name).write_text(json.dumps(result, indent=1))
    print_report(task, result)
    print(f"\n(JSON: {(OUT / name).relative_to(REPO)})", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=[*TASKS, "all"])
    parser.add_argument("overrides", nargs="*", help="visionkit KEY=VALUE overrides (the peers follow them)")
    parser.add_argument("--config", help="visionkit config (default: configs/<task>/shapes.yaml)")
    parser.add_argument("--epochs", type=int, help="both sides' epochs (default: the config's; YOLO: %s)"
                        % ",".join(map(str, DEFAULT_YOLO_EPOCHS)))
    parser.add_argument("--peer-epochs", help="the peer's epochs only; a comma-separated list runs one peer per "
                        "budget and compares with the fastest")
    parser.add_argument("--data", help="data folder (default: the config's data.root; written when missing)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds, alternating which side goes first")
    parser.add_argument("--gap", type=float, default=5.0, help="seconds between runs")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="YOLO's torch threads (default: all cores)")
    parser.add_argument("--yolo-batch", type=int, default=16)
    parser.add_argument("--yolo-arg", action="append", default=[], help="KEY=VALUE for Ultralytics' train()")
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny data, %d epochs" % QUICK_EPOCHS)
    args = parser.parse_args()
    try:
        import visionkit  # noqa: F401
    except ImportError:
        parser.error("run with the project's venv: .venv/bin/python benchmarks/peers.py ...")
    if args.task == "all" and (args.config or args.data or args.overrides):
        parser.error("--config, --data and overrides apply to one task; run the tasks one by one")
    for task in TASKS if args.task == "all" else [args.task]:
        run_task(task, args)


if __name__ == "__main__":
    main()
