"""Detection dataset: COCO records + a bbox-aware albumentations pipeline -> (image, target).

A sample is ``(image, target)``: ``image`` a float CHW tensor in [0, 1] (the detector normalises
it itself), ``target`` a dict in torchvision's detection format with labels ``1..K`` (0 is the
background class torchvision detectors reserve). Validation targets also carry what the metric
needs to score in the original image's pixels: ``orig_size``, the evaluation ground truth
``gt`` (crowd annotations included) and the image ``file`` for the visuals.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from visionkit.data.grouping import fixed_output_size
from visionkit.data.images import load_rgb
from visionkit.data.transforms import build_pipeline
from visionkit.errors import ConfigError, DataError

from .coco import CocoSplit, ImageRecord, read_categories_only, read_split
from .config import DataConfig

#: spatial transforms that only rescale: the metric can undo them exactly
_RESIZES = {"Resize", "LongestMaxSize", "SmallestMaxSize"}


def _check_val_transforms(specs: list[dict[str, Any]], pipeline) -> None:
    import albumentations as A

    for i, (spec, t) in enumerate(zip(specs, pipeline.transforms)):
        if not (isinstance(t, A.ImageOnlyTransform) or type(t).__name__ in _RESIZES):
            raise ConfigError(
                f"data.val_transforms[{i}].name: {spec.get('name')!r} moves boxes in a way predictions cannot "
                f"be mapped back from; use pixel-level transforms or {', '.join(sorted(_RESIZES))} only")


def bbox_pipeline(specs: list[dict[str, Any]], where: str, min_visibility: float, min_area: float):
    import albumentations as A

    params = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=min_visibility,
                          min_area=min_area, clip=True)
    return build_pipeline(specs, where, bbox_params=params)


class DetectionDataset(torch.utils.data.Dataset):
    def __init__(self, split: CocoSplit, transform, is_val: bool, min_box_size: float):
        self.split = split
        self.transform = transform
        self.is_val = is_val
        self.min_box_size = min_box_size
        self.classes: list[str] = list(split.classes)
        self.category_ids: list[int] = list(split.category_ids)
        self.dropped_after_augment = 0  # boxes that vanished or became degenerate (this process)

    def __len__(self) -> int:
        return len(self.split.records)

    def _image(self, rec: ImageRecord) -> np.ndarray:
        img = load_rgb(rec.file)
        if img.shape[:2] != (rec.height, rec.width):
            where = rec.size_from or f"{self.split.ann_file}: image id {rec.id}"
            raise DataError(f"{where} fields 'width'/'height': say "
                            f"{rec.width}x{rec.height} but {rec.file} is {img.shape[1]}x{img.shape[0]}")
        return img

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        rec = self.split.records[index]
        img = self._image(rec)
        boxes, labels = rec.boxes, rec.labels
        if self.transform is not None:
            out = self.transform(image=img, bboxes=boxes, labels=labels)
            img = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_box_size)
        self.dropped_after_augment += int(len(rec.boxes) - keep.sum())
        image = torch.from_numpy(np.require(img, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255.0)
        target: dict[str, Any] = {
            "boxes": torch.from_numpy(boxes[keep]),
            "labels": torch.from_numpy(labels[keep] + 1),
            "image_id": rec.id,
        }
        if self.is_val:
            target.update(orig_size=(rec.height, rec.width), gt=rec.gt, file=str(rec.file))
        return image, target


def eval_size_key(dataset: DetectionDataset, index: int) -> tuple[int, int] | None:
    """The image's size from the COCO record (checked against the file when it is read): the
    validation transforms and the detector's own resize map one stored size to one input size."""
    if fixed_output_size(dataset.transform) is not None:
        return None
    rec = dataset.split.records[index]
    return rec.width, rec.height


#: what each format's layout has at data.root, for format: auto (and its messages)
_LAYOUTS = {"coco": "{train_annotations}", "yolo": "{yolo_yaml}", "voc": "{voc_annotations}/ + {voc_train_list}"}


