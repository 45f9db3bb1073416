"""``visionkit data show``: a grid of samples with their labels drawn, as stored or as the model
will see them (``--augmented``: through the split's own transform, the training augmentation for
the train split, seeded as epoch 1 of a run with ``train.seed`` draws it).

Each task draws its own tile (:meth:`visionkit.plugin.TaskPlugin.draw_sample`): boxes and class
names, mask overlays, a class caption. The grid is ``ceil(sqrt(n))`` tiles wide; every cell is as
large as the largest tile plus a caption line, with a ``PAD``-pixel gap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

PAD = 6
CAPTION = 16
#: the longest side of a tile: photos are drawn smaller (16 tiles of 4000-px images made a
#: 16000-px grid), small images larger (whole pixels) up to ``TILE_MIN``
TILE_MAX = 512
TILE_MIN = 256


def to_uint8(image: Any) -> np.ndarray:
    """A CHW float tensor in [0, 1] (or HxWx3 array) -> HxWx3 uint8."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def fit(image: np.ndarray) -> tuple[np.ndarray, float]:
    """The image at tile size and the scale it was drawn at: small images larger (whole-pixel
    steps, nearest: a 32-px image's pixels stay sharp and labels readable), large ones smaller
    (pixel areas averaged) to ``TILE_MAX`` on their longest side."""
    from PIL import Image

    side = max(image.shape[:2])
    if side > TILE_MAX:
        scale = TILE_MAX / side
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        return np.asarray(Image.fromarray(image).resize(size, Image.BOX)), scale
    scale = max(1, TILE_MIN // side)
    return (np.kron(image, np.ones((scale, scale, 1), dtype=np.uint8)) if scale > 1 else image), scale


def grid(tiles: list[tuple[Any, str]]):
    """``(PIL image, caption)`` tiles -> one PIL image; a plugin's tile larger than ``TILE_MAX``
    is shrunk to it."""
    from PIL import Image, ImageDraw

    tiles = [(_capped(t), c) for t, c in tiles]
    cols = max(1, math.ceil(math.sqrt(len(tiles))))
    rows = max(1, math.ceil(len(tiles) / cols))
    cell_w = max(t.width for t, _ in tiles)
    cell_h = max(t.height for t, _ in tiles) + CAPTION
    sheet = Image.new("RGB", (PAD + cols * (cell_w + PAD), PAD + rows * (cell_h + PAD)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (tile, caption) in enumerate(tiles):
        x, y = PAD + (k % cols) * (cell_w + PAD), PAD + (k // cols) * (cell_h + PAD)
        draw.text((x, y + 2), caption[: max(8, cell_w // 6)], fill=(0, 0, 0))
        sheet.paste(tile, (x, y + CAPTION))
    return sheet


def _capped(tile):
    if max(tile.size) <= TILE_MAX:
        return tile
    tile = tile.copy()
    tile.thumbnail((TILE_MAX, TILE_MAX))
    return tile


def show(plugin, sections, train_seed: int, split: str, augmented: bool, n: int, out: Path) -> tuple[Path, int, int]:
    """Writes the grid of ``n`` samples of ``split`` (evenly spread over it) to ``out``; returns
    (out, samples drawn, split size)."""
    import torch

    from ..errors import UserError
    from ..train.sampling import sample_seed
    from . import spread

    if n < 1:
        raise UserError(f"data show: -n {n}: draw at least one sample")
    dataset = plugin.build_dataset(sections.data, split)
    if len(dataset) == 0:
        raise UserError(f"data show: the {split} split has no samples")
    tiles = []
    for index in spread(len(dataset), n):
        if augmented:
            torch.manual_seed(sample_seed(train_seed, 0, index))
        tiles.append(plugin.draw_sample(dataset, index, augmented))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid(tiles).save(out)
    return out, len(tiles), len(dataset)


def default_draw(dataset, index: int, augmented: bool):
    """For a plugin without ``draw_sample``: the sample's image as the dataset gives it, scaled to
    its own range, no labels."""
    from PIL import Image

    image = dataset[index][0]
    array = image.detach().cpu().float().numpy() if hasattr(image, "detach") else np.asarray(image, dtype=float)
    lo, hi = float(array.min()), float(array.max())
    array = (array - lo) / (hi - lo) if hi > lo else array * 0
    tile, _ = fit(to_uint8(array))
    return Image.fromarray(tile), f"#{index}"
