"""The task-plugin contract: everything task-specific lives behind this interface.

The core trainer calls these methods and nothing else, so a plugin is complete when it answers
them. Plugins are found through the ``visionkit.tasks`` entry-point group (see
:mod:`visionkit.registry`); the built-in ones are registered the same way as a third party's.

A plugin describes its config sections (``data``, ``model``, ``loss``) as pydantic models, so
the core can validate them with the same messages as its own sections (file, key, did-you-mean).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, NamedTuple, Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from .report import ReportSection, RunView


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
    #: whether a larger ``primary`` is better. No default: a plugin that forgot ``False`` for an
    #: error metric would silently keep its worst epoch as best.pt. Checked when the plugin loads.
    higher_is_better: ClassVar[bool]

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


def check_metric_result(metric: Metric, result: Any, plugin_name: str) -> None:
    """Raise a one-line PluginError unless ``result`` (``metric.compute()``) holds a real number
    (int or float: it is logged and compared; finite, or nan for "undefined") under
    ``metric.primary``. Called at the first evaluation, so a plugin's mistake stops the run
    there with its name instead of a traceback from the checkpoint logic."""
    from .errors import PluginError

    where = f"task plugin {plugin_name!r}: {type(metric).__name__}.compute()"
    if not isinstance(result, dict):
        raise PluginError(f"{where} returned a {type(result).__name__}, expected a dict")
    key = metric.primary
    if key not in result:
        raise PluginError(f"{where} has no {key!r} key (its primary metric); it gave {sorted(map(str, result))}")
    value = result[key]
    real = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not real or (isinstance(value, float) and math.isinf(value)):
        shown = " ".join(repr(value).split())
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise PluginError(f"{where}[{key!r}] is {shown}, expected a finite (or nan) int or float: the value that "
                          "picks the best checkpoint")


class TaskPlugin(abc.ABC):
    """One computer-vision task: its data, model, loss, metric, visuals and export."""

    #: the name used as ``task:`` in configs
    name: ClassVar[str]
    summary: ClassVar[str] = ""
    DataConfig: ClassVar[type[Section]]
    ModelConfig: ClassVar[type[Section]]
    LossConfig: ClassVar[type[Section]] = Section
    #: the Metric subclass :meth:`build_metric` returns: checked when the plugin loads (``primary``,
    #: ``higher_is_better``), so a mistake shows in ``visionkit plugins``, not after an epoch
    MetricClass: ClassVar[type[Metric]]
    #: raise it when ``data``/``model``/``loss`` change shape, and upgrade old ones in :meth:`upgrade_config`
    config_version: ClassVar[int] = 1

    def upgrade_config(self, sections: dict[str, dict[str, Any]], from_version: int) -> dict[str, dict[str, Any]]:
        """``{"data": ..., "model": ..., "loss": ...}`` as written at ``from_version``, in today's
        shape: checkpoints and run configs record the version they were written with."""
        return sections

    # --- data -------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_dataset(self, data: Any, split: str) -> torch.utils.data.Dataset:
        """The ``train`` or ``val`` split, with its augmentation pipeline.

        The dataset must expose ``classes`` (a list of names). Raise
        :class:`visionkit.errors.DataError` naming the file for bad data.
        """

    def sample_classes(self, dataset: Any) -> Optional[list[Sequence[int]]]:
        """For ``data.balanced_sampling`` (:mod:`visionkit.train.balanced`): the class indices
        each training sample holds (one list per sample, empty for none), read from labels or
        annotations, not by loading the images. None (the default): the task cannot say, and
        balanced sampling is refused in one line."""
        return None

    def check_data(self, dataset: Any, split: str) -> Any:
        """For ``visionkit data check`` and the pre-flight of ``visionkit train``: a
        :class:`visionkit.datacheck.SplitCheck` describing the built ``dataset``: each sample's
        image file, the size its annotation states, its class labels, and findings of the task's
        own (degenerate boxes...). The checker reads the images, counts classes and compares the
        splits. The default knows no files: the full check loads samples through the dataset."""
        from .datacheck import default_check

        return default_check(dataset, split)

    def draw_sample(self, dataset: Any, index: int, augmented: bool) -> Any:
        """For ``visionkit data show``: ``(PIL image, caption)`` of sample ``index`` with its labels
        drawn, as stored or (``augmented``) as ``dataset[index]`` gives it, through the split's
        transform. The default draws ``dataset[index][0]`` without labels."""
        from .datacheck.show import default_draw

        return default_draw(dataset, index, augmented)

    def collate(self, samples: list) -> Any:
        return torch.utils.data.default_collate(samples)

    def batch_size_of(self, batch: Any) -> int:
        """Number of images in a batch, for throughput figures."""
        return len(batch[0])

    def eval_size_key(self, dataset: Any, index: int) -> Any:
        """A hashable key: validation images with equal keys may share a batch.

        Give equal keys only to images that reach the model at one size (e.g. their stored width
        and height, read without decoding; one constant when the validation transforms end in a
        fixed resize): padding a mixed batch changes predictions, so the metric would depend on the
        worker count and batch size (see :mod:`visionkit.data.grouping`). The default, one key for
        all, batches in shard order as before.
        """
        return None

    # --- model, loss, prediction -----------------------------------------------------------
    @abc.abstractmethod
    def build_model(self, model: Any, classes: list[str], data: Any) -> torch.nn.Module:
        """``data`` is the validated data section, for input size or channels.

        Every ``Path`` field of ``model`` names a file of initial weights: when the model is
        rebuilt from a checkpoint (resume, eval, export) those fields are None, because the
        checkpoint's weights supersede them and the files may be gone."""

    @abc.abstractmethod
    def build_loss(self, loss: Any, classes: list[str]) -> LossFn:
        """A function ``(model, batch) -> LossOutput``; it runs the forward pass itself."""

    @abc.abstractmethod
    def predict(self, model: torch.nn.Module, batch: Any) -> Any:
        """Eval-mode forward pass; its result goes to :meth:`Metric.update`."""

    @abc.abstractmethod
    def build_metric(self, classes: list[str]) -> Metric:
        """An instance of :attr:`MetricClass`, fresh for each evaluation."""

    # --- outputs ----------------------------------------------------------------------------
    def write_visuals(self, result: dict[str, Any], classes: list[str], out_dir: Path) -> list[Path]:
        """Task-specific plots from an evaluation (confusion matrix, PR curve...)."""
        return []

    def report_sections(self, run: "RunView") -> list["ReportSection"]:
        """This task's part of the run's ``report.html``, between the curves and the config.

        ``run`` (:class:`visionkit.report.RunView`) reads the run: ``run.best`` (the best epoch's
        :meth:`Metric.compute` result), ``run.classes``, and ``run.predictions(limit)``: the best
        checkpoint on up to ``limit`` validation images, in this process, for per-image views.
        Build each section's HTML with :mod:`visionkit.report.blocks` (inline images, tables).
        The default shows :meth:`write_visuals` of the best epoch as images.
        """
        from .report import default_sections

        return default_sections(self, run)

    # --- export (ONNX) ------------------------------------------------------------------------
    def exporter(self) -> Optional["Exporter"]:
        """This task's export half, or None (the default): ``visionkit export`` then says in one
        line that the task does not export. Import torch-heavy export code here, lazily."""
        return None


