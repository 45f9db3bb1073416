"""Segmentation data: images paired with a class index per pixel.

Two sources give the same samples: a folder of mask PNGs (``format: masks``; Pascal VOC,
Cityscapes-style label maps, the shapes generator's ``masks/``) and COCO instances JSON rendered
to semantic masks (``format: coco``). A sample is ``(image, mask)``: float32 RGB in [0, 1], CxHxW
(normalisation lives in the model, so the export sees the same input), and int64 class indices,
HxW, with :data:`IGNORE_INDEX` for pixels that count in neither the loss nor the metric.

Bad data fails with one line naming the file: a mask of another size than its image, mask values
outside the class list, an image without a mask, a missing or empty folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import Field, field_validator

from visionkit.data.grouping import fixed_output_size
from visionkit.data.images import IMAGE_SUFFIXES, is_decodable, load_rgb
from visionkit.data.transforms import build_pipeline
from visionkit.errors import ConfigError, DataError
from visionkit.plugin import Section

#: mask value for "not labelled": excluded from the loss and the metric (Pascal VOC's convention)
IGNORE_INDEX = 255
#: masks must be lossless: a JPEG mask would invent class indices at every edge
MASK_SUFFIXES = {".png", ".bmp", ".tif", ".tiff", ".pgm"}
#: PIL modes whose pixel values are class indices ("P": the palette index, never its colour)
INDEX_MODES = {"P", "L", "1", "I", "I;16", "I;16L", "I;16B"}


class DataConfig(Section):
    """Where the images and masks are. Sub-paths are relative to ``root``; ``{split}`` in them
    becomes ``train_split`` or ``val_split`` (e.g. ``train2017`` for COCO)."""

    root: Path
    format: Literal["masks", "coco"] = "masks"
    images: str = "images/{split}"
    masks: str = Field("masks/{split}", description="mask PNG folder, matched to images by file stem (format: masks)")
    annotations: str = Field("annotations/instances_{split}.json", description="COCO instances JSON (format: coco)")
    split_list: Optional[str] = Field(None, description="a text file of image ids (file stems), one per line, "
                                      "e.g. VOC's ImageSets/Segmentation/{split}.txt; else every image in the folder")
    train_split: str = "train"
    val_split: str = "val"
    classes: Optional[list[str]] = Field(None, description="class names in index order (index 0 first); "
                                         "format: coco: the categories to keep, classes[0] naming background")
    classes_file: str = Field("classes.txt", description="one name per line, used when classes is not given (format: masks)")
    train_transforms: list[dict[str, Any]] = Field(default_factory=list, description="albumentations, mask-aware")
    val_transforms: list[dict[str, Any]] = Field(default_factory=list)
    verify: bool = Field(True, description="check every sample when the dataset is built (mask PNGs decoded; COCO: "
                         "image sizes against the JSON), so bad data fails before training starts; false "
                         "leaves the same checks to each sample's first read")
    on_corrupt: Literal["error", "skip"] = "error"
    balanced_sampling: bool = Field(False, description="draw each epoch's training samples so that classes come "
                                    "up equally (an image counts for the rarest class it holds), with replacement")

    @field_validator("classes")
    @classmethod
    def _classes_ok(cls, value):
        if value is not None:
            if len(value) < 2:
                raise ValueError("give at least two classes (index 0 is usually background)")
            if len(value) > IGNORE_INDEX:
                raise ValueError(f"at most {IGNORE_INDEX} classes: value {IGNORE_INDEX} marks ignored pixels")
            if len(set(value)) != len(value):
                raise ValueError("class names must be unique")
        return value


# --- reading masks ------------------------------------------------------------------------------

def load_mask(path: Path) -> np.ndarray:
    """HxW class indices. Palette PNGs (VOC) are read by index, so their colours never matter."""
    try:
        with Image.open(path) as img:
            if img.mode not in INDEX_MODES:
                raise DataError(f"{path}: mask has PIL mode {img.mode} (colour); expected one class index per "
                                "pixel (a palette or greyscale PNG)")
            mask = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode mask ({type(exc).__name__}: {exc})") from None
    return mask.astype(np.uint8) if mask.dtype == bool else mask


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header alone."""
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None


