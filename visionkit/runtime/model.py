"""``Model``: an exported graph, its metadata and the pre/post-processing around it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from ..errors import DataError
from .metadata import Metadata, ModelError
from .options import Option, OptionError, check_declared, resolve
from .preprocess import ImageInput, Prepared, decode, describe, prepare
from .tasks import TaskRuntime, task_runtime


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available


def open_session(path: Path, providers: Optional[Sequence[str]] = None, threads: Optional[int] = None):
    """An onnxruntime session; anything that is not a loadable ONNX file is a one-line error."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings about unused initialisers
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers or default_providers()))
    except Exception as exc:  # onnxruntime raises its own (pybind) classes for bad protobufs
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{path}: not a usable ONNX model ({first[:300]})") from None


def foreign_metadata(task: str, classes: list[str], input_size: Optional[Sequence[int]] = None,
                     mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                     channels: int = 3) -> Metadata:
    """Metadata given by hand for a model that was not exported by visionkit.

    Such a graph is assumed to take normalised float32 NCHW input; what its outputs mean is the
    task runtime's business (:meth:`TaskRuntime.foreign`: classification applies a softmax to
    class scores, segmentation takes class maps or per-pixel scores; a detector's outputs have no
    standard layout, so it is refused).
    """
    mean = list(mean) if mean is not None else ([0.485, 0.456, 0.406] if channels == 3 else [0.5])
    std = list(std) if std is not None else ([0.229, 0.224, 0.225] if channels == 3 else [0.5])
    steps = []
    if input_size:
        h, w = (int(input_size[0]), int(input_size[-1]))
        steps = [{"op": "resize", "height": h, "width": w, "interpolation": 1}]
    meta = Metadata(task=task, classes=list(classes), channels=channels,
                    input_size=[steps[0]["height"], steps[0]["width"]] if steps else None, preprocess=steps,
                    normalization={"mean": mean, "std": std, "in_graph": False})
    return task_runtime(task).foreign(meta)


