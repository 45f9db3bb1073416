"""Experiment config: one flat YAML file, ``key.sub=value`` overrides, strict validation.

What wins is always visible: the file, then the command-line overrides, and the resolved result
is saved as ``config.yaml`` in the run directory. Errors name the file, the dotted key and what
was expected; unknown keys get a did-you-mean.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from .errors import ConfigError
from .plugin import Section, TaskPlugin
from .tracking.settings import TrackingConfig


class OptimizerConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)


class SchedulerConfig(Section):
    name: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_start_factor: float = Field(0.1, gt=0, le=1)
    min_lr_factor: float = Field(0.0, ge=0, le=1)
    step_epochs: int = Field(30, ge=1)
    gamma: float = Field(0.1, gt=0)


class EarlyStoppingConfig(Section):
    """Stop when the task's primary metric has not improved by more than ``min_delta`` for
    ``patience`` evaluations in a row; the counter is saved in each checkpoint, so a resumed
    run stops where an uninterrupted one would."""

    patience: int = Field(ge=1, description="evaluations without an improvement")
    min_delta: float = Field(0.0, ge=0, description="an improvement must exceed this, in the metric's units")


class EMAConfig(Section):
    """An exponential moving average of the weights, evaluated and saved in their place
    (:mod:`visionkit.train.ema`); its state is in each checkpoint, so a resume is exact."""

    decay: float = Field(0.999, gt=0, lt=1, description="per optimizer step; the window is 1 / (1 - decay) steps")
    warmup_steps: int = Field(1000, ge=0, description="optimizer steps over which the window grows to its full length")


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1, description="per worker")
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    amp: Literal["off", "fp16", "bf16"] = "off"
    grad_accum_steps: int = Field(1, ge=1)
    grad_clip_norm: Optional[float] = Field(None, gt=0)
    eval_every: int = Field(1, ge=1)
    seed: int = 0
    loader_workers: int = Field(0, ge=0)
    progress: bool = True
    early_stopping: Optional[EarlyStoppingConfig] = None
    ema: Optional[EMAConfig] = None
    sync_bn: bool = Field(False, description="BatchNorm statistics over all workers' batches (under DDP)")


class RayConfig(Section):
    num_workers: Union[Literal["auto"], Annotated[int, Field(ge=0)]] = Field(
        "auto", description="auto: one worker per GPU, or per CPU-only node with all its CPUs; 0 runs the loop in "
                            "this process, without Ray")
    use_gpu: bool = False
    resources_per_worker: Optional[dict[str, float]] = Field(
        None, description="null: sized by the layout (auto: a node's CPUs, or its CPUs per GPU; a count: CPU 1)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: int = Field(0, ge=-1)
    placement_timeout_s: Optional[float] = Field(
        300, gt=0, description="wait this long for room for every worker (at start, after a failure); null: forever")
    address: Optional[str] = None


class OutputConfig(Section):
    storage_path: str = Field("runs", description="a directory (shared by all nodes on a cluster) or s3://bucket/prefix")
    name: Optional[str] = None
    s3_endpoint: Optional[str] = Field(None, description="an S3-compatible store, e.g. http://minio:9000")


class TuneSchedulerConfig(Section):
    name: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(1, ge=1, description="asha: epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="asha: 1/reduction_factor of the trials go on at each rung")


class TuneSection(Section):
    """``visionkit tune``: the search over the rest of the config (``visionkit train`` ignores it).
    ``space`` is checked against the task's config by :mod:`visionkit.tune.space`."""

    space: dict[str, Any] = Field(description="config key -> {choice|uniform|loguniform|randint|grid: [...]}")
    num_samples: int = Field(8, ge=1, description="trials (with grid: samples per grid point)")
    max_concurrent_trials: Optional[int] = Field(None, ge=1, description="null: as many as fit on the cluster")
    seed: int = Field(0, description="the searcher's seed (train.seed stays the training seed)")
    scheduler: TuneSchedulerConfig = TuneSchedulerConfig()
    search: Literal["random", "optuna"] = "random"

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_by_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value  # `scheduler: asha`


