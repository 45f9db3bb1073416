"""``visionkit data check`` and ``visionkit data show``: the config read as ``train`` reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import UserError


def load(config: str, overrides: list[str]):
    """(config, plugin, task sections, source: the name its errors give the config), validated
    as ``visionkit train`` validates them."""
    from ..config import Config, apply_overrides, read_yaml, task_configs, validate_section
    from ..registry import get_plugin

    raw = read_yaml(Path(config))
    source = config + (" (with command-line overrides)" if overrides else "")
    cfg = validate_section(Config, apply_overrides(raw, list(overrides)), source)
    try:
        plugin = get_plugin(cfg.task)
    except UserError as exc:
        raise type(exc)(f"{source}: task: {exc}") from None
    return cfg, plugin, task_configs(cfg, plugin, source, base=Path.cwd()), source


def run_check(config: str, overrides: list[str], limit: Optional[int], decode: bool) -> int:
    from . import Finding, check, format_report
    from .model import check_model

    cfg, plugin, sections, source = load(config, overrides)
    print(f"[visionkit] data check: {cfg.task} data in {getattr(sections.data, 'root', '?')}"
          + (f"; at most {limit} images read per split, evenly spread" if limit else "; every image read"), flush=True)
    report = check(plugin, sections.data, limit=limit or None, decode=decode)
    train = next((s for s in report.splits.values() if s.name == "train" and s.built), None)
    if train is not None:
        try:
            check_model(plugin, sections, report.classes, source)
        except UserError as exc:
            report.findings.append(Finding("error", "config", str(exc)))
    print(format_report(report), flush=True)
    return 2 if report.errors else 0


def run_show(config: str, overrides: list[str], out: str, split: str, augmented: bool, n: int) -> int:
    from .show import show

    cfg, plugin, sections, _ = load(config, overrides)
    path, drawn, total = show(plugin, sections, cfg.train.seed, split, augmented, n, Path(out))
    how = "after the split's transform (train.seed, epoch 1)" if augmented else "as stored"
    print(f"[visionkit] data show: {drawn} of {total} {split} samples, {how} -> {path}", flush=True)
    return 0
