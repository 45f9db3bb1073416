"""The per-worker training loop, readable top to bottom.

``train_worker`` is what each Ray Train worker (or this process, with ``num_workers: 0``) runs.
It knows nothing task-specific: the plugin supplies data, model, loss, prediction and metric.

Determinism and resume: every epoch reseeds Python, NumPy and torch from (seed, epoch, rank) for
the model's own randomness (dropout); the sampler shuffles from (seed, epoch) and reseeds every
sample's augmentation from (seed, epoch, index) (:mod:`.sampling`). So an epoch's randomness
depends only on its number, and a run resumed from the checkpoint of epoch k replays epoch k+1
exactly as an uninterrupted run would: the checkpoint needs the epoch, not generator states.
The LR is a function of the fraction of training done (:mod:`.optim`), so it survives a resume
with another worker count or batch size.
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

from .. import checkpoint, tracking
from ..config import Config, TaskConfigs, task_configs
from ..errors import UserError
from ..plugin import Metric, TaskPlugin, check_metric_result
from ..registry import get_plugin
from ..storage import RunStore, is_remote
from . import syncbn
from .context import LocalWorker, RayWorker
from .early_stopping import EarlyStopping
from .ema import EMA, resume_weights
from .evalloader import build_val_loader
from .optim import LRSchedule, build_optimizer, load_optimizer_state
from .runlog import RunLog, scalars
from .sampling import SeededSampler, SeededSamples


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
        self.show_progress = self.cfg.train.progress

    def dataset(self, split: str):
        return self.plugin.build_dataset(self.sections.data, split)

    def model(self, classes: list[str], initial_weights: bool = True) -> torch.nn.Module:
        """``initial_weights=False`` when a checkpoint's weights will replace them anyway."""
        section = self.sections.model if initial_weights else checkpoint.without_initial_weights(self.sections.model)
        return self.plugin.build_model(section, classes, self.sections.data)

    def train_loader(self, dataset, rank: int, world_size: int) -> torch.utils.data.DataLoader:
        t = self.cfg.train
        if getattr(self.sections.data, "balanced_sampling", False):
            from .balanced import build_sampler

            sampler = build_sampler(self.plugin, dataset, t.seed, rank, world_size)
        else:
            sampler = SeededSampler(dataset, t.seed, rank, world_size)
        if getattr(dataset, "random_samples", True):
            dataset = SeededSamples(dataset)
        else:  # a dataset without augmentation: the per-sample seed would cost more than reading the sample
            sampler = sampler.inner
        return torch.utils.data.DataLoader(
            dataset, batch_size=t.batch_size, sampler=sampler, num_workers=t.loader_workers,
            collate_fn=self.plugin.collate, drop_last=False,
            persistent_workers=t.loader_workers > 0, pin_memory=torch.cuda.is_available())

    def val_loader(self, dataset, rank: int, world_size: int) -> torch.utils.data.DataLoader:
        t = self.cfg.train
        return build_val_loader(self.plugin, dataset, rank, world_size, t.batch_size, t.loader_workers)


