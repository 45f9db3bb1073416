"""Classification datasets: ImageFolder trees and MNIST IDX files, read from disk."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from pydantic import Field

from visionkit.data.images import IMAGE_SUFFIXES, drop_corrupt, load_rgb
from visionkit.data.transforms import build_pipeline
from visionkit.errors import DataError
from visionkit.plugin import Section

DEMO_HINT = "create the built-in demo data with: visionkit data synth classification {root}"


class DataConfig(Section):
    format: Literal["imagefolder", "mnist"] = "imagefolder"
    root: Path
    train_dir: str = "train"
    val_dir: str = "val"
    image_size: Optional[int] = Field(None, ge=8, description="resize to a square; default: as stored")
    channels: Literal[1, 3] = 3
    mean: list[float] = [0.485, 0.456, 0.406]
    std: list[float] = [0.229, 0.224, 0.225]
    train_transforms: list[dict[str, Any]] = []
    val_transforms: list[dict[str, Any]] = []
    on_corrupt: Literal["fail", "skip"] = "fail"
    cache_images: bool = Field(False, description="keep decoded images in memory (small datasets)")
    balanced_sampling: bool = Field(False, description="draw each epoch's training samples so that classes come "
                                    "up equally (an image counts for the rarest class it holds), with replacement")

    def model_input_size(self) -> int:
        """The side a fixed-input model (the MLP) is built for when image_size is not set."""
        return self.image_size or (28 if self.format == "mnist" else 64)


class ImageFolderDataset(torch.utils.data.Dataset):
    """``root/<split>/<class>/<image>``; classes are the sorted folder names of the train split."""

    def __init__(self, cfg: DataConfig, split: str):
        folder = cfg.root / (cfg.train_dir if split == "train" else cfg.val_dir)
        if not folder.is_dir():
            hint = f"; {DEMO_HINT.format(root=cfg.root)}" if "shapes" in str(cfg.root) else ""
            raise DataError(f"{folder}: data folder not found (data.root / data.{split}_dir){hint}")
        train_folder = cfg.root / cfg.train_dir
        self.classes = sorted(p.name for p in train_folder.iterdir() if p.is_dir()) if train_folder.is_dir() else []
        if not self.classes:
            raise DataError(f"{train_folder}: no class folders (expected {train_folder}/<class>/<image>)")
        self.samples: list[tuple[Path, int]] = []
        for index, name in enumerate(self.classes):
            class_dir = folder / name
            files = sorted(p for p in class_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if class_dir.is_dir() else []
            if not files and split == "train":
                raise DataError(f"{class_dir}: class folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            if cfg.on_corrupt == "skip":
                files = drop_corrupt(files, str(class_dir))
            self.samples += [(f, index) for f in files]
        extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in self.classes)
        if extra:
            raise DataError(f"{folder}: class folder(s) {extra} are not in {train_folder}")
        if not self.samples:
            raise DataError(f"{folder}: no images found")
        self.channels = cfg.channels
        self.transform = _pipeline(cfg, split)
        self._cache: dict[int, np.ndarray] | None = {} if cfg.cache_images else None

    def __len__(self) -> int:
        return len(self.samples)

    def _image(self, index: int) -> np.ndarray:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        img = load_rgb(self.samples[index][0])
        if self.channels == 1:
            img = np.asarray(img.mean(axis=2, keepdims=True), dtype=np.uint8)
        if self._cache is not None:
            self._cache[index] = img
        return img

    def __getitem__(self, index: int):
        return self.transform(image=self._image(index))["image"], self.samples[index][1]


def _pipeline(cfg: DataConfig, split: str):
    import albumentations as A

    tail = [A.Resize(cfg.image_size, cfg.image_size)] if cfg.image_size else []
    tail += [A.Normalize(mean=cfg.mean, std=cfg.std), A.ToTensorV2()]
    specs = cfg.train_transforms if split == "train" else cfg.val_transforms
    return build_pipeline(specs, f"data.{split}_transforms", tail)


# --- MNIST IDX ----------------------------------------------------------------------------

MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz", root / "MNIST" / "raw" / stem, root / "MNIST" / "raw" / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{root / stem}[.gz]: MNIST IDX file not found (data.root); "
                    f"fetch the files with: visionkit data mnist {root}")


def read_idx(path: Path) -> np.ndarray:
    """The IDX format of the MNIST files: magic (0, 0, dtype, ndim), dims, then big-endian data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError(f"magic {raw[:4].hex()} is not an unsigned-byte IDX header")
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(dims)):
            raise ValueError(f"{data.size} bytes of data for shape {dims}")
        return data.reshape(dims)
    except (OSError, EOFError, ValueError, struct.error) as exc:
        raise DataError(f"{path}: not a valid IDX file ({exc})") from None


class MnistDataset(torch.utils.data.Dataset):
    """MNIST from its raw ``*-ubyte[.gz]`` files. Without augmentations, all images are
    normalised once into one tensor, so the loop is not bound by per-sample Python work."""

    classes = [str(d) for d in range(10)]

    def __init__(self, cfg: DataConfig, split: str):
        images_file, labels_file = (_find_idx(cfg.root, stem) for stem in MNIST_FILES[split])
        images, labels = read_idx(images_file), read_idx(labels_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{images_file}: {images.shape} images do not match {labels_file}: {labels.shape} labels")
        if labels.max(initial=0) > 9:
            raise DataError(f"{labels_file}: label {labels.max()} outside 0-9")
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.raw = images  # uint8 HxW, as the ONNX runtime is given them (export checks, eval)
        specs = cfg.train_transforms if split == "train" else cfg.val_transforms
        size = cfg.image_size
        if specs or (size and size != images.shape[1]) or cfg.channels == 3:
            self.images, self.transform = images[..., None], _pipeline(cfg, split)
            self.channels = cfg.channels
        else:
            mean, std = cfg.mean[0], cfg.std[0]
            self.tensor = (torch.from_numpy(images.copy()).float().div_(255).sub_(mean).div_(std)).unsqueeze(1)
            self.transform = None
        # No augmentation: the trainer need not seed each sample (visionkit.train.sampling).
        self.random_samples = self.transform is not None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        if self.transform is None:
            return self.tensor[index], self.labels[index]
        img = self.images[index]
        if self.channels == 3:
            img = np.repeat(img, 3, axis=2)
        return self.transform(image=img)["image"], self.labels[index]


def build_dataset(cfg: DataConfig, split: str) -> torch.utils.data.Dataset:
    return MnistDataset(cfg, split) if cfg.format == "mnist" else ImageFolderDataset(cfg, split)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Writes uint8 data in IDX format (gzip if the name ends in .gz); for tests and exports."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(header + array.tobytes())
