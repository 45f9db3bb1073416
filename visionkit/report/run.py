"""A run directory as the report reads it: :class:`RunView`.

Everything is read on first use, so the parts of the page that need only the log files (the run,
the curves, the config) never import torch or touch the data, and a plugin's section pays for
the checkpoint and the validation set only when it asks for predictions.
"""

from __future__ import annotations

import json
import math
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import yaml

from ..errors import UserError
from ..train.runlog import METRICS_FILE, read_metrics


def spread(count: int, limit: int) -> list[int]:
    """At most ``limit`` indices of ``range(count)``, evenly spaced, first and last included: an
    ImageFolder lists images class by class, so the first ``limit`` could all be one class."""
    if count <= limit:
        return list(range(count))
    if limit <= 1:
        return [0][:limit]
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def _to_cpu(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class RunView:
    """One finished (or stopped) run, local: what :meth:`TaskPlugin.report_sections` is given.

    Attributes read from the files: ``dir``, ``name``, ``config`` (config.yaml as a dict),
    ``task``, ``rows`` (metrics.jsonl), ``best`` (eval_best.json: the best epoch's full result,
    or None), ``attempts`` (workers.json). Loaded when first used: ``plugin``, ``checkpoint``
    (best.pt, else last.pt), ``classes``, ``sections`` (the validated data/model/loss sections),
    ``val_dataset``, ``model``; and :meth:`predictions`, the model run on validation images.
    """

    def __init__(self, run_dir: Path | str, overrides: Sequence[str] = (), where: Optional[str] = None):
        self.dir = Path(run_dir)
        self.name = self.dir.name
        #: the run as the user names it (an object-store URI when ``dir`` is a local copy)
        self.where = where or str(self.dir)
        self.overrides = list(overrides)
        config_file = self.dir / "config.yaml"
        if not self.dir.is_dir():
            raise UserError(f"{self.dir}: no such run directory")
        if not config_file.is_file():
            raise UserError(f"{self.dir}: not a visionkit run directory (no config.yaml)")
        try:
            config = yaml.safe_load(config_file.read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"{config_file}: not readable YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(config, dict) or not config.get("task"):
            raise UserError(f"{config_file}: not a visionkit run config (no task)")
        self.config: dict[str, Any] = config
        self.config_text = config_file.read_text()
        self.task: str = str(config["task"])
        self.rows: list[dict[str, Any]] = read_metrics(self.dir)
        self.best: Optional[dict[str, Any]] = self._json("eval_best.json")
        self.attempts: list[dict[str, Any]] = (self._json("workers.json") or {}).get("attempts", [])

    def _json(self, name: str) -> Any:
        path = self.dir / name
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except ValueError:
            return None  # cut by a crash: the report shows what else there is

    # --- what the log says ------------------------------------------------------------------
    @property
    def primary(self) -> Optional[str]:
        return self.best.get("primary") if self.best else None

    @property
    def best_epoch(self) -> Optional[int]:
        """0-based, as in metrics.jsonl (the page shows it 1-based)."""
        return self.best.get("epoch") if self.best else None

    @property
    def metrics_file(self) -> Path:
        return self.dir / METRICS_FILE

    # --- what needs the plugin, the checkpoint, the data --------------------------------------
    @cached_property
    def plugin(self):
        from ..registry import get_plugin

        try:
            return get_plugin(self.task)
        except UserError as exc:
            raise type(exc)(f"{self.dir / 'config.yaml'}: task: {exc}") from None

    @cached_property
    def checkpoint(self):
        """best.pt, else last.pt; None before the first epoch ended."""
        from .. import checkpoint

        for name in ("best.pt", "last.pt"):
            path = self.dir / "checkpoints" / name
            if path.is_file():
                return checkpoint.load(path)
        return None

    @cached_property
    def sections(self):
        """The data, model and loss sections as training validated them (``overrides`` applied:
        ``data.root=...`` for data that has moved)."""
        from .. import checkpoint
        from ..config import Config, apply_overrides, task_configs, validate_section

        source = f"{self.dir / 'config.yaml'}" + (" (with overrides)" if self.overrides else "")
        raw = dict(self.config)
        if self.checkpoint is not None:
            raw = checkpoint.upgraded_config(self.checkpoint, self.plugin, raw)
        cfg = validate_section(Config, apply_overrides(raw, self.overrides), source)
        return task_configs(cfg, self.plugin, source, base=Path.cwd())

    @cached_property
    def classes(self) -> list[str]:
        if self.checkpoint is not None:
            return list(self.checkpoint.classes)
        return list(self.val_dataset.classes)

    @cached_property
    def val_dataset(self):
        from .. import checkpoint

        dataset = self.plugin.build_dataset(self.sections.data, "val")
        if self.checkpoint is not None:
            where = f"the validation data ({getattr(self.sections.data, 'root', '')})"
            checkpoint.check_classes(self.checkpoint, dataset.classes, where)
        return dataset

    @cached_property
    def device(self):
        import torch

        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    @cached_property
    def model(self):
        """The checkpoint's model in eval mode, on this process's GPU if it has one, else CPU."""
        from .. import checkpoint

        if self.checkpoint is None:
            raise UserError(f"{self.dir}: no checkpoint yet (no epoch finished)")
        model = checkpoint.build_model(self.plugin, self.sections, self.classes, self.checkpoint)
        return model.to(self.device).eval()

    def sample_indices(self, limit: int) -> list[int]:
        return spread(len(self.val_dataset), limit)

    def predictions(self, limit: int, batch_size: Optional[int] = None) -> Iterator[tuple[list[int], Any, Any]]:
        """The checkpoint's model on up to ``limit`` validation images spread over the split, in
        this process: ``(dataset indices, batch, plugin.predict(model, batch))`` per batch, on CPU.

        Batched as validation batches them (same-size images only, see ``eval_size_key``), so
        each prediction is the one the validation metric scored. Raises UserError (one line) when
        the checkpoint or the data cannot be read here: a section shows it instead of images.
        """
        import torch

        from ..data.grouping import same_size_batches

        plugin, dataset, model = self.plugin, self.val_dataset, self.model
        indices = self.sample_indices(limit)
        size = batch_size or min(32, int((self.config.get("train") or {}).get("batch_size", 8)))
        keys = [plugin.eval_size_key(dataset, i) for i in indices]
        for members in same_size_batches(indices, keys, size):
            batch = plugin.collate([dataset[i] for i in members])
            with torch.inference_mode():  # not across the yield: the caller's code runs outside it
                outputs = _to_cpu(plugin.predict(model, _to_device(batch, self.device)))
            yield members, batch, outputs

    # --- summaries for the page ---------------------------------------------------------------
    def parameter_count(self) -> Optional[int]:
        """Learned values in the checkpoint (BatchNorm statistics and counters left out)."""
        if self.checkpoint is None:
            return None
        skip = ("running_mean", "running_var", "num_batches_tracked")
        return sum(int(v.numel()) for k, v in self.checkpoint.model.items()
                   if hasattr(v, "numel") and not k.endswith(skip))

    def wall_time(self) -> Optional[float]:
        """Seconds from each attempt's start (workers.json) to its last finished epoch, summed:
        the time the run took, without the pauses between a stop and its resume."""
        if not self.rows:
            return None
        total = 0.0
        starts = sorted((a.get("started_unix"), a.get("start_epoch", 0)) for a in self.attempts
                        if isinstance(a.get("started_unix"), (int, float)))
        if not starts:
            return sum(r.get("time_s", 0.0) for r in self.rows)
        for k, (started, first_epoch) in enumerate(starts):
            next_epoch = starts[k + 1][1] if k + 1 < len(starts) else math.inf
            ends = [r["end_unix"] for r in self.rows if first_epoch <= r["epoch"] < next_epoch and "end_unix" in r]
            if ends:
                total += max(ends) - started
        return total


def _to_device(batch: Any, device) -> Any:
    if device.type == "cpu":
        return batch
    from ..train.loop import move_to

    return move_to(batch, device)
