"""A trained run, loaded for export: config, plugin, classes and the model with its weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import checkpoint
from ..checkpoint import Checkpoint
from ..config import Config, TaskConfigs, apply_overrides, task_configs, validate_section
from ..errors import UserError
from ..plugin import Exporter, TaskPlugin
from ..registry import get_plugin
from .evaluate import check_data_overrides


@dataclass
class LoadedRun:
    checkpoint: Path
    state: Checkpoint
    cfg: Config
    plugin: TaskPlugin
    sections: TaskConfigs
    classes: list[str]
    model: torch.nn.Module
    source: str
    #: the plugin's export half (:meth:`TaskPlugin.exporter`)
    exporter: Exporter

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
    path = find_checkpoint(target)
    ckpt = checkpoint.load(path)
    source = f"{path} (embedded config{' with overrides' if overrides else ''})"
    try:
        plugin = get_plugin(ckpt.task)
    except UserError as exc:
        raise type(exc)(f"{source}: task: {exc}") from None
    exporter = exporter_of(plugin, str(path))
    raw = apply_overrides(checkpoint.upgraded_config(ckpt, plugin), list(overrides))
    cfg = validate_section(Config, raw, source)
    sections = task_configs(cfg, plugin, source, base=Path.cwd())
    model = checkpoint.build_model(plugin, sections, ckpt.classes, ckpt)
    return LoadedRun(path, ckpt, cfg, plugin, sections, list(ckpt.classes), model.eval(), source, exporter)


def exporter_of(plugin: TaskPlugin, where: str) -> Exporter:
    """The plugin's exporter; a task without one is told in one line, before any work."""
    from ..errors import PluginError

    exporter = plugin.exporter()
    if exporter is None:
        raise UserError(f"{where}: task {plugin.name!r} does not support export (its plugin gives no exporter)")
    if not isinstance(exporter, Exporter):
        raise PluginError(f"task plugin {plugin.name!r}: exporter() gave a {type(exporter).__name__}, expected a "
                          "visionkit.plugin.Exporter")
    return exporter
