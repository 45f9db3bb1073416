"""Detectors by name: torchvision's (never downloading weights) and ``fcos_light``.

Every model takes ``num_classes = K + 1``: torchvision reserves label 0 for the background, and
the dataset emits labels ``1..K``. Weights come only from a local file, loaded with
``torch.load(weights_only=True)`` so a weights file cannot run code.

Why ``fcos_light``: from scratch on a CPU, torchvision's two-stage detectors (built for 800-pixel
COCO images and pretrained backbones) learn far too slowly. FCOS is single-stage and anchor-free
(one point per feature-map cell, no anchor shapes to tune), and torchvision's ``FCOS`` class
accepts any backbone: here a small plain-conv ResNet-style net (3x3 convs are fast on CPU, where
depthwise convs are not) with an FPN at 64 channels and 2-conv heads, run at the images' native
size.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from visionkit.errors import ConfigError
from visionkit.weights import load_weights

if TYPE_CHECKING:
    from .config import ModelConfig


# name -> family; the family says which keyword names a builder takes for thresholds and sizes.
TORCHVISION_MODELS = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": "rcnn",
    "fasterrcnn_mobilenet_v3_large_fpn": "rcnn",
    "fasterrcnn_resnet50_fpn": "rcnn",
    "fasterrcnn_resnet50_fpn_v2": "rcnn",
    "retinanet_resnet50_fpn": "dense",
    "retinanet_resnet50_fpn_v2": "dense",
    "fcos_resnet50_fpn": "dense",
    "ssdlite320_mobilenet_v3_large": "ssd",
}
MODEL_NAMES = ["fcos_light", *TORCHVISION_MODELS]
#: how torchvision's builder makes each detector when it is given weights (its own or its
#: backbone's): FrozenBatchNorm2d in the backbone or not, and how many backbone stages train
#: (None: all). ``model.freeze_backbone_norm`` and ``model.trainable_backbone_layers`` default
#: to these with ``model.pretrained`` or ``model.pretrained_backbone``, to "train everything"
#: without; the v2 models and SSDlite keep trainable BatchNorm in torchvision too.
PRETRAINED_BUILD = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": (True, 3),
    "fasterrcnn_mobilenet_v3_large_fpn": (True, 3),
    "fasterrcnn_resnet50_fpn": (True, 3),
    "fasterrcnn_resnet50_fpn_v2": (False, 3),
    "retinanet_resnet50_fpn": (True, 3),
    "retinanet_resnet50_fpn_v2": (False, 3),
    "fcos_resnet50_fpn": (True, 3),
    "ssdlite320_mobilenet_v3_large": (False, None),  # torchvision's default: 6 of 6 stages
}
LIGHT_FIELDS = ("width", "fpn_channels", "head_convs", "num_levels")


# --- fcos_light -------------------------------------------------------------------------------

class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convs and an identity shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvBNAct(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn2.weight)  # each block starts as identity: stable from scratch
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.bn2(self.conv2(self.conv1(x))))


def _stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(ConvBNAct(cin, cout, stride=2), *[BasicBlock(cout) for _ in range(blocks)])


class TopDownFPN(nn.Module):
    """Feature pyramid (1x1 laterals, nearest upsampling, 3x3 outputs) with outputs only for the
    ``num_outputs`` finest levels: every parameter gets a gradient, as DDP requires."""

    def __init__(self, in_channels: list[int], out_channels: int, num_outputs: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(num_outputs))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """``feats`` fine to coarse; returns the finest ``num_outputs`` levels, fine to coarse."""
        x = self.lateral[-1](feats[-1])
        merged = [x]
        for f, lateral in zip(feats[-2::-1], list(self.lateral)[-2::-1]):
            x = lateral(f) + nn.functional.interpolate(x, size=f.shape[-2:], mode="nearest")
            merged.insert(0, x)
        return [conv(m) for conv, m in zip(self.output, merged)]


class LightBackbone(nn.Module):
    """Small ResNet-style net with an FPN; returns levels from stride 8 up (torchvision FCOS API).

    Channels: ``width`` at stride 2, then 2x, 4x, 8x, 16x ``width`` at strides 4..32.
    """

    def __init__(self, width: int, fpn_channels: int, num_levels: int, depths: tuple[int, ...] = (1, 2, 2, 1)):
        super().__init__()
        w = width
        self.stem = nn.Sequential(ConvBNAct(3, w, stride=2), _stage(w, 2 * w, depths[0]))  # stride 4
        self.c3 = _stage(2 * w, 4 * w, depths[1])  # stride 8
        self.c4 = _stage(4 * w, 8 * w, depths[2])  # stride 16
        self.c5 = _stage(8 * w, 16 * w, depths[3])  # stride 32
        self.fpn = TopDownFPN([4 * w, 8 * w, 16 * w], fpn_channels, num_levels)
        self.out_channels = fpn_channels
        for part in (self.stem, self.c3, self.c4, self.c5):
            for m in part.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        c3 = self.c3(self.stem(x))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        return OrderedDict(zip(("p3", "p4", "p5"), self.fpn([c3, c4, c5])))


def _fcos_head(channels: int, num_classes: int, num_convs: int) -> nn.Module:
    """torchvision's FCOSHead with GroupNorm groups that divide ``channels`` (it assumes 32 do)."""
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead

    norm = partial(nn.GroupNorm, math.gcd(32, channels))
    head = FCOSHead.__new__(FCOSHead)
    nn.Module.__init__(head)
    head.box_coder = det_utils.BoxLinearCoder(normalize_by_size=True)
    head.classification_head = FCOSClassificationHead(channels, 1, num_classes, num_convs, norm_layer=norm)
    head.regression_head = FCOSRegressionHead(channels, 1, num_convs, norm_layer=norm)
    return head


