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
    """For ``on_corrupt: skip``: decode every file once up front, keep the good ones, warn once."""
    paths = list(paths)
    good = [p for p in paths if is_decodable(p)]
    bad = len(paths) - len(good)
    if bad:
        first = next(p for p in paths if p not in set(good))
        warnings.warn(f"{where}: skipped {bad} corrupt image(s) of {len(paths)} (first: {first})", stacklevel=2)
    return good