class Config(Section):
    task: str
    data: dict[str, Any] = {}
    model: dict[str, Any] = {}
    loss: dict[str, Any] = {}
    train: TrainConfig = TrainConfig()
    ray: RayConfig = RayConfig()
    output: OutputConfig = OutputConfig()
    tune: Optional[TuneSection] = None
    tracking: Optional[TrackingConfig] = None  # experiment tracking (visionkit.tracking); off by default


class TaskConfigs(BaseModel):
    """The plugin-owned sections, validated by the plugin's own models."""

    data: Any
    model: Any
    loss: Any


# --- loading ----------------------------------------------------------------------------------

def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key segment")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {p!r} is a {type(child).__name__}, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path, label: Optional[str] = None) -> dict[str, Any]:
    """``label`` names the file in messages when ``path`` is a local copy of it."""
    label = label or str(path)
    if not path.is_file():
        raise ConfigError(f"{label}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{label}: cannot read the config file ({getattr(exc, 'strerror', None) or exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{label}:{where} not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: expected a mapping of sections at the top level")
    return raw


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names available at ``loc`` (a pydantic error location), for did-you-mean."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        inner = [a for a in get_args(ann) if a is not type(None)]
        if len(inner) == 1:  # Optional[Section]: its fields
            ann = inner[0]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return []
    return list(model.model_fields)


def _describe(err: dict, model: type[BaseModel], prefix: str) -> str:
    loc = tuple(err["loc"])
    key = ".".join([prefix] * bool(prefix) + [str(p) for p in loc])
    if err["type"] == "extra_forbidden":
        names = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{key}: unknown key{hint}; allowed: {', '.join(names)}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    got = err.get("input")
    return f"{key}: {err['msg'].lower()} (got {got!r} of type {type(got).__name__})"


def validate_section(model: type[BaseModel], raw: Any, source: str, prefix: str = "") -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        # A typo shows up as an unknown key and a missing one: the unknown key explains both.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        first = _describe(errors[0], model, prefix)
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {first}{more}") from None


def _resolve_paths(section: BaseModel, base: Path) -> None:
    """Relative paths are relative to where the command runs; workers may run elsewhere."""
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, Path) and not value.is_absolute():
            setattr(section, name, (base / value).resolve())
        elif isinstance(value, BaseModel):
            _resolve_paths(value, base)


def load_config(path: Path | str, overrides: list[str] = (), label: Optional[str] = None) -> tuple[Config, dict[str, Any]]:
    """Returns the validated core config and the raw resolved dict (to save and to ship)."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path, label), list(overrides))
    source = (label or str(path)) + (" (with command-line overrides)" if overrides else "")
    cfg = validate_section(Config, raw, source)
    return cfg, raw


def task_configs(cfg: Config, plugin: TaskPlugin, source: str, base: Path | None = None) -> TaskConfigs:
    sections = {}
    for name, model in (("data", plugin.DataConfig), ("model", plugin.ModelConfig), ("loss", plugin.LossConfig)):
        section = validate_section(model, getattr(cfg, name), source, prefix=name)
        if base is not None:
            _resolve_paths(section, base)
        sections[name] = section
    return TaskConfigs(**sections)


def resolved_dict(cfg: Config, tasks: TaskConfigs) -> dict[str, Any]:
    out = cfg.model_dump(mode="json")
    if out.get("tune") is None:
        out.pop("tune", None)  # only a search's config has one
    if out.get("tracking") is None:
        out.pop("tracking", None)  # only a tracked run's config has one
    for name in ("data", "model", "loss"):
        out[name] = getattr(tasks, name).model_dump(mode="json")
    return out


def dump_yaml(data: dict[str, Any], path: Path) -> None:
    from .fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
