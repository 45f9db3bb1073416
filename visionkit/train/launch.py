"""The driver side: resolve the config, check the data, start Ray Train, summarise the run."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from ..config import Config, apply_overrides, dump_yaml, load_config, resolved_dict, task_configs, validate_section
from ..errors import ConfigError, UserError
from ..fileio import load_checkpoint
from ..registry import get_plugin
from .runlog import read_metrics


def _plugin_for(cfg: Config, source: str):
    try:
        return get_plugin(cfg.task)
    except UserError as exc:
        raise type(exc)(f"{source}: task: {exc}") from None


def _check_devices(cfg: Config, source: str) -> None:
    if cfg.train.amp == "fp16" and not cfg.ray.use_gpu:
        raise ConfigError(f"{source}: train.amp: fp16 needs ray.use_gpu: true (on CPU use bf16 or off)")


def _preflight(plugin, sections) -> None:
    """Builds the datasets once here so that bad data fails in a second, not after Ray starts."""
    for split in ("train", "val"):
        dataset = plugin.build_dataset(sections.data, split)
        if len(dataset) == 0:
            raise UserError(f"data: the {split} split has no samples")


def init_ray(address: Optional[str], num_cpus: Optional[int] = None) -> None:
    import logging

    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # An embedded single-node Ray sized to this machine, quiet and small.
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 object_store_memory=256 * 1024**2, logging_level=logging.WARNING,
                 runtime_env={"worker_process_setup_hook": "visionkit.train.raylogs.quiet"})


def _user_error_in(exc: BaseException | None) -> UserError | None:
    """Ray wraps a worker's exception (UserExceptionWithTraceback, RayTaskError): look inside."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "_base_exc", None) or getattr(exc, "cause", None)
        if inner is None and isinstance(exc, UserError):
            return exc
        exc = inner or exc.__cause__
    return None


def _raise_worker_failure(exc: BaseException, run_dir: Optional[Path]) -> None:
    """A user mistake found on a worker is reported like one found here; a bug keeps its trace."""
    failures = list((getattr(exc, "worker_failures", None) or {}).values())
    for cause in failures + [getattr(exc, "controller_failure", None), exc.__cause__]:
        found = _user_error_in(cause)
        if found is not None:
            raise type(found)(str(found)) from None
    hint = f"\nresume with: visionkit train --resume {run_dir}" if run_dir else ""
    raise RuntimeError(f"training failed on a worker: {exc}{hint}") from exc


def _fit(entry, job: dict[str, Any], cfg: Config, storage: Path, name: str, address: Optional[str],
         max_failures: int) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer

    init_ray(address)
    trainer = TorchTrainer(
        entry,
        train_loop_config=job,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
            resources_per_worker=cfg.ray.resources_per_worker,
            placement_strategy=cfg.ray.placement_strategy),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            # Worker prints go straight to stdout once, not also through Ray Train's logger.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}),
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        _raise_worker_failure(exc, Path(job["run_dir"]) if "run_dir" in job else None)


def train(config_path: Optional[str], overrides: list[str], resume: Optional[str] = None,
          address: Optional[str] = None) -> Path:
    if resume:
        run_dir = Path(resume).resolve()
        source_path = run_dir / "config.yaml"
        if not source_path.is_file():
            raise UserError(f"{run_dir}: not a visionkit run directory (no config.yaml)")
        resume_from = run_dir / "checkpoints" / "last.pt"
        if not resume_from.is_file():
            raise UserError(f"{resume_from}: no checkpoint to resume from (the run stopped before its first epoch ended)")
        cfg, raw = load_config(source_path, overrides)
    else:
        source_path = Path(config_path)
        cfg, raw = load_config(source_path, overrides)
    source = str(source_path) + (" (with command-line overrides)" if overrides else "")
    plugin = _plugin_for(cfg, source)
    sections = task_configs(cfg, plugin, source, base=Path.cwd())
    _check_devices(cfg, source)
    _preflight(plugin, sections)

    if not resume:
        storage = Path(cfg.output.storage_path).resolve()
        name = cfg.output.name or f"{source_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = storage / name
        if (run_dir / "config.yaml").exists():
            raise UserError(f"{run_dir}: run directory exists; continue it with --resume {run_dir} or set output.name")
        cfg.output.storage_path, cfg.output.name = str(storage), name
        run_dir.mkdir(parents=True, exist_ok=True)
    resolved = resolved_dict(cfg, sections)
    dump_yaml(resolved, run_dir / "config.yaml")

    job = {"config": resolved, "run_dir": str(run_dir),
           "resume_from": str(resume_from) if resume else None}
    where = "in this process" if cfg.ray.num_workers == 0 else f"on {cfg.ray.num_workers} Ray worker(s)"
    print(f"[visionkit] {cfg.task}: training {where}; run directory {run_dir}", flush=True)
    from . import loop

    tic = time.perf_counter()
    if cfg.ray.num_workers == 0:
        loop.local_train(job, cfg.ray.use_gpu)
    else:
        _fit(loop.ray_train_entry, job, cfg, run_dir.parent, run_dir.name, address or cfg.ray.address,
             cfg.ray.max_failures)
    print(final_summary(run_dir, time.perf_counter() - tic), flush=True)
    return run_dir


def final_summary(run_dir: Path, seconds: float) -> str:
    rows = read_metrics(run_dir)
    best_path = run_dir / "eval_best.json"
    lines = [f"[visionkit] finished {len(rows)} epoch(s) in {seconds:.0f}s"]
    if best_path.exists():
        best = json.loads(best_path.read_text())
        key = best["primary"]
        lines.append(f"[visionkit] best: {key} {best[key]:.4f} at epoch {best['epoch'] + 1} (eval_best.json)")
    lines.append(f"[visionkit] files: {run_dir}/ (config.yaml, metrics.jsonl, tensorboard/, plots/, checkpoints/best.pt, checkpoints/last.pt)")
    return "\n".join(lines)


def find_checkpoint(target: str) -> Path:
    path = Path(target)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise UserError(f"{path}: no checkpoints/best.pt or checkpoints/last.pt in this directory")
    if not path.exists():
        raise UserError(f"{path}: no such run directory or checkpoint file")
    return path


def evaluate(target: str, overrides: list[str], workers: int = 0, output: Optional[str] = None,
             address: Optional[str] = None) -> dict[str, Any]:
    checkpoint = find_checkpoint(target).resolve()
    state = load_checkpoint(checkpoint)
    if "config" not in state or "classes" not in state:
        raise UserError(f"{checkpoint}: not a visionkit checkpoint (no config/classes inside)")
    source = f"{checkpoint} (embedded config{' with overrides' if overrides else ''})"
    raw = apply_overrides(state["config"], overrides)
    raw.setdefault("ray", {})["num_workers"] = workers
    cfg = validate_section(Config, raw, source)
    plugin = _plugin_for(cfg, source)
    sections = task_configs(cfg, plugin, source, base=Path.cwd())
    out = Path(output).resolve() if output else checkpoint.parent.parent / "eval.json"
    job = {"config": resolved_dict(cfg, sections), "source": source, "checkpoint": str(checkpoint),
           "output": str(out)}
    from . import loop

    if workers == 0:
        loop.local_eval(job, cfg.ray.use_gpu)
    else:
        with tempfile.TemporaryDirectory(prefix="visionkit-eval-") as storage:
            _fit(loop.ray_eval_entry, job, cfg, Path(storage), "eval", address, 0)
    return json.loads(out.read_text())
