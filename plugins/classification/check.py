"""``check_data`` for classification: ImageFolder files with their class; MNIST's labels (no files)."""

from __future__ import annotations

from visionkit.datacheck import Sample, SplitCheck


def check_data(dataset, split: str) -> SplitCheck:
    if hasattr(dataset, "samples"):  # ImageFolder
        samples = [Sample(path, None, [label]) for path, label in dataset.samples]
    else:  # MNIST: arrays in the IDX files, already checked when they were read
        samples = [Sample(None, None, [int(label)]) for label in dataset.labels.tolist()]
    return SplitCheck(list(dataset.classes), samples, counts="images", report_empty=False)


def _unnormalise(dataset, image):
    """The augmented tensor back to pixels: the pipeline's Normalize undone."""
    import numpy as np

    array = image.numpy().transpose(1, 2, 0).astype(np.float64)
    norm = next((t for t in getattr(getattr(dataset, "transform", None), "transforms", [])
                 if type(t).__name__ == "Normalize"), None)
    if norm is not None:
        mean = np.asarray(norm.mean, dtype=np.float64).reshape(-1)[: array.shape[2]]
        std = np.asarray(norm.std, dtype=np.float64).reshape(-1)[: array.shape[2]]
        array = (array * std + mean) * (norm.max_pixel_value / 255.0)
    else:
        array = (array - array.min()) / max(float(array.max() - array.min()), 1e-12)
    return array


def draw_sample(dataset, index: int, augmented: bool):
    """The image with its class name as a caption drawn on it."""
    import numpy as np

    from visionkit.data.images import load_rgb
    from visionkit.datacheck.show import fit, to_uint8
    from visionkit.runtime.tasks import label

    if hasattr(dataset, "samples"):
        path, target = dataset.samples[index]
        name = path.name
    else:
        path, target, name = None, int(dataset.labels[index]), f"#{index}"
    if augmented:
        image = to_uint8(_unnormalise(dataset, dataset[index][0]))
    elif path is not None:
        image = load_rgb(path)
    else:
        image = to_uint8(np.asarray(dataset.raw[index]))
    return label(fit(image)[0], dataset.classes[int(target)]), name
