"""Image decoding shared by the plugins: one place that turns a bad file into a clear error."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def load_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8; a file PIL cannot decode raises DataError naming it."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc}); "
                        "fix or remove it, or set data.on_corrupt: skip") from None


def is_decodable(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def drop_corrupt(paths: Iterable[Path], where: str) -> list[Path]:
    """For ``on_corrupt: skip``: decode every file once up front, keep the good ones, warn once.

    One pass, noting the bad files as they come: linear in the file count (a lookup of each file
    among the good ones was quadratic once a bad file existed)."""
    good: list[Path] = []
    bad: list[Path] = []
    for p in paths:
        (good if is_decodable(p) else bad).append(p)
    if bad:
        warnings.warn(f"{where}: skipped {len(bad)} corrupt image(s) of {len(good) + len(bad)} (first: {bad[0]})",
                      stacklevel=2)
    return good
