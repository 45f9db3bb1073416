"""Segmentation models: torchvision's by name, and a compact U-Net for small images on CPUs.

Every model takes RGB in [0, 1] and returns a dict ``{"out": logits}`` (plus ``"aux"`` for
torchvision models built with ``aux_loss``), logits at the input's size. Normalisation is the
model's first step, so training, evaluation and an exported graph cannot disagree about it.
Nothing is ever downloaded: torchvision builders get ``weights=None, weights_backbone=None``;
pretrained weights come only from local files (``model.weights``, ``model.weights_backbone``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from visionkit.plugin import Section
from visionkit.weights import load_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: torchvision builders by name -> whether the model has an auxiliary head
TORCHVISION = {
    "deeplabv3_mobilenet_v3_large": True,
    "deeplabv3_resnet50": True,
    "deeplabv3_resnet101": True,
    "fcn_resnet50": True,
    "lraspp_mobilenet_v3_large": False,
}
UNET_ONLY = ("width", "blocks", "max_width", "norm", "presence_loss")


class ModelConfig(Section):
    name: Literal["unet", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3_resnet101",
                  "fcn_resnet50", "lraspp_mobilenet_v3_large"] = "unet"
    aux_loss: bool = Field(False, description="train an auxiliary head on deep features too (unet, deeplabv3_*, "
                           "fcn_resnet50); used in training only")
    weights: Optional[Path] = Field(None, description="a local state dict (or visionkit checkpoint) to start from")
    weights_backbone: Optional[Path] = Field(None, description="a local ImageNet classifier state dict for the "
                                             "backbone of a torchvision model (e.g. torchvision's resnet50 file)")
    pretrained: Optional[str] = Field(None, description="torchvision's published weights for the model (DEFAULT, "
                                      "COCO_WITH_VOC_LABELS_V1), from torch's cache ($TORCH_HOME/hub/checkpoints; "
                                      "`visionkit weights fetch` puts them there)")
    pretrained_backbone: Optional[str] = Field(None, description="the ImageNet weights (DEFAULT, IMAGENET1K_V1...) "
                                               "of the backbone's classifier (resnet50, mobilenet_v3_large), same cache")
    weights_strict: bool = Field(False, description="false: load the tensors whose name and shape match (a "
                                 "head for another class count keeps its initial values, named); true: all must")
    width: int = Field(16, ge=4, le=256, description="unet: channels of the first level, doubled per level")
    blocks: list[int] = Field([1, 1, 2, 2, 2], min_length=1, max_length=7,
                              description="unet: residual blocks per level; each level halves the resolution")
    max_width: int = Field(256, ge=4, description="unet: channel cap for the deepest levels")
    presence_loss: bool = Field(False, description="unet: also predict which classes an image holds (EncNet's "
                                "semantic-encoding loss; weighted by loss.presence_weight), in training only")
    norm: Literal["batch", "group"] = Field("batch", description="unet: BatchNorm, or GroupNorm for small per-worker batches")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @model_validator(mode="after")
    def _options_fit_model(self):
        if self.name != "unet":
            # Compared with the defaults, not "was it set": a resolved config lists every field.
            misplaced = [k for k in UNET_ONLY if getattr(self, k) != type(self).model_fields[k].default]
            if misplaced:
                raise ValueError(f"{', '.join(misplaced)} only apply to name: unet, not {self.name}")
        if self.name == "unet" and self.weights_backbone is not None:
            raise ValueError("weights_backbone: the unet has no pretrained backbone; use weights")
        if self.name == "unet" and (self.pretrained or self.pretrained_backbone):
            raise ValueError("pretrained: model unet has no published weights")
        if self.aux_loss and not (self.name == "unet" or TORCHVISION[self.name]):
            raise ValueError(f"aux_loss: {self.name} has no auxiliary head")
        if any(b < 0 for b in self.blocks):
            raise ValueError("blocks: counts must be 0 or more")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


def _norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm, or GroupNorm (groups of 4+ channels) whose statistics do not depend on the batch:
    BatchNorm over a few small images per worker (DDP does not sync it) estimates them badly."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(math.gcd(channels, 8) if channels >= 32 else max(1, channels // 4), channels)


def _conv(cin: int, cout: int, stride: int = 1, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, norm: str = "batch"):
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels, norm=norm), nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
                                  _norm(norm, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class UNet(nn.Module):
    """A compact residual U-Net for small images on CPU.

    Why this shape: skip connections keep edges sharp at the native resolution, where ASPP
    heads (DeepLabV3, LR-ASPP) predict at 1/8 and blur small objects. Each level halves the
    resolution with a strided conv and adds ``blocks[i]`` residual blocks; depth is cheap at low
    resolution, so that is where the blocks go (recognising a shape needs context, placing its
    edge does not). The decoder has one conv per level, and one full-resolution conv over
    [upsampled features, input RGB] restores boundaries the half-resolution encoder cannot see.
    Any input size works: decoder features are resized to each skip's size.
    """

    def __init__(self, num_classes: int, width: int = 16, blocks: Sequence[int] = (1, 1, 2, 2, 2), max_width: int = 256,
                 aux: bool = False, norm: str = "batch", presence: bool = False):
        super().__init__()
        widths = [min(width * 2**i, max_width) for i in range(len(blocks))]
        self.encoder = nn.ModuleList()
        cin = 3
        for c, n in zip(widths, blocks):
            self.encoder.append(nn.Sequential(_conv(cin, c, 2, norm), *(ResidualBlock(c, norm) for _ in range(n))))
            cin = c
        self.decoder = nn.ModuleList(_conv(widths[i] + widths[i - 1], widths[i - 1], norm=norm)
                                     for i in range(len(widths) - 1, 0, -1))
        self.refine = _conv(widths[0] + 3, widths[0], norm=norm)
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        # Deep supervision: a class map straight from the first decoder level (the deepest two
        # levels merged) gives the context path its own gradient, instead of only what leaks
        # past the skips, which fit foreground/background long before the classes.
        deep = widths[-2] if len(widths) > 1 else widths[0]
        self.aux_head = nn.Conv2d(deep, num_classes, 1) if aux else None
        # EncNet's semantic-encoding loss (Zhang et al. 2018): which classes are in the image,
        # from the pooled deepest features. A clean per-image signal, like a classifier's, that
        # teaches the context path the classes before per-pixel boundaries are right.
        self.presence_head = nn.Linear(widths[-1], num_classes) if presence else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        inp, skips = x, []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        x = skips.pop()
        presence = self.presence_head(x.mean((2, 3))) if self.presence_head is not None and self.training else None
        aux = None
        for k, block in enumerate(self.decoder):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
            if k == 0 and self.aux_head is not None and self.training:
                aux = self.aux_head(x)
        if aux is None and self.aux_head is not None and self.training:  # one level: no decoder
            aux = self.aux_head(x)
        x = F.interpolate(x, size=inp.shape[-2:], mode="bilinear", align_corners=False)
        out = {"out": self.head(self.refine(torch.cat([x, inp], 1)))}
        if aux is not None:
            out["aux"] = F.interpolate(aux, size=inp.shape[-2:], mode="bilinear", align_corners=False)
        if presence is not None:
            out["presence"] = presence
        return out


class Segmenter(nn.Module):
    """Normalises [0, 1] RGB, runs the network, and always answers a dict with ``"out"``."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        # Not persistent: the state dict holds only the network, loadable into torchvision's.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.net((x - self.mean) / self.std)
        return dict(out) if isinstance(out, dict) else {"out": out}