def train_one_epoch(model, loader, loss_fn, optimizer, schedule: LRSchedule, scaler, task: Task, ctx, epoch: int,
                    ema: Optional[EMA] = None):
    t = task.cfg.train
    accum = t.grad_accum_steps
    model.train()
    # Per-step loss values are kept as detached tensors and summed once at the end: no host
    # sync per step on a GPU, and no extra tensor ops per step on a CPU.
    logged: dict[str, tuple[list[torch.Tensor], list[int]]] = {}
    images = 0
    steps = len(loader)
    updates = -(-steps // accum)  # optimizer steps this epoch
    on_cpu = ctx.device.type == "cpu"  # loader batches are already there
    bar = ctx.progress(steps, desc=f"epoch {epoch + 1}/{t.epochs}") if ctx.rank == 0 and task.show_progress else None
    for i, batch in enumerate(loader):
        if not on_cpu:
            batch = move_to(batch, ctx.device)
        group = i // accum
        # The last group of an epoch may be short: each of its batches weighs 1/len(group).
        group_len = min(accum, steps - group * accum)
        step_now = (i + 1) % accum == 0 or i + 1 == steps
        no_sync = model.no_sync() if (not step_now and isinstance(model, DistributedDataParallel)) else contextlib.nullcontext()
        with no_sync:
            with autocast(t.amp, ctx.device):
                out = loss_fn(model, batch)
            loss = out.total / group_len if group_len > 1 else out.total
            scaler.scale(loss).backward()
        if step_now:
            schedule.set(epoch + group / updates)
            if t.grad_clip_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(unwrap(model))
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
    task.show_progress = job.get("progress", task.show_progress)
    # An object store: rank 0 works in a local copy of the run files and uploads each epoch's.
    store = RunStore.from_output(task.cfg.output) if is_remote(job["run_dir"]) else None
    run_dir = store.staging_dir() if store else Path(job["run_dir"])
    try:
        _train(task, run_dir, store, ctx, job.get("mlflow"))
    finally:
        if store is not None and ctx.rank == 0:
            shutil.rmtree(run_dir, ignore_errors=True)


def _train(task: Task, run_dir: Path, store: Optional[RunStore], ctx, tracked: Optional[dict[str, Any]] = None) -> None:
    t = task.cfg.train
    seed_everything(t.seed, -1, ctx.rank)

    train_set, val_set = task.dataset("train"), task.dataset("val")
    classes = list(train_set.classes)
    restored = ctx.restored_state()
    if restored is not None:
        checkpoint.check_classes(restored, classes, "the training data")
    model = task.model(classes, initial_weights=restored is None)
    model = ctx.prepare_model(syncbn.apply(model, t.sync_bn, ctx.world_size, ctx.device, ctx.rank))
    loss_fn = task.plugin.build_loss(task.sections.loss, classes)
    train_loader = task.train_loader(train_set, ctx.rank, ctx.world_size)
    val_loader = task.val_loader(val_set, ctx.rank, ctx.world_size)
    optimizer = build_optimizer(model, t.optimizer)
    schedule = LRSchedule(optimizer, t.scheduler, t.optimizer.lr, t.epochs)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=t.amp == "fp16")

    start_epoch, best = 0, {"value": None, "epoch": None}
    trained_weights, ema_weights = resume_weights(restored) if restored is not None else (None, None)
    if restored is not None:
        unwrap(model).load_state_dict(trained_weights)
        load_optimizer_state(optimizer, restored.optimizer, t.optimizer)
        if scaler.is_enabled() and restored.scaler:  # a run that turns fp16 on starts a fresh scaler
            scaler.load_state_dict(restored.scaler)
        start_epoch, best = restored.epoch + 1, restored.best
    stopper = EarlyStopping.create(t.early_stopping, task.plugin.MetricClass.higher_is_better,
                                   restored.early_stopping if restored else None, best["value"])
    ema = EMA.create(t.ema, unwrap(model), ema_weights, restored.ema if restored else None)
    already_stopped = stopper is not None and stopper.stopped  # a resumed run that had stopped early
    placement = ctx.all_gather(ctx.describe())
    log, tracker = None, tracking.OFF
    if ctx.rank == 0:
        if store is not None:
            store.pull(run_dir)
        log = RunLog(run_dir, last_epoch=start_epoch - 1)
        tracker = tracking.worker(tracked, log.rows)  # MLflow (tracking.mlflow): logs the epochs it lacks
        log.workers(placement, start_epoch)
        group = f", process group {torch.distributed.get_backend()}" if torch.distributed.is_initialized() else ""
        threads = f", {torch.get_num_threads()} CPU thread{'s' * (torch.get_num_threads() != 1)} each"
        print(f"[visionkit] {ctx.world_size} worker(s) on {ctx.device.type}{threads}{group}, amp {t.amp}", flush=True)
        if store is not None:
            store.push(run_dir)  # workers.json: where this attempt runs, for the driver's failure report
        if start_epoch:
            print(f"[visionkit] resuming at epoch {start_epoch + 1}/{t.epochs} from the checkpoint of epoch {start_epoch}", flush=True)
        if ema is not None:
            print(ema.describe(), flush=True)
        if already_stopped:
            print(f"[visionkit] the run had stopped early at epoch {start_epoch}; nothing to train "
                  "(raise train.early_stopping.patience to go on)", flush=True)

    for epoch in range(t.epochs if already_stopped else start_epoch, t.epochs):
        seed_everything(t.seed, epoch, ctx.rank)
        train_loader.sampler.set_epoch(epoch)
        tic = time.perf_counter()
        sums, images, first_step = train_one_epoch(model, train_loader, loss_fn, optimizer, schedule, scaler, task, ctx, epoch, ema)
        train_time = time.perf_counter() - tic
        gathered = ctx.all_gather((sums, images))
        total_images = sum(n for _, n in gathered)
        # The LR where this epoch ends: the same for any number of steps per epoch.
        row: dict[str, Any] = {"epoch": epoch, "lr": schedule.lr_at(epoch + 1)}
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
            evaluated = unwrap(model) if ema is None else ema.module
            if ema is not None:
                ctx.sync_buffers(ema.module)  # rank 0's average: the one saved
            result = evaluate(evaluated, val_loader, task, metric, ctx)
            check_metric_result(metric, result, task.cfg.task)
            row.update({f"val/{k}": v for k, v in scalars(result).items()})
            value = float(result[metric.primary])
            improved = _is_better(metric, value, best["value"])
            if improved:
                best = {"value": value, "epoch": epoch}
            if stopper is not None:
                stopper.update(value)
        stopping = stopper is not None and stopper.stopped
        row["time_s"] = time.perf_counter() - tic
        # Wall-clock stamps, for time-to-accuracy and start-up benchmarks across processes.
        row["first_step_unix"], row["end_unix"] = first_step, time.time()

        state_file = None
        if ctx.rank == 0:
            # Plots cost seconds while the other workers wait: every 5th epoch and the last.
            log.epoch(row, result, plot=(epoch + 1) % 5 == 0 or epoch + 1 == t.epochs or stopping)
            is_best = result is not None and best["epoch"] == epoch
            if is_best:  # before best.pt: a crash between the two never leaves eval_best.json behind it
                log.best(result, epoch, metric.primary)
                task.plugin.write_visuals(result, classes, log.plots)
            state_file = save_checkpoint(run_dir, task, classes, unwrap(model), optimizer, scaler, epoch, best,
                                         is_best=is_best, early_stopping=stopper.state() if stopper else None,
                                         ema=ema)
            if store is not None:
                # Before Ray commits the checkpoint: the store never lags behind it.
                store.push(run_dir)
            tracker.epoch(row)  # after the checkpoint: an epoch in MLflow is one a resume continues from
            print(summary_line(row, t.epochs, metric, best), flush=True)
            if stopping:
                print(stopper.message(metric.primary, best), flush=True)
        ctx.report({"epoch": epoch, **{k: v for k, v in row.items() if isinstance(v, (int, float))}}, state_file)
        if stopping:  # every worker saw the same merged metric: all leave here
            break
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