def check_mask(mask: np.ndarray, mask_name: str, size: tuple[int, int], image_path: Path, num_classes: int) -> None:
    h, w = mask.shape[:2]
    if (w, h) != tuple(size):
        raise DataError(f"{mask_name}: mask is {w}x{h} pixels but its image {image_path} is {size[0]}x{size[1]}")
    bad = ((mask < 0) | (mask >= num_classes)) & (mask != IGNORE_INDEX)
    if bad.any():
        values = np.unique(mask[bad])
        shown = ", ".join(str(int(v)) for v in values[:10]) + (f" (+{len(values) - 10} more)" if len(values) > 10 else "")
        raise DataError(f"{mask_name}: mask values {shown} are outside the {num_classes} classes "
                        f"(0..{num_classes - 1}; {IGNORE_INDEX} = ignore)")


def _index_folder(folder: Path, suffixes: set[str], what: str) -> dict[str, Path]:
    """Files by stem; two files with one stem would make the pairing ambiguous."""
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in suffixes and path.is_file():
            if path.stem in found:
                raise DataError(f"{path}: two {what} files named {path.stem!r} ({found[path.stem].name}); keep one")
            found[path.stem] = path
    if not found:
        raise DataError(f"{folder}: no {what} files ({', '.join(sorted(suffixes))})")
    return found


def _read_split_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: split list not found")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: split list is empty")
    return ids


class MaskFolder:
    """Masks from PNG files; a sample's mask is the file with its image's stem."""

    def __init__(self, images: list[Path], masks: list[Path]):
        self.images, self.masks = images, masks

    @classmethod
    def scan(cls, images_dir: Path, masks_dir: Path, split_list: Optional[Path]) -> "MaskFolder":
        images = _index_folder(images_dir, IMAGE_SUFFIXES, "image")
        masks = _index_folder(masks_dir, MASK_SUFFIXES, "mask")
        if split_list is None:
            ids = list(images)
        else:
            ids = _read_split_list(split_list)
            for n, stem in enumerate(ids, start=1):
                if stem not in images:
                    raise DataError(f"{split_list}: line {n}: no image {stem!r} in {images_dir}")
        for stem in ids:
            if stem not in masks:
                raise DataError(f"{images[stem]}: no mask {masks_dir / (stem + '.png')}")
        return cls([images[s] for s in ids], [masks[s] for s in ids])

    def __len__(self) -> int:
        return len(self.images)

    def name(self, i: int) -> str:
        return str(self.masks[i])

    def mask(self, i: int) -> np.ndarray:
        return load_mask(self.masks[i])

    def size(self, i: int) -> tuple[int, int]:
        """(width, height) from the image's header, without decoding it."""
        return image_size(self.images[i])

    def verify(self, i: int, num_classes: int) -> None:
        check_mask(self.mask(i), self.name(i), image_size(self.images[i]), self.images[i], num_classes)

    def keep(self, indices: list[int]) -> None:
        self.images = [self.images[i] for i in indices]
        self.masks = [self.masks[i] for i in indices]


