"""Checkpoints: the one module that writes, reads, checks and rebuilds models from them.

Resume, ``eval``, ``export`` and the ONNX metadata all go through here, so a checkpoint's layout
is known in one place and an old or foreign file is refused with one line, not a KeyError deep
in a worker. A file holds tensors and plain containers only (read with ``weights_only=True``).

Format history:
1. model, optimizer, LambdaLR scheduler, scaler, epoch, best, classes, config.
2. no scheduler: the LR is a function of the fraction of training done (it survives a resume
   with another worker count or batch size); the optimizer always has two parameter groups
   (decay, no decay); ``plugin_config_version`` for plugins that change their config sections.
   Later, without a new format (an older file simply lacks it): ``early_stopping``, the
   ``train.early_stopping`` counter ({"best", "bad"}), or None; ``weights``, what ``model``
   holds: "trained" (the optimizer's weights; absent means this) or "ema" (``train.ema``'s
   average, which eval, export, the report and ``model.weights`` use), the optimizer's weights
   then in ``trained_model`` and the average's update count in ``ema`` ({"updates", "decay",
   "warmup_steps"}) for a resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError, UserError

FORMAT = 2


@dataclass
class Checkpoint:
    """A checkpoint's contents. ``where`` names the file in messages (a path or a URI)."""

    where: str
    task: str
    classes: list[str]
    epoch: int
    config: dict[str, Any]
    model: dict[str, Any]
    optimizer: Optional[dict[str, Any]] = None
    scaler: Optional[dict[str, Any]] = None
    best: dict[str, Any] = field(default_factory=lambda: {"value": None, "epoch": None})
    format: int = FORMAT
    plugin_config_version: int = 1
    early_stopping: Optional[dict[str, Any]] = None
    weights: str = "trained"
    trained_model: Optional[dict[str, Any]] = None
    ema: Optional[dict[str, Any]] = None

    def to_state(self) -> dict[str, Any]:
        return {"format": self.format, "task": self.task, "classes": list(self.classes), "epoch": self.epoch,
                "config": self.config, "model": self.model, "optimizer": self.optimizer, "scaler": self.scaler,
                "best": self.best, "plugin_config_version": self.plugin_config_version,
                "early_stopping": self.early_stopping, "weights": self.weights,
                "trained_model": self.trained_model, "ema": self.ema}


def save(ckpt: Checkpoint, path: Path) -> None:
    """Atomic: a crash mid-write leaves the previous file whole."""
    from .fileio import atomic_torch_save

    atomic_torch_save(ckpt.to_state(), Path(path))


def load(path: Path | str, where: Optional[str] = None) -> Checkpoint:
    """Reads and checks a checkpoint; ``where`` names it in messages when ``path`` is a local copy."""
    from .fileio import torch_load

    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise UserError(f"{where}: checkpoint not found")
    try:
        state = torch_load(path)
    except ValueError as exc:
        raise UserError(f"{where}: not a readable visionkit checkpoint ({exc})") from None
    return from_state(state, where)


def from_state(state: Any, where: str) -> Checkpoint:
    missing = [k for k in ("model", "classes", "config", "epoch") if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"{where}: not a visionkit checkpoint (no {', '.join(missing)} inside)")
    version = state.get("format", 1)
    if not isinstance(version, int) or not 1 <= version <= FORMAT:
        raise UserError(f"{where}: checkpoint format {version!r} is not one this visionkit reads (format {FORMAT} "
                        "and older); it was written by a newer visionkit: upgrade visionkit to use it")
    config = state["config"]
    return Checkpoint(
        where=where, task=state.get("task") or config.get("task"), classes=list(state["classes"]),
        epoch=int(state["epoch"]), config=config, model=state["model"], optimizer=state.get("optimizer"),
        scaler=state.get("scaler"), best=state.get("best") or {"value": None, "epoch": None},
        format=version, plugin_config_version=int(state.get("plugin_config_version", 1)),
        early_stopping=state.get("early_stopping"), weights=state.get("weights") or "trained",
        trained_model=state.get("trained_model"), ema=state.get("ema"))


