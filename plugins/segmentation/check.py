"""``check_data`` for segmentation: image files (COCO: with the size the JSON states) and mask
files (header and end, size as the image's: the pre-flight reads them too, as masks are decoded
at build time only with ``data.verify``); the full check decodes each mask (values within the
classes) and counts, per class, the images that contain it."""

from __future__ import annotations

import numpy as np

from visionkit.datacheck import Sample, SplitCheck
from visionkit.datacheck.images import header_size

from .data import IGNORE_INDEX, CocoMasks, check_mask


def check_data(dataset, split: str) -> SplitCheck:
    source = dataset.source
    coco = isinstance(source, CocoMasks)
    samples = [Sample(path, source.size(i) if coco else None, None, source.name(i) if coco else "",
                      None if coco else source.masks[i])
               for i, path in enumerate(source.images)]
    num_classes = len(dataset.classes)

    def deep(i: int) -> list[int]:
        mask = source.mask(i)
        check_mask(mask, source.name(i), header_size(source.images[i]), source.images[i], num_classes)
        return [int(v) for v in np.unique(mask) if v != IGNORE_INDEX]

    return SplitCheck(list(dataset.classes), samples, counts="images containing it", background=0, deep=deep)


def draw_sample(dataset, index: int, augmented: bool):
    """The mask as class colours over the image (segmentation's report overlay), the classes
    present as the caption."""
    from PIL import Image

    from visionkit.datacheck.show import fit, to_uint8
    from visionkit.runtime.tasks import palette

    from .visuals import overlay

    if augmented:
        image, mask = dataset[index]
        image, mask = to_uint8(image), mask.numpy()
    else:
        image, mask = dataset.raw(index)
    drawn = overlay(image, mask.astype(np.int64), palette(len(dataset.classes)))
    tile, _ = fit(drawn)
    present = [dataset.classes[int(v)] for v in np.unique(mask) if 0 < v < len(dataset.classes)]
    return Image.fromarray(tile), f"{dataset.source.images[index].name}: {', '.join(present) or 'background only'}"