class CocoMasks:
    """COCO instances rendered to semantic masks with pycocotools' ``annToMask``.

    Category ids map to contiguous indices (0 = background) in id order, or to the position of
    their name in ``classes`` when given (categories not named there become background).
    Crowd regions are marked ignore (255): whether a crowd pixel is the class is ambiguous.
    Where annotations overlap, the later one in the file wins, as a painter's drawing order.
    """

    def __init__(self, json_path: Path, images_dir: Path, classes: Optional[list[str]]):
        from pycocotools.coco import COCO

        if not json_path.is_file():
            raise DataError(f"{json_path}: COCO annotations file not found")
        try:
            data = json.loads(json_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{json_path}: not valid JSON ({exc})") from None
        for key in ("images", "annotations", "categories"):
            if not isinstance(data, dict) or not isinstance(data.get(key), list):
                raise DataError(f"{json_path}: no {key!r} list; expected a COCO instances file")
        cats = sorted(data["categories"], key=lambda c: c["id"])
        if classes is None:
            self.classes = ["background", *(c["name"] for c in cats)]
            self.cat_to_index = {c["id"]: i for i, c in enumerate(cats, start=1)}
        else:
            by_name = {c["name"]: c["id"] for c in cats}
            missing = [n for n in classes[1:] if n not in by_name]
            if missing:
                raise DataError(f"{json_path}: no category named {', '.join(map(repr, missing))} "
                                f"(categories: {', '.join(sorted(by_name))})")
            self.classes = list(classes)
            named = {by_name[n]: i for i, n in enumerate(classes[1:], start=1)}
            self.cat_to_index = {c["id"]: named.get(c["id"], 0) for c in cats}
        if len(self.classes) > IGNORE_INDEX:
            raise DataError(f"{json_path}: {len(self.classes)} classes; at most {IGNORE_INDEX} fit beside the ignore value")
        for ann in data["annotations"]:
            if ann.get("category_id") not in self.cat_to_index:
                raise DataError(f"{json_path}: annotation {ann.get('id')} has category_id {ann.get('category_id')!r}, "
                                "not among the file's categories")
            if not ann.get("segmentation"):
                raise DataError(f"{json_path}: annotation {ann.get('id')} has no segmentation (a boxes-only file?)")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            self.coco = COCO()
            self.coco.dataset = data
            self.coco.createIndex()
        self.json_path = json_path
        self.records = sorted(data["images"], key=lambda r: r["id"])
        self.images = [images_dir / r["file_name"] for r in self.records]
        for path in self.images:
            if not path.is_file():
                raise DataError(f"{path}: image listed in {json_path} not found")

    def __len__(self) -> int:
        return len(self.records)

    def name(self, i: int) -> str:
        return f"{self.json_path} (image id {self.records[i]['id']}, {self.records[i]['file_name']})"

    def mask(self, i: int) -> np.ndarray:
        rec = self.records[i]
        mask = np.zeros((rec["height"], rec["width"]), dtype=np.uint8)
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=rec["id"], iscrowd=None))
        for ann in sorted(anns, key=lambda a: bool(a.get("iscrowd"))):  # crowds last: ignore wins there
            value = IGNORE_INDEX if ann.get("iscrowd") else self.cat_to_index[ann["category_id"]]
            mask[self.coco.annToMask(ann).astype(bool)] = value
        return mask

    def size(self, i: int) -> tuple[int, int]:
        """(width, height) as the file records it; a wrong record fails when the sample is read."""
        return self.records[i]["width"], self.records[i]["height"]

    def verify(self, i: int, num_classes: int) -> None:
        """Rendered masks hold only valid indices; what can be wrong is the recorded size."""
        rec, size = self.records[i], image_size(self.images[i])
        if (rec["width"], rec["height"]) != size:
            raise DataError(f"{self.name(i)}: the file gives the image as {rec['width']}x{rec['height']} pixels "
                            f"but {self.images[i]} is {size[0]}x{size[1]}")

    def keep(self, indices: list[int]) -> None:
        self.records = [self.records[i] for i in indices]
        self.images = [self.images[i] for i in indices]


def read_classes(cfg: DataConfig) -> list[str]:
    if cfg.classes is not None:
        return list(cfg.classes)
    path = cfg.root / cfg.classes_file
    if not path.is_file():
        raise ConfigError(f"data.classes: not given, and the classes file {path} does not exist")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) < 2 or len(set(names)) != len(names) or len(names) > IGNORE_INDEX:
        raise DataError(f"{path}: expected 2..{IGNORE_INDEX} unique class names, one per line (got {len(names)})")
    return names


# --- the dataset ----------------------------------------------------------------------------------

