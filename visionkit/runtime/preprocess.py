"""Images in, graph input out: the training pipeline's validation transform, replayed in numpy.

Training decodes with Pillow (``Image.open(...).convert("RGB")``), makes grey images the way
the classification dataset does (the channel mean, truncated to uint8), resizes with
albumentations' ``Resize`` (``cv2.resize``, skipped when the size already matches) and scales
to [0, 1]. The same calls in the same order happen here, so the two are equal value for value;
``visionkit export`` checks it on real validation images. Normalisation is inside the graph.
OpenCV is imported only when an image actually needs resizing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

ImageInput = Union[str, Path, bytes, np.ndarray, Any]  # Any: a PIL image


@dataclass
class Prepared:
    """One image ready for the graph, and what is needed to map results back onto it."""

    array: np.ndarray  # float32 CxHxW in [0, 1]
    original: np.ndarray  # HxWx3 uint8 RGB as decoded (for drawing)
    name: str  # file path, or "image <i>" for in-memory inputs
    orig_size: tuple[int, int]  # (height, width) before resizing

    @property
    def size(self) -> tuple[int, int]:
        return self.array.shape[1], self.array.shape[2]


def describe(source: ImageInput, index: int) -> str:
    return str(source) if isinstance(source, (str, Path)) else f"image {index}"


def decode(source: ImageInput, index: int = 0) -> np.ndarray:
    """HxWx3 uint8 RGB from a file path, encoded bytes, a PIL image or a numpy array."""
    from PIL import Image, UnidentifiedImageError

    name = describe(source, index)
    if isinstance(source, np.ndarray):
        return _from_array(source, name)
    try:
        if isinstance(source, (str, Path)):
            if not Path(source).is_file():
                raise DataError(f"{name}: no such image file")
            with Image.open(source) as img:
                return np.asarray(img.convert("RGB"))
        if isinstance(source, (bytes, bytearray)):
            with Image.open(io.BytesIO(source)) as img:
                return np.asarray(img.convert("RGB"))
        if isinstance(source, Image.Image):
            return np.asarray(source.convert("RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from None
    raise DataError(f"{name}: expected an image file path, encoded bytes, a PIL image or a numpy array, "
                    f"got {type(source).__name__}")


def _from_array(array: np.ndarray, name: str) -> np.ndarray:
    """uint8 HxW (grey), HxWx1, HxWx3 (RGB) or HxWx4 (RGBA, alpha dropped as Pillow does)."""
    if array.dtype != np.uint8:
        raise DataError(f"{name}: array of dtype {array.dtype}; expected uint8 pixel values 0-255")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise DataError(f"{name}: array of shape {tuple(array.shape)}; expected HxW (grey), HxWx1, HxWx3 (RGB) "
                        "or HxWx4 (RGBA)")
    if array.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))  # as Pillow's L -> RGB
    return np.ascontiguousarray(array[:, :, :3])


def resize(image: np.ndarray, height: int, width: int, interpolation: int = 1) -> np.ndarray:
    """albumentations' ``Resize``: ``cv2.resize`` with the same flag, a no-op at the same size."""
    if image.shape[:2] == (height, width):
        return image
    import cv2

    out = cv2.resize(image, (width, height), interpolation=interpolation)
    return out[:, :, None] if out.ndim == 2 else out


def prepare(image: np.ndarray, steps: list[dict[str, Any]], channels: int) -> np.ndarray:
    """HxWx3 uint8 RGB -> float32 CxHxW in [0, 1], through the recorded steps."""
    if channels == 1:
        # The classification dataset's grey conversion, truncation included.
        image = np.asarray(image.mean(axis=2, keepdims=True), dtype=np.uint8)
    for step in steps:
        image = resize(image, step["height"], step["width"], step.get("interpolation", 1))
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def list_images(paths: list[Union[str, Path]]) -> list[Path]:
    """Files as given, folders expanded to their images (recursively, sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{p}: no images in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such image file or folder")
    return out