def fcos_light(num_classes: int, width: int = 16, fpn_channels: int = 64, head_convs: int = 2,
               num_levels: int = 3, **kwargs: Any) -> nn.Module:
    """torchvision FCOS on :class:`LightBackbone`. ``kwargs`` go to ``FCOS`` (sizes, thresholds)."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    backbone = LightBackbone(width, fpn_channels, num_levels)
    # FCOS reads its "anchors" as points with a size equal to the level's stride.
    strides = ((8,), (16,), (32,))[:num_levels]
    anchors = AnchorGenerator(strides, ((1.0,),) * num_levels)
    head = _fcos_head(fpn_channels, num_classes, head_convs)
    return FCOS(backbone, num_classes, anchor_generator=anchors, head=head, **kwargs)


# --- building by name -------------------------------------------------------------------------

def _threshold_kwargs(family: str, cfg: "ModelConfig") -> dict[str, Any]:
    prefix = "box_" if family == "rcnn" else ""
    out = {f"{prefix}score_thresh": cfg.score_thresh, f"{prefix}detections_per_img": cfg.detections_per_img}
    if cfg.nms_thresh is not None:
        out[f"{prefix}nms_thresh"] = cfg.nms_thresh
    return out


def _size_kwargs(family: str, cfg: "ModelConfig") -> dict[str, Any]:
    sizes = {k: v for k, v in (("min_size", cfg.min_size), ("max_size", cfg.max_size)) if v is not None}
    if family == "ssd" and sizes:
        raise ConfigError(f"model.min_size/max_size: {cfg.name} has a fixed 320x320 input; leave them unset")
    return sizes


def build(cfg: "ModelConfig", num_classes: int) -> nn.Module:
    """``num_classes`` counts the background (K + 1)."""
    extra: dict[str, Any] = {}
    if cfg.center_sampling_radius is not None:
        if not cfg.name.startswith("fcos"):
            raise ConfigError(f"model.center_sampling_radius: only FCOS models take it; remove it for {cfg.name}")
        extra["center_sampling_radius"] = cfg.center_sampling_radius
    if cfg.name == "fcos_light":
        light = {k: getattr(cfg, k) for k in LIGHT_FIELDS if getattr(cfg, k) is not None}
        sizes = {"min_size": cfg.min_size or 320, "max_size": cfg.max_size or cfg.min_size or 320}
        model = fcos_light(num_classes, **light, **sizes, **_threshold_kwargs("dense", cfg), **extra)
    else:
        used = [k for k in LIGHT_FIELDS if getattr(cfg, k) is not None]
        if used:
            raise ConfigError(f"model.{used[0]}: only fcos_light takes {', '.join(LIGHT_FIELDS)}; "
                              f"remove it for {cfg.name}")
        import torchvision.models.detection as tvd

        family = TORCHVISION_MODELS[cfg.name]
        builder: Callable[..., nn.Module] = getattr(tvd, cfg.name)
        model = builder(weights=None, weights_backbone=None, num_classes=num_classes,
                        **_size_kwargs(family, cfg), **_threshold_kwargs(family, cfg), **extra)
    if cfg.pretrained or cfg.pretrained_backbone:
        from visionkit import pretrained

        if cfg.pretrained:
            pretrained.load_pretrained(model, cfg.name, cfg.pretrained, cfg.weights_strict)
        else:
            body = getattr(model.backbone, "body", None)
            if body is None:
                raise ConfigError(f"model.pretrained_backbone: {cfg.name} has no pretrainable backbone; "
                                  "use model.pretrained")
            pretrained.load_backbone(body, cfg.name, cfg.pretrained_backbone)
    if cfg.weights is not None:
        load_weights(model, cfg.weights, cfg.weights_strict, add_prefix=cfg.weights_prefix)
    if cfg.freeze_backbone_norm:
        freeze_batch_norm(model.backbone)
    if cfg.trainable_backbone_layers is not None:
        freeze_backbone_layers(model, cfg.trainable_backbone_layers)
    return model


def freeze_batch_norm(module: nn.Module) -> None:
    """BatchNorm2d -> FrozenBatchNorm2d in place, keeping the (loaded) statistics and affine terms.
    Its eps is FrozenBatchNorm2d's own (1e-5), as in torchvision's ``norm_layer=FrozenBatchNorm2d``
    builds: MobileNetV3's BatchNorm has 1e-3, and its published COCO detectors were trained with 1e-5."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child)