def save_checkpoint(run_dir: Path, task: Task, classes, model, optimizer, scaler, epoch: int,
                    best: dict[str, Any], is_best: bool, early_stopping: Optional[dict[str, Any]] = None,
                    ema: Optional[EMA] = None) -> Path:
    """``last.pt`` atomically every epoch; ``best.pt`` a hard link to it when it is the best.
    With ``train.ema`` the checkpoint's ``model`` is the average, the trained weights beside it."""
    ckpt_dir = run_dir / "checkpoints"
    config = task.cfg.model_dump(mode="json") | {
        name: getattr(task.sections, name).model_dump(mode="json") for name in ("data", "model", "loss")}
    state = checkpoint.Checkpoint(
        where=str(ckpt_dir / "last.pt"), task=task.cfg.task, classes=classes, epoch=epoch, config=config,
        model=model.state_dict() if ema is None else ema.module.state_dict(), optimizer=optimizer.state_dict(),
        scaler=scaler.state_dict(), best=best, plugin_config_version=getattr(task.plugin, "config_version", 1),
        early_stopping=early_stopping, **({} if ema is None else {
            "weights": "ema", "trained_model": model.state_dict(), "ema": ema.state()}))
    last = ckpt_dir / "last.pt"
    checkpoint.save(state, last)
    if is_best:
        tmp = ckpt_dir / ".best.pt.tmp"
        tmp.unlink(missing_ok=True)
        os.link(last, tmp)
        os.replace(tmp, ckpt_dir / "best.pt")
    return last


def eval_worker(job: dict[str, Any], ctx) -> Optional[dict[str, Any]]:
    """Evaluates a checkpoint's weights on the config's validation split; rank 0 returns the
    result. The checkpoint comes as a local file (in this process) or as bytes through Ray's
    object store: workers may run on nodes that do not have the driver's files."""
    task = Task(job["config"], source=job["source"])
    ckpt = ctx.checkpoint_for_eval(job)
    val_set = task.dataset("val")
    checkpoint.check_classes(ckpt, val_set.classes, f"data.root {task.sections.data.root}"
                             if hasattr(task.sections.data, "root") else "the validation data")
    model = checkpoint.build_model(task.plugin, task.sections, ckpt.classes, ckpt).to(ctx.device)
    metric = task.plugin.build_metric(ckpt.classes)
    result = evaluate(model, task.val_loader(val_set, ctx.rank, ctx.world_size), task, metric, ctx)
    check_metric_result(metric, result, task.cfg.task)
    payload = None
    if ctx.rank == 0:
        payload = {"checkpoint": job["checkpoint"], "epoch": ckpt.epoch, "num_images": len(val_set),
                   "workers": ctx.world_size, "primary": metric.primary, "weights": ckpt.weights, **result}
        ctx.eval_result(job, payload)
    ctx.report({}, None)
    return payload


# --- entry points for Ray Train workers (module-level so Ray can pickle them by reference) ---

def _endpoint(job: dict[str, Any]) -> Optional[str]:
    return job["config"].get("output", {}).get("s3_endpoint")


def _threads(job: dict[str, Any]) -> int:
    return int(job.get("layout", {}).get("threads", 1))


def ray_train_entry(job: dict[str, Any]) -> None:
    train_worker(job, RayWorker(job.get("resume_from"), _endpoint(job), _threads(job), job.get("run_state")))


def ray_eval_entry(job: dict[str, Any]) -> None:
    eval_worker(job, RayWorker(threads=_threads(job)))


def local_train(job: dict[str, Any], use_gpu: bool) -> None:
    train_worker(job, LocalWorker(use_gpu, job.get("resume_from"), _endpoint(job)))


def local_eval(job: dict[str, Any], use_gpu: bool) -> None:
    eval_worker(job, LocalWorker(use_gpu))