def _torchvision_model(name: str, num_classes: int, aux_loss: bool) -> nn.Module:
    from torchvision.models import segmentation

    builder = getattr(segmentation, name)
    kwargs = {"aux_loss": aux_loss} if TORCHVISION[name] else {}
    return builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)


def build_model(cfg: ModelConfig, num_classes: int) -> Segmenter:
    if cfg.name == "unet":
        net = UNet(num_classes, cfg.width, cfg.blocks, cfg.max_width, aux=cfg.aux_loss, norm=cfg.norm,
                   presence=cfg.presence_loss)
    else:
        net = _torchvision_model(cfg.name, num_classes, cfg.aux_loss)
    if cfg.pretrained or cfg.pretrained_backbone:
        from visionkit import pretrained

        if cfg.pretrained:
            pretrained.load_pretrained(net, cfg.name, cfg.pretrained, cfg.weights_strict)
        else:
            pretrained.load_backbone(net.backbone, cfg.name, cfg.pretrained_backbone)
    if cfg.weights_backbone is not None:
        # An ImageNet classifier's state dict: resnet keys as they are, mobilenet's under "features.".
        load_weights(net.backbone, cfg.weights_backbone, strict=False, field="weights_backbone",
                     strip_prefixes=("", "features.", "backbone."))
    if cfg.weights is not None:
        load_weights(net, cfg.weights, cfg.weights_strict, strip_prefixes=("", "net."))
    return Segmenter(net, cfg.mean, cfg.std)
