"""The task-plugin contract: everything task-specific lives behind this interface.

The core trainer calls these methods and nothing else, so a plugin is complete when it answers
them. Plugins are found through the ``visionkit.tasks`` entry-point group (see
:mod:`visionkit.registry`); the built-in ones are registered the same way as a third party's.

A plugin describes its config sections (``data``, ``model``, ``loss``) as pydantic models, so
the core can validate them with the same messages as its own sections (file, key, did-you-mean).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Callable, ClassVar, NamedTuple, Sequence

import torch
from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class LossOutput(NamedTuple):
    """The scalar to back-propagate and its named parts, logged separately."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]


LossFn = Callable[[torch.nn.Module, Any], LossOutput]


class Metric(abc.ABC):
    """Accumulates over one worker's share of the validation set.

    After the last batch, every worker's :meth:`state` is gathered and each worker calls
    :meth:`merge` with all of them, so :meth:`compute` gives the same numbers as one process
    evaluating the whole set. Keep the state exact (counts, matrices, raw predictions), not
    averages of averages.
    """

    #: key of :meth:`compute` that picks the best checkpoint
    primary: ClassVar[str]
    higher_is_better: ClassVar[bool] = True

    @abc.abstractmethod
    def update(self, outputs: Any, batch: Any) -> None: ...

    @abc.abstractmethod
    def state(self) -> Any:
        """A picklable summary of what this worker has seen."""

    @abc.abstractmethod
    def merge(self, states: Sequence[Any]) -> None:
        """Replace this metric's state by the combination of ``states`` (one per worker)."""

    @abc.abstractmethod
    def compute(self) -> dict[str, Any]:
        """Scalars (floats) are logged per epoch; other values (lists, matrices) go to JSON."""


class TaskPlugin(abc.ABC):
    """One computer-vision task: its data, model, loss, metric, visuals and export."""

    #: the name used as ``task:`` in configs
    name: ClassVar[str]
    summary: ClassVar[str] = ""
    DataConfig: ClassVar[type[Section]]
    ModelConfig: ClassVar[type[Section]]
    LossConfig: ClassVar[type[Section]] = Section

    # --- data -------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_dataset(self, data: Any, split: str) -> torch.utils.data.Dataset:
        """The ``train`` or ``val`` split, with its augmentation pipeline.

        The dataset must expose ``classes`` (a list of names). Raise
        :class:`visionkit.errors.DataError` naming the file for bad data.
        """

    def collate(self, samples: list) -> Any:
        return torch.utils.data.default_collate(samples)

    def batch_size_of(self, batch: Any) -> int:
        """Number of images in a batch, for throughput figures."""
        return len(batch[0])

    # --- model, loss, prediction -----------------------------------------------------------
    @abc.abstractmethod
    def build_model(self, model: Any, classes: list[str], data: Any) -> torch.nn.Module:
        """``data`` is the validated data section, for input size or channels."""

    @abc.abstractmethod
    def build_loss(self, loss: Any, classes: list[str]) -> LossFn:
        """A function ``(model, batch) -> LossOutput``; it runs the forward pass itself."""

    @abc.abstractmethod
    def predict(self, model: torch.nn.Module, batch: Any) -> Any:
        """Eval-mode forward pass; its result goes to :meth:`Metric.update`."""

    @abc.abstractmethod
    def build_metric(self, classes: list[str]) -> Metric: ...

    # --- outputs ----------------------------------------------------------------------------
    def write_visuals(self, result: dict[str, Any], classes: list[str], out_dir: Path) -> list[Path]:
        """Task-specific plots from an evaluation (confusion matrix, PR curve...)."""
        return []

    # --- export (ONNX): filled in by plugins that support it -------------------------------
    def export_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """An ONNX-friendly wrapper whose outputs are what a deployer needs."""
        raise NotImplementedError(f"task {self.name!r} does not support export yet")