def upgraded_config(ckpt: Checkpoint, plugin, config: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The checkpoint's config (or ``config``, the run's config.yaml written with it) in today's
    shape: the plugin upgrades its own sections from the version the checkpoint records."""
    config = dict(ckpt.config if config is None else config)
    current = getattr(plugin, "config_version", 1)
    if ckpt.plugin_config_version > current:
        raise UserError(f"{ckpt.where}: written by task plugin {plugin.name!r} with config version "
                        f"{ckpt.plugin_config_version}; the installed plugin knows up to version {current}: upgrade it")
    if ckpt.plugin_config_version < current:
        sections = {k: dict(config.get(k) or {}) for k in ("data", "model", "loss")}
        sections = plugin.upgrade_config(sections, ckpt.plugin_config_version)
        config.update(sections)
    return config


def without_initial_weights(model_section):
    """The model section for a rebuild whose weights come from a checkpoint.

    By the plugin contract every ``Path`` field of a model section names a file of initial
    weights (``model.weights``, ``model.weights_backbone``), and every ``pretrained*`` field
    published weights from the cache (``model.pretrained``): a checkpoint supersedes them, so they
    are not read, and eval or export work once those files are gone (another machine, a clean disk).
    """
    changes = {name: None for name in type(model_section).model_fields
               if isinstance(getattr(model_section, name), Path) or name.startswith("pretrained")}
    return model_section.model_copy(update=changes)


def build_model(plugin, sections, classes: list[str], ckpt: Checkpoint):
    """The model the checkpoint's config builds, with the checkpoint's weights."""
    model = plugin.build_model(without_initial_weights(sections.model), classes, sections.data)
    try:
        model.load_state_dict(ckpt.model)
    except RuntimeError as exc:
        raise UserError(f"{ckpt.where}: its weights do not fit the model its config builds "
                        f"({str(exc).strip().splitlines()[-1].strip()})") from None
    return model


def check_classes(ckpt: Checkpoint, classes: list[str], data_where: str) -> None:
    """A class list that differs (a folder missing or renamed) would shift every label silently."""
    classes = list(classes)
    if classes == ckpt.classes:
        return
    gone = [c for c in ckpt.classes if c not in classes]
    new = [c for c in classes if c not in ckpt.classes]
    if gone or new:
        detail = "; ".join(part for part in (f"missing from the data: {gone}" if gone else "",
                                             f"not in the checkpoint: {new}" if new else "") if part)
    else:
        detail = "same names in another order"
    raise UserError(f"{ckpt.where}: the checkpoint's {len(ckpt.classes)} classes differ from the {len(classes)} "
                    f"classes of {data_where} ({detail}); labels would not mean the same class")


# What a resume may change: everything but these (an override that does not fit is refused
# before anything is written, so a plain --resume still works afterwards).
FIXED_ON_RESUME = ("task", "train.optimizer.name")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def check_resume(ckpt: Checkpoint, resolved: dict[str, Any], model_section, source: str) -> None:
    """Refuses, in one line, a resumed config the checkpoint's state cannot continue."""
    saved = _flat({k: ckpt.config.get(k) for k in ("task", "train")})
    new = _flat({k: resolved.get(k) for k in ("task", "train")})
    for key in FIXED_ON_RESUME:
        if saved.get(key) is not None and saved.get(key) != new.get(key):
            raise ConfigError(f"{source}: {key}: the checkpoint was trained with {saved[key]!r}, got {new.get(key)!r}; "
                              "a resume continues the same training state: start a new run with "
                              f"model.weights={ckpt.where} to change it")
    weights = {name for name in type(model_section).model_fields if name.startswith(("weights", "pretrained"))}
    old_model, new_model = _flat(ckpt.config.get("model") or {}), _flat(resolved.get("model") or {})
    for key in sorted(set(old_model) | set(new_model)):
        if key.split(".")[0] in weights:
            continue  # initial weights: superseded by the checkpoint
        if old_model.get(key) != new_model.get(key):
            raise ConfigError(f"{source}: model.{key}: the checkpoint was trained with {old_model.get(key)!r}, got "
                              f"{new_model.get(key)!r}; a resume cannot change the model: start a new run with "
                              f"model.weights={ckpt.where}")
