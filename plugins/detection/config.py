"""The detection plugin's config sections: ``data``, ``model`` and ``loss``.

Paths inside the dataset (image folders, annotation files) are strings relative to ``data.root``
on purpose: the core resolves ``Path``-typed fields against the working directory, which is
right for ``root`` and wrong for paths that live under it. An absolute string still wins
(``root / "/abs/file.json"`` is ``/abs/file.json``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from visionkit.plugin import Section

from .models import MODEL_NAMES, PRETRAINED_BUILD


class DataConfig(Section):
    format: Literal["coco", "yolo", "voc", "auto"] = Field(
        "coco", description="coco: instances JSON; yolo: Ultralytics txt labels + data.yaml; voc: Pascal VOC XML; "
                            "auto: whichever of the three layouts data.root holds (an error if several)")
    root: Path = Field(..., description="dataset root; relative to the working directory")
    train_images: str = Field("images/train", description="format: coco")
    train_annotations: str = Field("annotations/instances_train.json", description="format: coco")
    val_images: str = Field("images/val", description="format: coco")
    val_annotations: str = Field("annotations/instances_val.json", description="format: coco")
    yolo_yaml: str = Field("data.yaml", description="format: yolo: names, train and val image folders")
    voc_annotations: str = Field("Annotations", description="format: voc: the XML folder")
    voc_images: str = Field("JPEGImages", description="format: voc")
    voc_train_list: str = Field("ImageSets/Main/train.txt", description="format: voc: image ids, one per line")
    voc_val_list: str = Field("ImageSets/Main/val.txt", description="format: voc")
    classes: Optional[list[str]] = Field(
        None, description="format: voc: class names in label order (default: the sorted object names of the "
                          "train split's files)")
    keep_empty_images: bool = Field(
        True, description="train split: keep images without (non-crowd) boxes as negatives; "
                          "the val split always keeps every image, as COCO evaluation does")
    min_box_size: float = Field(
        1.0, ge=0, description="boxes narrower or lower than this (pixels, after clipping to the "
                               "image) are dropped from training targets")
    train_transforms: list[dict[str, Any]] = Field(
        default_factory=list, description="albumentations transforms, [{name: Class, **kwargs}]")
    val_transforms: list[dict[str, Any]] = Field(
        default_factory=list, description="pixel-level or resize transforms only, so that "
                                          "predictions map back to the original image exactly")
    min_visibility: float = Field(0.0, ge=0, le=1, description="albumentations BboxParams")
    min_area: float = Field(0.0, ge=0, description="albumentations BboxParams (pixels)")
    balanced_sampling: bool = Field(False, description="draw each epoch's training samples so that classes come "
                                    "up equally (an image counts for the rarest class it holds), with replacement")

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        """A name given twice would give its objects the later label and shift none of the others
        into its place: every label after it would be off by one against the list."""
        if value is not None:
            if not value:
                raise ValueError("give at least one class name, or leave it unset")
            twice = next((n for k, n in enumerate(value) if n in value[:k]), None)
            if twice is not None:
                raise ValueError(f"{twice!r} appears twice; each class once, in label order")
        return value


class ModelConfig(Section):
    name: str = Field("fcos_light", description="a torchvision detector or fcos_light")
    weights: Optional[Path] = Field(
        None, description="local state_dict or visionkit checkpoint; never downloaded")
    weights_prefix: str = Field(
        "", description="prepended to every name in the weights file, e.g. 'backbone.body.' to load "
                        "an ImageNet ResNet-50 classifier's file into a detector's backbone")
    pretrained: Optional[str] = Field(
        None, description="torchvision's published weights for the detector (DEFAULT, COCO_V1), from torch's "
                          "cache ($TORCH_HOME/hub/checkpoints; `visionkit weights fetch` puts them there)")
    pretrained_backbone: Optional[str] = Field(
        None, description="the ImageNet weights (DEFAULT, IMAGENET1K_V1...) of the classifier the backbone is "
                          "built from (resnet50, mobilenet_v3_large), from the same cache")
    weights_strict: bool = Field(
        False, description="false: load the tensors whose names and shapes match (a class head for another "
                           "class count keeps its initial values; the skipped tensors are named); true: all must")
    freeze_backbone_norm: Union[bool, Literal["auto"]] = Field(
        "auto", description="BatchNorm in the backbone becomes FrozenBatchNorm2d after the weights load "
                            "(needed at 1-2 images per GPU); auto: as torchvision builds the model with "
                            "published weights (true with model.pretrained or pretrained_backbone, except "
                            "the v2 models and SSDlite), else false")
    trainable_backbone_layers: Union[Annotated[int, Field(ge=0, le=6)], Literal["auto"], None] = Field(
        "auto", description="train only the last N backbone stages (ResNet: of layer4..conv1, 5; MobileNetV3: "
                            "6); None: all; auto: torchvision's default with published weights (3; SSDlite: "
                            "all), else all")
    min_size: Optional[int] = Field(None, ge=16, description="resize: shorter side (None: model default)")
    max_size: Optional[int] = Field(None, ge=16, description="resize: longer side cap (None: model default)")
    score_thresh: float = Field(0.05, ge=0, le=1, description="0.05 is the usual setting for COCO mAP")
    nms_thresh: Optional[float] = Field(None, gt=0, le=1, description="None: the model's default")
    detections_per_img: int = Field(100, ge=1)
    center_sampling_radius: Optional[float] = Field(
        None, gt=0, description="FCOS models: positives are points within this many strides of a "
                                "box centre (None: torchvision's 1.5)")
    # fcos_light only (an error for the torchvision models):
    width: Optional[int] = Field(None, ge=8, description="fcos_light: backbone stem channels (default 16)")
    fpn_channels: Optional[int] = Field(None, ge=16, description="fcos_light: FPN/head channels (default 64)")
    head_convs: Optional[int] = Field(None, ge=0, description="fcos_light: conv layers per head branch (default 2)")
    num_levels: Optional[int] = Field(None, ge=1, le=3, description="fcos_light: FPN levels from stride 8 (default 3)")

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODEL_NAMES:
            close = difflib.get_close_matches(value, MODEL_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown detector {value!r}{hint}; available: {', '.join(MODEL_NAMES)}")
        return value

    @model_validator(mode="after")
    def _torchvision_build(self) -> "ModelConfig":
        """"auto" made concrete here, so the run's config.yaml holds it: a resume, eval or export
        rebuilds without the published weights and must build the same modules."""
        published = bool(self.pretrained or self.pretrained_backbone)
        frozen, layers = PRETRAINED_BUILD.get(self.name, (False, None)) if published else (False, None)
        if self.freeze_backbone_norm == "auto":
            self.freeze_backbone_norm = frozen
        if self.trainable_backbone_layers == "auto":
            self.trainable_backbone_layers = layers
        return self


class LossConfig(Section):
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="weight per loss part of the model (e.g. FCOS: classification, "
                    "bbox_regression, bbox_ctrness); parts not named weigh 1")
