"""In-process time-to-accuracy loop for the detection plugin (no Ray), used to tune the demo.

Builds everything through the plugin exactly as the trainer does, with the core's optimizer and
LR schedule; one process with ``--threads`` threads and ``--batch`` images per step stands in
for N Ray workers with batch/N each. Prints one line per evaluated epoch:
``epoch, wall seconds since start, mAP50, mAP``.

    python benchmarks/detection_tune.py configs/detection/shapes.yaml --batch 32 --threads 2 \\
        --set train.epochs=40
"""

from __future__ import annotations

import argparse
import json
import time

T0 = time.perf_counter()

import torch  # noqa: E402

from visionkit.config import load_config, task_configs  # noqa: E402
from visionkit.registry import get_plugin  # noqa: E402
from visionkit.train.optim import LRSchedule, build_optimizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides a.b=c")
    ap.add_argument("--batch", type=int, default=None, help="images per step (default: train.batch_size x ray.num_workers)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stop-at", type=float, default=None, help="stop once mAP50 reaches this")
    ap.add_argument("--out", default=None, help="write the curve as JSON here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    cfg, _ = load_config(args.config, args.set)
    plugin = get_plugin(cfg.task)
    from pathlib import Path

    sec = task_configs(cfg, plugin, args.config, base=Path.cwd())
    t = cfg.train
    torch.manual_seed(t.seed)
    train_set, val_set = plugin.build_dataset(sec.data, "train"), plugin.build_dataset(sec.data, "val")
    classes = train_set.classes
    batch = args.batch or t.batch_size * max(1, cfg.ray.num_workers)
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch, shuffle=True, collate_fn=plugin.collate)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=t.batch_size, collate_fn=plugin.collate)
    model = plugin.build_model(sec.model, classes)
    loss_fn = plugin.build_loss(sec.loss, classes)
    opt = build_optimizer(model, t.optimizer)
    sched = LRSchedule(opt, t.scheduler, t.optimizer.lr, t.epochs)
    curve = []
    print(f"setup {time.perf_counter() - T0:.1f}s, {len(loader)} steps/epoch of {batch}", flush=True)
    for epoch in range(t.epochs):
        model.train()
        sums: dict[str, float] = {}
        for i, b in enumerate(loader):
            sched.set(epoch + i / len(loader))
            out = loss_fn(model, b)
            opt.zero_grad(set_to_none=True)
            out.total.backward()
            if t.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip_norm)
            opt.step()
            for k, v in {"loss": out.total, **out.parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v) / len(loader)
        line = f"epoch {epoch + 1:3d} {time.perf_counter() - T0:7.1f}s " + " ".join(f"{k} {v:.3f}" for k, v in sums.items())
        if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
            model.eval()
            metric = plugin.build_metric(classes)
            with torch.inference_mode():
                for b in val_loader:
                    metric.update(plugin.predict(model, b), b)
            metric.merge([metric.state()])
            r = metric.compute()
            wall = time.perf_counter() - T0
            curve.append({"epoch": epoch + 1, "wall_s": round(wall, 1), "mAP50": round(r["mAP50"], 4), "mAP": round(r["mAP"], 4)})
            line += f" | {wall:6.1f}s mAP50 {r['mAP50']:.4f} mAP {r['mAP']:.4f}"
            print(line, flush=True)
            if args.stop_at is not None and r["mAP50"] >= args.stop_at:
                break
        else:
            print(line, flush=True)
    print("per-class AP50:", {k: round(v, 3) for k, v in r["per_class_AP50"].items()}, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(curve, indent=1))


if __name__ == "__main__":
    main()