class SegmentationDataset(torch.utils.data.Dataset):
    """``(image, mask)`` pairs through a mask-aware albumentations pipeline.

    The pipeline (``build_pipeline``) draws each sample's augmentation from torch's generator,
    which the trainer seeds per (seed, epoch, image), so a resumed run repeats an epoch's
    augmentations exactly.
    """

    def __init__(self, source, classes: list[str], transform):
        self.source = source
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The checked image and mask before augmentation."""
        image_path = self.source.images[i]
        image = load_rgb(image_path)
        mask = self.source.mask(i)
        check_mask(mask, self.source.name(i), (image.shape[1], image.shape[0]), image_path, len(self.classes))
        return image, mask.astype(np.uint8)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.raw(i)
        out = self.transform(image=image, mask=mask)
        image = torch.from_numpy(np.require(out["image"], requirements=["C", "W"])).permute(2, 0, 1).float().div_(255)
        return image, torch.from_numpy(np.require(out["mask"], requirements=["C", "W"])).long()


def eval_size_key(dataset: SegmentationDataset, i: int) -> Optional[tuple[int, int]]:
    """Images of one stored size leave the (deterministic) validation transforms at one size; after
    a final fixed Resize all do, and None groups them all."""
    if fixed_output_size(dataset.transform) is not None:
        return None
    return tuple(dataset.source.size(i))


def verify(dataset: SegmentationDataset) -> None:
    """Every sample checked once: mask values, and mask size against the image's header."""
    for i in range(len(dataset)):
        dataset.source.verify(i, len(dataset.classes))


def _drop_corrupt(source, where: str) -> None:
    """One pass that notes the bad samples as it finds them: linear in the sample count."""
    good, bad = [], []
    for i in range(len(source)):
        try:
            ok = is_decodable(source.images[i])
            if ok:
                source.mask(i)
        except DataError:
            ok = False
        (good if ok else bad).append(i)
    if bad:
        warnings.warn(f"{where}: skipped {len(bad)} sample(s) with a corrupt image or mask of "
                      f"{len(source)} (first: {source.images[bad[0]]})", stacklevel=2)
        source.keep(good)


def build_dataset(cfg: DataConfig, split: str) -> SegmentationDataset:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    name = cfg.train_split if split == "train" else cfg.val_split
    sub = lambda template: cfg.root / template.replace("{split}", name)  # noqa: E731
    if not cfg.root.is_dir():
        raise DataError(f"{cfg.root}: data.root folder not found")
    if cfg.format == "masks":
        classes = read_classes(cfg)
        source = MaskFolder.scan(sub(cfg.images), sub(cfg.masks), sub(cfg.split_list) if cfg.split_list else None)
    else:
        source = CocoMasks(sub(cfg.annotations), sub(cfg.images), cfg.classes)
        classes = source.classes
    if cfg.on_corrupt == "skip":
        _drop_corrupt(source, f"data ({split})")
    specs = cfg.train_transforms if split == "train" else cfg.val_transforms
    transform = build_pipeline(specs, f"data.{split}_transforms")
    dataset = SegmentationDataset(source, classes, transform)
    if len(dataset) == 0:
        raise DataError(f"{sub(cfg.images)}: no samples for the {split} split")
    if cfg.verify:
        verify(dataset)
    return dataset


def collate(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks; samples of different sizes (e.g. VOC at native size) are padded at the bottom and
    right, the image with 0 and the mask with the ignore value, so padding never counts."""
    images, masks = zip(*samples)
    h = max(m.shape[0] for m in masks)
    w = max(m.shape[1] for m in masks)
    if all(m.shape == (h, w) for m in masks):
        return torch.stack(images), torch.stack(masks)
    batch_images = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    batch_masks = masks[0].new_full((len(masks), h, w), IGNORE_INDEX)
    for k, (img, m) in enumerate(zip(images, masks)):
        batch_images[k, :, : img.shape[1], : img.shape[2]] = img
        batch_masks[k, : m.shape[0], : m.shape[1]] = m
    return batch_images, batch_masks