class Exporter(abc.ABC):
    """A task's ONNX export half, given by :meth:`TaskPlugin.exporter`: what ``visionkit export``
    and ``visionkit eval model.onnx`` call. The inference half is the task's
    :class:`visionkit.runtime.TaskRuntime` (torch-free, its own entry point).

    The graph's input is always float32 NCHW, RGB (grey for one channel) in [0, 1], at the size
    the recorded pre-processing gives: normalisation and post-processing go inside the graph.
    """

    @abc.abstractmethod
    def plan(self, model: torch.nn.Module, classes: list[str], sections: Any, options: "ExportOptions") -> "ExportPlan":
        """The graph to export: a wrapper module whose outputs are what the runtime reads.
        ``sections``: the run's validated ``data``/``model``/``loss`` (``sections.data``...)."""

    @abc.abstractmethod
    def source(self, dataset: Any, index: int) -> Any:
        """Sample ``index`` as the runtime would receive it: its image file path, or a uint8 HxW
        or HxWx3 array."""

    def graph_input(self, dataset: Any, data: Any, index: int) -> torch.Tensor:
        """Sample ``index`` through the training pipeline's validation transform, as graph input
        (CxHxW in [0, 1]): compared with the runtime's own pre-processing of :meth:`source`."""
        return dataset[index][0]

    @abc.abstractmethod
    def reference(self, model: torch.nn.Module, dataset: Any, indices: Sequence[int]) -> list[dict[str, Any]]:
        """PyTorch's answer for each sample (the evaluation path), as the graph's outputs would
        be for that image: ``{output name: numpy array}``."""

    @abc.abstractmethod
    def compare(self, reference: list[dict[str, Any]], exported: list[dict[str, Any]], precision: str,
                plan: "ExportPlan") -> dict[str, Any]:
        """Did the exported graph answer as PyTorch did? ``exported``: the graph's outputs per
        image (as ``reference``). Return figures (numbers, for the report) and ``ok``; with
        ``threshold`` (text) the rule is printed too. fp16/int8 are judged by the metric after."""

    @abc.abstractmethod
    def metric_inputs(self, dataset: Any, indices: Sequence[int], results: list[dict[str, Any]]) -> tuple[Any, Any]:
        """``(outputs, batch)`` for :meth:`Metric.update` from the runtime's results (its
        ``postprocess`` dicts, under its ``eval_options``) on those samples, so
        ``visionkit eval model.onnx`` scores with the plugin's own metric."""