RESNET_STAGES = ["layer4", "layer3", "layer2", "layer1", "conv1"]


def freeze_backbone_layers(model: nn.Module, trainable: int) -> None:
    """torchvision's rules (``_resnet_fpn_extractor``, ``_mobilenet_extractor``): only the last
    ``trainable`` stages of the backbone learn; a ResNet has 5 (layer4..conv1), MobileNetV3 6."""
    body = getattr(getattr(model, "backbone", None), "body", None)
    if body is not None and all(hasattr(body, s) for s in RESNET_STAGES):
        if trainable > len(RESNET_STAGES):
            raise ConfigError(f"model.trainable_backbone_layers: {trainable}; a ResNet backbone has 5 stages")
        keep = RESNET_STAGES[:trainable] + (["bn1"] if trainable == 5 else [])
        for name, param in body.named_parameters():
            if not any(name.startswith(k) for k in keep):
                param.requires_grad_(False)
        return
    blocks = list(body.children()) if body is not None else []
    if not any(getattr(b, "_is_cn", False) for b in blocks):
        raise ConfigError("model.trainable_backbone_layers: only for the ResNet-50 and MobileNetV3-FPN detectors; "
                          "leave it unset")
    # MobileNetV3's features: a stage begins at the first block, at each strided block, and at the last
    stages = [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)] + [len(blocks) - 1]
    if trainable > len(stages):
        raise ConfigError(f"model.trainable_backbone_layers: {trainable}; a MobileNetV3 backbone has {len(stages)} stages")
    freeze_before = len(blocks) if trainable == 0 else stages[len(stages) - trainable]
    for block in blocks[:freeze_before]:
        for param in block.parameters():
            param.requires_grad_(False)
