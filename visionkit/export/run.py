"""A trained run, loaded for export: config, plugin, classes and the model with its weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config, TaskConfigs, apply_overrides, task_configs, validate_section
from ..errors import UserError
from ..fileio import load_checkpoint
from ..plugin import TaskPlugin
from ..registry import get_plugin
from .evaluate import check_data_overrides


@dataclass
class LoadedRun:
    checkpoint: Path
    state: dict[str, Any]
    cfg: Config
    plugin: TaskPlugin
    sections: TaskConfigs
    classes: list[str]
    model: torch.nn.Module
    source: str

    @property
    def run_dir(self) -> Path:
        """RUN/checkpoints/x.pt -> RUN; a checkpoint anywhere else -> its own folder."""
        parent = self.checkpoint.parent
        return parent.parent if parent.name == "checkpoints" else parent

    def dataset(self, split: str):
        return self.plugin.build_dataset(self.sections.data, split)


def find_checkpoint(target: str) -> Path:
    from ..train.launch import find_checkpoint as find

    return find(target).resolve()


def load_run(target: str, overrides: list[str]) -> LoadedRun:
    check_data_overrides(overrides, "for export or eval of a trained model")
    checkpoint = find_checkpoint(target)
    state = load_checkpoint(checkpoint)
    if "config" not in state or "classes" not in state or "model" not in state:
        raise UserError(f"{checkpoint}: not a visionkit checkpoint (no config/classes/model inside)")
    source = f"{checkpoint} (embedded config{' with overrides' if overrides else ''})"
    raw = apply_overrides(state["config"], list(overrides))
    cfg = validate_section(Config, raw, source)
    try:
        plugin = get_plugin(cfg.task)
    except UserError as exc:
        raise type(exc)(f"{source}: task: {exc}") from None
    sections = task_configs(cfg, plugin, source, base=Path.cwd())
    classes = list(state["classes"])
    model = plugin.build_model(sections.model, classes, sections.data)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise UserError(f"{checkpoint}: its weights do not fit the model its config builds "
                        f"({str(exc).strip().splitlines()[-1].strip()})") from None
    return LoadedRun(checkpoint, state, cfg, plugin, sections, classes, model.eval(), source)