@dataclass
class ExportOptions:
    """What the user asked of ``visionkit export``."""

    opset: int = 17
    logits: bool = False  # segmentation: also output the per-pixel logits


@dataclass
class ExportPlan:
    """An exporter's answer to :meth:`Exporter.plan`.

    ``module`` maps images (N, C, H, W float32 in [0, 1]) to ``output_names`` in order.
    ``preprocess`` lists the runtime's steps before the graph (``{op: resize, height, width,
    interpolation}``): the validation transform of training, nothing else.
    """

    module: torch.nn.Module
    output_names: list[str]
    channels: int = 3
    dynamic_batch: bool = True
    dynamic_size: bool = True
    #: the exporter: the TorchScript-based one (False) or torch.export/dynamo (True, needs onnxscript)
    dynamo: bool = False
    preprocess: list[dict[str, Any]] = field(default_factory=list)
    normalization: dict[str, Any] = field(default_factory=dict)
    postprocess: dict[str, Any] = field(default_factory=dict)
    category_ids: Optional[list[int]] = None
    #: per output, its dynamic axes ({axis: name}); default: axis 0 is the batch when dynamic
    dynamic_axes: Optional[dict[str, dict[int, str]]] = None


def resize_steps(specs: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Validation transforms as runtime steps: only ``Resize`` can be replayed without torch and
    albumentations, so anything else is refused at export rather than silently dropped."""
    from .errors import ConfigError

    steps = []
    for i, spec in enumerate(specs):
        extra = sorted(set(spec) - {"name", "height", "width", "interpolation", "p"})
        if spec.get("name") != "Resize" or extra or spec.get("p", 1) != 1:
            raise ConfigError(f"{where}[{i}]: {spec.get('name')!r} cannot be replayed by the torch-free runtime; "
                              "for export, validation transforms may only be Resize (height, width, interpolation)")
        steps.append({"op": "resize", "height": int(spec["height"]), "width": int(spec["width"]),
                      "interpolation": int(spec.get("interpolation", 1))})
    return steps