class Model:
    """An exported model, ready to predict; imports numpy, onnxruntime and Pillow, never torch.

    >>> model = Model.load("model.onnx")
    >>> model.metadata.classes
    >>> model.predict(["a.png", numpy_rgb_array])   # -> one JSON-able dict per image
    """

    def __init__(self, session, metadata: Metadata, path: Path):
        self.session = session
        self.metadata = metadata
        self.path = Path(path)
        self.task: TaskRuntime = task_runtime(metadata.task)
        graph_input = session.get_inputs()[0]
        self.input_name = graph_input.name
        self.output_names = [o.name for o in session.get_outputs()]
        shape = list(graph_input.shape) + [None] * (4 - len(graph_input.shape))
        if len(graph_input.shape) != 4:
            raise ModelError(f"{path}: the graph's input {graph_input.name!r} has shape {graph_input.shape}; "
                             "expected 4 dimensions (N, C, H, W)")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.fixed_size = tuple(shape[2:]) if all(isinstance(d, int) for d in shape[2:]) else None
        if isinstance(shape[1], int) and shape[1] != metadata.channels:
            raise ModelError(f"{path}: the graph takes {shape[1]} channels but its metadata says {metadata.channels}")
        missing = [n for n in self.task.outputs if n not in self.output_names]
        if missing and metadata.normalization.get("in_graph", True):  # foreign graphs name outputs freely
            raise ModelError(f"{path}: the graph has no output {missing[0]!r} that a {metadata.task} model needs "
                             f"(it has {', '.join(self.output_names)})")
        #: the query options of this model's task, with their ranges for this model
        self.options: list[Option] = check_declared(self.task.options(metadata), metadata.task)

    @classmethod
    def load(cls, path: Union[str, Path], providers: Optional[Sequence[str]] = None, threads: Optional[int] = None,
             metadata: Optional[Metadata] = None) -> "Model":
        """``metadata`` describes a model that carries none (see :func:`foreign_metadata`)."""
        session = open_session(Path(path), providers, threads)
        if metadata is None:
            props = session.get_modelmeta().custom_metadata_map
            metadata = Metadata.from_props(props, str(path))
        else:
            metadata.outputs = metadata.outputs or [o.name for o in session.get_outputs()]
            metadata.validate(str(path))
        return cls(session, metadata, Path(path))

    # --- the three steps ------------------------------------------------------------------------
    def preprocess(self, images: Sequence[ImageInput]) -> list[Prepared]:
        out = []
        norm = self.metadata.normalization or {}
        for i, source in enumerate(images):
            rgb = decode(source, i)
            array = prepare(rgb, self.metadata.preprocess, self.metadata.channels)
            if not norm.get("in_graph", True):
                mean = np.asarray(norm["mean"], dtype=np.float32)[:, None, None]
                std = np.asarray(norm["std"], dtype=np.float32)[:, None, None]
                array = (array - mean) / std
            if self.fixed_size and array.shape[1:] != self.fixed_size:
                raise DataError(f"{describe(source, i)}: image is {array.shape[2]}x{array.shape[1]} after "
                                f"pre-processing; this model takes exactly {self.fixed_size[1]}x{self.fixed_size[0]}")
            out.append(Prepared(array, rgb, describe(source, i), rgb.shape[:2]))
        return out

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The bare graph: float32 NCHW in, its outputs by name."""
        n = len(batch)
        if self.fixed_batch and n < self.fixed_batch:  # a fixed-batch graph's last, partial group
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.fixed_batch - n, axis=0)])
        try:
            values = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        except Exception as exc:  # onnxruntime's own errors: a foreign graph's input type, shapes
            lines = str(exc).strip().splitlines()
            raise ModelError(f"{self.path}: onnxruntime could not run the graph on a batch of shape "
                             f"{tuple(batch.shape)} ({lines[0] if lines else type(exc).__name__})") from None
        return {name: value[:n] if self.fixed_batch and len(value) == self.fixed_batch else value
                for name, value in zip(self.output_names, values)}

    def batches(self, prepared: Sequence[Prepared], batch_size: int) -> Iterator[list[int]]:
        """Indices of consecutive images of one size, at most ``batch_size`` (1 for a fixed-batch graph)."""
        limit = self.fixed_batch or max(1, batch_size)
        group: list[int] = []
        for i, item in enumerate(prepared):
            if group and (len(group) == limit or prepared[group[0]].size != item.size):
                yield group
                group = []
            group.append(i)
        if group:
            yield group

    def outputs_per_image(self, prepared: Sequence[Prepared], batch_size: int = 8) -> list[dict[str, np.ndarray]]:
        per_image: list[dict[str, np.ndarray]] = [{} for _ in prepared]
        for group in self.batches(prepared, batch_size):
            outputs = self.run(np.stack([prepared[i].array for i in group]))
            for k, i in enumerate(group):
                per_image[i] = {name: value[k] for name, value in outputs.items()}
        return per_image

    def resolve(self, options: dict[str, Any]) -> dict[str, Any]:
        """Every option of this model's task: the given value (checked) or its default. An option
        the task does not declare is a one-line error naming the accepted ones."""
        try:
            return resolve(self.options, options, self.metadata.task)
        except OptionError as exc:
            raise OptionError(f"{self.path}: {exc}") from None

    def postprocess(self, outputs: Sequence[dict[str, np.ndarray]], prepared: Sequence[Prepared],
                    options: dict[str, Any]) -> list[dict[str, Any]]:
        """The task runtime's results; ``options`` as :meth:`resolve` gives them."""
        return [self.task.postprocess(out, item, self.metadata, options) for out, item in zip(outputs, prepared)]

    def predict(self, images: Sequence[ImageInput], batch_size: int = 8, **options: Any) -> list[dict[str, Any]]:
        """One result per image, as ``visionkit predict`` writes them. ``options``: the task's
        own (:attr:`options`; e.g. ``top_k`` for classification, ``score_thresh`` for detection)."""
        resolved = self.resolve(options)
        single = isinstance(images, (str, Path, bytes)) or hasattr(images, "convert")
        if single or (isinstance(images, np.ndarray) and images.ndim != 4):
            images = [images]
        prepared = self.preprocess(list(images))
        return self.postprocess(self.outputs_per_image(prepared, batch_size), prepared, resolved)

    def draw(self, image: ImageInput, result: dict[str, Any], **options: Any):
        return self.task.draw(decode(image), result, self.metadata, self.resolve(options))