def resolve_format(cfg: DataConfig) -> str:
    """``data.format``, with ``auto`` resolved from what data.root holds (a few stat calls)."""
    if cfg.format != "auto":
        return cfg.format
    root = cfg.root
    found = []
    if (root / cfg.train_annotations).is_file():
        found.append("coco")
    if (root / cfg.yolo_yaml).is_file():
        found.append("yolo")
    if (root / cfg.voc_annotations).is_dir() and (root / cfg.voc_train_list).is_file():
        found.append("voc")
    fields = cfg.model_dump()
    if len(found) == 1:
        return found[0]
    if not found:
        looked = "; ".join(f"{_LAYOUTS[f].format(**fields)} ({f})" for f in _LAYOUTS)
        raise DataError(f"{root}: data.format: auto found no detection dataset here; looked for {looked}")
    shown = ", ".join(f"{f} ({_LAYOUTS[f].format(**fields)})" for f in found)
    raise ConfigError(f"data.format: auto: {root} holds more than one layout: {shown}; set data.format to one of them")


def read_categories(cfg: DataConfig) -> tuple[list[int], list[str]]:
    """(category ids, class names) of the train split, without reading every annotation where the
    format allows: the label mapping every split and the exported model use."""
    fmt = resolve_format(cfg)
    if fmt == "coco":
        return read_categories_only(cfg.root / cfg.train_annotations)
    if fmt == "yolo":
        from . import yolo

        names = yolo.read_names(cfg.root / cfg.yolo_yaml)
        return list(range(len(names))), names
    from . import voc

    names = list(cfg.classes) if cfg.classes else voc.read_classes(cfg.root / cfg.voc_annotations,
                                                                   cfg.root / cfg.voc_train_list)
    return list(range(1, len(names) + 1)), names


def read_split_of(cfg: DataConfig, split: str, categories: tuple[list[int], list[str]] | None = None) -> CocoSplit:
    """The split's records, whatever the format."""
    fmt = resolve_format(cfg)
    if cfg.classes and fmt != "voc":
        raise ConfigError(f"data.classes: applies to format: voc only (format {fmt}: the class names come from "
                          f"{'data.yaml names' if fmt == 'yolo' else 'the categories of the COCO file'})")
    keep_empty = cfg.keep_empty_images or split == "val"
    root = cfg.root
    if fmt == "yolo":
        from . import yolo

        return yolo.read_split(root / cfg.yolo_yaml, split, cfg.min_box_size, keep_empty)
    if fmt == "voc":
        from . import voc

        if cfg.classes:
            names, origin = list(cfg.classes), "in data.classes"
        else:
            names = (categories or read_categories(cfg))[1]
            origin = "among the train split's object names (list every class in data.classes)"
        list_file = root / (cfg.voc_train_list if split == "train" else cfg.voc_val_list)
        return voc.read_split(root / cfg.voc_annotations, root / cfg.voc_images, list_file, names, origin,
                              cfg.min_box_size, keep_empty)
    if split == "val" and categories is None:
        # The label mapping is the train split's: read its categories (cheap, no image checks).
        categories = read_categories_only(root / cfg.train_annotations)
    images = root / (cfg.train_images if split == "train" else cfg.val_images)
    ann_file = root / (cfg.train_annotations if split == "train" else cfg.val_annotations)
    return read_split(ann_file, images, cfg.min_box_size, keep_empty=keep_empty, categories=categories)


def build_dataset(cfg: DataConfig, split: str, categories: tuple[list[int], list[str]] | None = None) -> DetectionDataset:
    if split not in ("train", "val"):
        raise ConfigError(f"detection: unknown split {split!r} (expected train or val)")
    coco = read_split_of(cfg, split, categories)
    specs = cfg.train_transforms if split == "train" else cfg.val_transforms
    where = f"data.{split}_transforms"
    pipeline = bbox_pipeline(specs, where, cfg.min_visibility, cfg.min_area) if specs else None
    if split == "val" and pipeline is not None:
        _check_val_transforms(specs, pipeline)
    return DetectionDataset(coco, pipeline, is_val=split == "val", min_box_size=cfg.min_box_size)


def collate(samples: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Images differ in size and boxes in count: lists, as torchvision detectors take them."""
    images, targets = zip(*samples)
    return list(images), list(targets)
