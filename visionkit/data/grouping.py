"""Validation batches of same-size images, so an image's prediction depends on nothing but itself.

A batch of images of different sizes has to be padded to its largest member, and padding changes
what a network predicts on the real pixels (border effects, global pooling, a detector's own batch
padding). Which images share a batch depends on the worker count and the batch size, so mixed
batches would make the validation metric depend on them too. Grouping by a size key the plugin
gives (:meth:`visionkit.plugin.TaskPlugin.eval_size_key`) removes the padding altogether.
"""

from __future__ import annotations

from typing import Any, Hashable, Optional, Sequence


def same_size_batches(indices: Sequence[int], keys: Sequence[Hashable], batch_size: int) -> list[list[int]]:
    """``indices`` in batches of at most ``batch_size`` whose members share one key.

    Each key's images keep their order and fill whole batches (only a key's last batch is short);
    batches are ordered by their first index, so with a single key this is exactly consecutive
    slicing, and the order never depends on anything but the inputs.
    """
    if len(indices) != len(keys):
        raise ValueError(f"{len(indices)} indices but {len(keys)} size keys")
    size = max(1, int(batch_size))
    groups: dict[Hashable, list[int]] = {}
    for index, key in zip(indices, keys):
        groups.setdefault(key, []).append(index)
    batches = [members[start:start + size] for members in groups.values() for start in range(0, len(members), size)]
    position = {index: n for n, index in enumerate(indices)}
    return sorted(batches, key=lambda batch: position[batch[0]])


def fixed_output_size(pipeline: Any) -> Optional[tuple[int, int]]:
    """``(height, width)`` of every output of an albumentations pipeline whose last geometric step
    is an unconditional ``Resize`` (only pixel-level transforms after it); else None.

    Then every image reaches the model at one size and needs no size key at all.
    """
    import albumentations as A

    for transform in reversed(list(getattr(pipeline, "transforms", None) or [])):
        if isinstance(transform, A.ImageOnlyTransform):
            continue
        if type(transform) is A.Resize and float(getattr(transform, "p", 1.0)) >= 1.0:
            return int(transform.height), int(transform.width)
        return None
    return None
