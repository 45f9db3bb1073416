"""The per-worker training loop, readable top to bottom.

``train_worker`` is what each Ray Train worker (or this process, with ``num_workers: 0``) runs.
It knows nothing task-specific: the plugin supplies data, model, loss, prediction and metric.

Determinism and resume: every epoch reseeds Python, NumPy and torch from (seed, epoch, rank), and
the distributed sampler shuffles from (seed, epoch). So an epoch's randomness depends only on its
number, and a run resumed from the checkpoint of epoch k replays epoch k+1 exactly as an
uninterrupted run would: the checkpoint needs the epoch, not a snapshot of generator states.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import Config, TaskConfigs, task_configs
from ..errors import UserError
from ..fileio import atomic_torch_save, load_checkpoint
from ..plugin import Metric, TaskPlugin
from ..registry import get_plugin
from ..storage import RunStore, is_remote
from .context import LocalWorker, RayWorker
from .evalloader import build_val_loader
from .optim import build_optimizer, build_scheduler
from .runlog import RunLog, scalars

CHECKPOINT_FORMAT = 1


class TrainingDiverged(UserError):
    pass


def seed_everything(seed: int, epoch: int, rank: int) -> None:
    value = (seed * 1_000_003 + epoch * 9_973 + rank) % 2**31
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def move_to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def autocast(amp: str, device: torch.device):
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Task:
    """Everything the loop builds from a config, once per worker."""

    def __init__(self, config: dict[str, Any], source: str):
        self.cfg = Config.model_validate(config)
        self.plugin: TaskPlugin = get_plugin(self.cfg.task)
        self.sections: TaskConfigs = task_configs(self.cfg, self.plugin, source)

    def dataset(self, split: str):
        return self.plugin.build_dataset(self.sections.data, split)

    def model(self, classes: list[str]) -> torch.nn.Module:
        return self.plugin.build_model(self.sections.model, classes, self.sections.data)

    def loader(self, dataset, shuffle: bool) -> torch.utils.data.DataLoader:
        t = self.cfg.train
        return torch.utils.data.DataLoader(
            dataset, batch_size=t.batch_size, shuffle=shuffle, num_workers=t.loader_workers,
            collate_fn=self.plugin.collate, drop_last=False,
            persistent_workers=t.loader_workers > 0, pin_memory=torch.cuda.is_available())

    def val_loader(self, dataset, rank: int, world_size: int) -> torch.utils.data.DataLoader:
        t = self.cfg.train
        return build_val_loader(self.plugin, dataset, rank, world_size, t.batch_size, t.loader_workers)


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, scaler, task: Task, ctx, epoch: int):
    t = task.cfg.train
    model.train()
    # Per-step loss values are kept as detached tensors and summed once at the end: no host
    # sync per step on a GPU, and no extra tensor ops per step on a CPU.
    logged: dict[str, tuple[list[torch.Tensor], list[int]]] = {}
    images = 0
    steps = len(loader)
    on_cpu = ctx.device.type == "cpu"  # loader batches are already there
    bar = ctx.progress(steps, desc=f"epoch {epoch + 1}/{t.epochs}") if ctx.rank == 0 and t.progress else None
    for i, batch in enumerate(loader):
        if not on_cpu:
            batch = move_to(batch, ctx.device)
        step_now = (i + 1) % t.grad_accum_steps == 0 or i + 1 == steps
        no_sync = model.no_sync() if (not step_now and isinstance(model, DistributedDataParallel)) else contextlib.nullcontext()
        with no_sync:
            with autocast(t.amp, ctx.device):
                out = loss_fn(model, batch)
            loss = out.total / t.grad_accum_steps if t.grad_accum_steps > 1 else out.total
            scaler.scale(loss).backward()
        if step_now:
            if t.grad_clip_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        n = task.plugin.batch_size_of(batch)
        images += n
        if bar is not None:
            bar.update(1)
        if i == 0:
            first_step = time.time()
        for name, value in (("loss", out.total), *out.parts.items()):
            values, sizes = logged.setdefault(name, ([], []))
            values.append(value.detach())
            sizes.append(n)
    if bar is not None:
        bar.close()
    sums = {name: float(torch.stack(values).double().cpu() @ torch.tensor(sizes, dtype=torch.float64))
            for name, (values, sizes) in logged.items()}
    return sums, images, first_step


@torch.inference_mode()
def evaluate(model, loader, task: Task, metric: Metric, ctx) -> dict[str, Any]:
    model.eval()
    for batch in loader:
        batch = move_to(batch, ctx.device)
        with autocast(task.cfg.train.amp, ctx.device):
            outputs = task.plugin.predict(model, batch)
        metric.update(outputs, batch)
    metric.merge(ctx.all_gather(metric.state()))
    return metric.compute()


def _is_better(metric: Metric, value: float, best: Optional[float]) -> bool:
    if best is None:
        return True
    return value > best if metric.higher_is_better else value < best


def train_worker(job: dict[str, Any], ctx) -> None:
    task = Task(job["config"], source=f"{job['run_dir']}/config.yaml")
    # An object store: rank 0 works in a local copy of the run files and uploads each epoch's.
    store = RunStore.from_output(task.cfg.output) if is_remote(job["run_dir"]) else None
    run_dir = store.staging_dir() if store else Path(job["run_dir"])
    try:
        _train(task, run_dir, store, ctx)
    finally:
        if store is not None and ctx.rank == 0:
            shutil.rmtree(run_dir, ignore_errors=True)


def _train(task: Task, run_dir: Path, store: Optional[RunStore], ctx) -> None:
    t = task.cfg.train
    seed_everything(t.seed, -1, ctx.rank)

    train_set, val_set = task.dataset("train"), task.dataset("val")
    classes = list(train_set.classes)
    model = ctx.prepare_model(task.model(classes))
    loss_fn = task.plugin.build_loss(task.sections.loss, classes)
    train_loader = ctx.prepare_train_loader(task.loader(train_set, shuffle=True))
    val_loader = task.val_loader(val_set, ctx.rank, ctx.world_size)
    steps_per_epoch = -(-len(train_loader) // t.grad_accum_steps)
    optimizer = build_optimizer(model, t.optimizer)
    scheduler = build_scheduler(optimizer, t.scheduler, steps_per_epoch, t.epochs)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=t.amp == "fp16")

    start_epoch, best = 0, {"value": None, "epoch": None}
    state = ctx.restored_state()
    if state is not None:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best = state["epoch"] + 1, state["best"]
    placement = ctx.all_gather(ctx.describe())
    log = None
    if ctx.rank == 0:
        if store is not None:
            store.pull(run_dir)
        log = RunLog(run_dir, last_epoch=start_epoch - 1)
        log.workers(placement, start_epoch)
        group = f", process group {torch.distributed.get_backend()}" if torch.distributed.is_initialized() else ""
        print(f"[visionkit] {ctx.world_size} worker(s) on {ctx.device.type}{group}, amp {t.amp}", flush=True)
        if store is not None:
            store.push(run_dir)  # workers.json: where this attempt runs, for the driver's failure report
        if start_epoch:
            print(f"[visionkit] resuming at epoch {start_epoch + 1}/{t.epochs} from the checkpoint of epoch {start_epoch}", flush=True)

    for epoch in range(start_epoch, t.epochs):
        seed_everything(t.seed, epoch, ctx.rank)
        ctx.set_epoch(train_loader, epoch)
        tic = time.perf_counter()
        sums, images, first_step = train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler, scaler, task, ctx, epoch)
        train_time = time.perf_counter() - tic
        gathered = ctx.all_gather((sums, images))
        total_images = sum(n for _, n in gathered)
        row: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        for name in sums:
            row[f"train/{name}"] = sum(s[name] for s, _ in gathered) / total_images
        row["train/images_per_s"] = total_images / train_time
        if not np.isfinite(row["train/loss"]):
            raise TrainingDiverged(f"training loss is {row['train/loss']} at epoch {epoch + 1}: lower train.optimizer.lr or set train.grad_clip_norm")

        result = None
        metric = None
        if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
            metric = task.plugin.build_metric(classes)
            ctx.sync_buffers(unwrap(model))
            result = evaluate(unwrap(model), val_loader, task, metric, ctx)
            row.update({f"val/{k}": v for k, v in scalars(result).items()})
            value = float(result[metric.primary])
            improved = _is_better(metric, value, best["value"])
            if improved:
                best = {"value": value, "epoch": epoch}
        row["time_s"] = time.perf_counter() - tic
        # Wall-clock stamps, for time-to-accuracy and start-up benchmarks across processes.
        row["first_step_unix"], row["end_unix"] = first_step, time.time()

        state_file = None
        if ctx.rank == 0:
            # Plots cost seconds while the other workers wait: every 5th epoch and the last.
            log.epoch(row, result, plot=(epoch + 1) % 5 == 0 or epoch + 1 == t.epochs)
            is_best = result is not None and best["epoch"] == epoch
            if is_best:  # before best.pt: a crash between the two never leaves eval_best.json behind it
                log.best(result, epoch, metric.primary)
                task.plugin.write_visuals(result, classes, log.plots)
            state_file = save_checkpoint(run_dir, task, classes, unwrap(model), optimizer, scheduler, scaler, epoch, best,
                                         is_best=is_best)
            if store is not None:
                # Before Ray commits the checkpoint: the store never lags behind it.
                store.push(run_dir)
            print(summary_line(row, t.epochs, metric, best), flush=True)
        ctx.report({"epoch": epoch, **{k: v for k, v in row.items() if isinstance(v, (int, float))}}, state_file)
    if log:
        log.close()
        if store is not None:
            store.push(run_dir)


def summary_line(row: dict[str, Any], epochs: int, metric: Optional[Metric], best: dict[str, Any]) -> str:
    parts = [f"epoch {row['epoch'] + 1}/{epochs}", f"loss {row['train/loss']:.4f}"]
    if metric is not None:
        key = f"val/{metric.primary}"
        parts.append(f"{metric.primary} {row[key]:.4f} (best {best['value']:.4f} @ epoch {best['epoch'] + 1})")
    parts += [f"lr {row['lr']:.3g}", f"{row['train/images_per_s']:.0f} img/s", f"{row['time_s']:.1f}s"]
    return "[visionkit] " + "  ".join(parts)


def save_checkpoint(run_dir: Path, task: Task, classes, model, optimizer, scheduler, scaler, epoch: int,
                    best: dict[str, Any], is_best: bool) -> Path:
    """``last.pt`` atomically every epoch; ``best.pt`` a hard link to it when it is the best."""
    ckpt_dir = run_dir / "checkpoints"
    state = {
        "format": CHECKPOINT_FORMAT, "task": task.cfg.task, "classes": classes, "epoch": epoch,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "best": best,
        "config": task.cfg.model_dump(mode="json") | {
            name: getattr(task.sections, name).model_dump(mode="json") for name in ("data", "model", "loss")},
    }
    last = ckpt_dir / "last.pt"
    atomic_torch_save(state, last)
    if is_best:
        tmp = ckpt_dir / ".best.pt.tmp"
        tmp.unlink(missing_ok=True)
        os.link(last, tmp)
        os.replace(tmp, ckpt_dir / "best.pt")
    return last


def eval_worker(job: dict[str, Any], ctx) -> None:
    """Evaluates a checkpoint's weights on the config's validation split; rank 0 writes JSON."""
    task = Task(job["config"], source=job["source"])
    state = load_checkpoint(Path(job["checkpoint"]))
    val_set = task.dataset("val")
    classes = list(state["classes"])
    model = task.model(classes)
    model.load_state_dict(state["model"])
    model = model.to(ctx.device)
    metric = task.plugin.build_metric(classes)
    result = evaluate(model, task.val_loader(val_set, ctx.rank, ctx.world_size), task, metric, ctx)
    if ctx.rank == 0:
        import json

        from ..fileio import atomic_write_text

        payload = {"checkpoint": job["checkpoint"], "epoch": state["epoch"], "num_images": len(val_set),
                   "workers": ctx.world_size, "primary": metric.primary, **result}
        atomic_write_text(Path(job["output"]), json.dumps(payload, indent=1))
    ctx.report({}, None)


# --- entry points for Ray Train workers (module-level so Ray can pickle them by reference) ---

def _endpoint(job: dict[str, Any]) -> Optional[str]:
    return job["config"].get("output", {}).get("s3_endpoint")


def ray_train_entry(job: dict[str, Any]) -> None:
    train_worker(job, RayWorker(job.get("resume_from"), _endpoint(job)))


def ray_eval_entry(job: dict[str, Any]) -> None:
    eval_worker(job, RayWorker())


def local_train(job: dict[str, Any], use_gpu: bool) -> None:
    train_worker(job, LocalWorker(use_gpu, job.get("resume_from"), _endpoint(job)))


def local_eval(job: dict[str, Any], use_gpu: bool) -> None:
    eval_worker(job, LocalWorker(use_gpu))
