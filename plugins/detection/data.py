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
            raise DataError(f"{self.split.ann_file}: image id {rec.id} fields 'width'/'height': say "
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


def build_dataset(cfg: DataConfig, split: str, categories: tuple[list[int], list[str]] | None = None) -> DetectionDataset:
    if split not in ("train", "val"):
        raise ConfigError(f"detection: unknown split {split!r} (expected train or val)")
    root = cfg.root
    if split == "val" and categories is None:
        # The label mapping is the train split's: read its categories (cheap, no image checks).
        categories = read_categories_only(root / cfg.train_annotations)
    images = root / (cfg.train_images if split == "train" else cfg.val_images)
    ann_file = root / (cfg.train_annotations if split == "train" else cfg.val_annotations)
    coco = read_split(ann_file, images, cfg.min_box_size, keep_empty=cfg.keep_empty_images or split == "val",
                      categories=categories)
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
