"""Segmentation models: torchvision's by name, and a compact U-Net for small images on CPUs.

Every model takes RGB in [0, 1] and returns a dict ``{"out": logits}`` (plus ``"aux"`` for
torchvision models built with ``aux_loss``), logits at the input's size. Normalisation is the
model's first step, so training, evaluation and an exported graph cannot disagree about it.
Nothing is ever downloaded: torchvision builders get ``weights=None, weights_backbone=None``;
pretrained weights come only from local files (``model.weights``, ``model.weights_backbone``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from visionkit.errors import ConfigError
from visionkit.plugin import Section

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
UNET_ONLY = ("width", "depth", "max_width", "stem_stride")


class ModelConfig(Section):
    name: Literal["unet", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3_resnet101",
                  "fcn_resnet50", "lraspp_mobilenet_v3_large"] = "unet"
    aux_loss: bool = Field(False, description="train the auxiliary head too (deeplabv3_*, fcn_resnet50)")
    weights: Optional[Path] = Field(None, description="a local state dict (or visionkit checkpoint) to start from")
    weights_backbone: Optional[Path] = Field(None, description="a local ImageNet classifier state dict for the "
                                             "backbone of a torchvision model (e.g. torchvision's resnet50 file)")
    weights_strict: bool = Field(False, description="false: load the tensors whose name and shape match (a "
                                 "head for other classes is skipped); true: every tensor must match")
    width: int = Field(16, ge=4, le=256, description="unet: channels after the stem, doubled per level")
    depth: int = Field(4, ge=1, le=6, description="unet: downsamplings after the stem")
    max_width: int = Field(256, ge=4, description="unet: channel cap for the deepest levels")
    stem_stride: Literal[1, 2] = Field(2, description="unet: 2 runs the encoder from half resolution")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @model_validator(mode="after")
    def _options_fit_model(self):
        if self.name != "unet":
            misplaced = [k for k in UNET_ONLY if k in self.model_fields_set]
            if misplaced:
                raise ValueError(f"{', '.join(misplaced)} only apply to name: unet, not {self.name}")
        if self.name == "unet" and self.weights_backbone is not None:
            raise ValueError("weights_backbone: the unet has no pretrained backbone; use weights")
        if self.aux_loss and not TORCHVISION.get(self.name, False):
            raise ValueError(f"aux_loss: {self.name} has no auxiliary head")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """A compact U-Net: two 3x3 conv-BN-ReLU per level, bilinear upsampling and skip concats.

    Why this for small images on CPU: the skips keep edges sharp at the native resolution,
    where ASPP heads (DeepLabV3, LR-ASPP) predict at 1/8 and blur small objects. With
    ``stem_stride: 2`` the encoder starts at half resolution (about 3x faster on CPU) and one
    full-resolution conv over [upsampled features, input RGB] restores the boundaries.
    Any input size works: decoder features are resized to each skip's size.
    """

    def __init__(self, num_classes: int, width: int = 16, depth: int = 4, max_width: int = 256, stem_stride: int = 2):
        super().__init__()
        widths = [min(width * 2**i, max_width) for i in range(depth + 1)]
        self.encoder = nn.ModuleList()
        cin = 3
        for i, c in enumerate(widths):
            stride = stem_stride if i == 0 else 2
            self.encoder.append(nn.Sequential(_conv(cin, c, stride), _conv(c, c)))
            cin = c
        self.decoder = nn.ModuleList(
            nn.Sequential(_conv(widths[i] + widths[i - 1], widths[i - 1]), _conv(widths[i - 1], widths[i - 1]))
            for i in range(depth, 0, -1))
        self.refine = _conv(widths[0] + 3, widths[0]) if stem_stride > 1 else None
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp, skips = x, []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        if self.refine is not None:
            x = F.interpolate(x, size=inp.shape[-2:], mode="bilinear", align_corners=False)
            x = self.refine(torch.cat([x, inp], 1))
        return self.head(x)


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


def _read_state(path: Path, field: str) -> dict[str, torch.Tensor]:
    """Tensors only (``weights_only=True``): a weights file can never run code."""
    if not path.is_file():
        raise ConfigError(f"model.{field}: {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"model.{field}: {path} is not a readable weights file ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a visionkit checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.{field}: {path} is not a state dict of tensors")
    return state


def load_weights(module: nn.Module, path: Path, strict: bool, field: str = "weights",
                 prefixes: tuple[str, ...] = ("", "net.")) -> None:
    """Loads a state dict, its keys taken under whichever of ``prefixes`` matches most."""
    state = _read_state(path, field)
    own = module.state_dict()

    def under(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    state = max((under(p) for p in prefixes), key=lambda s: sum(k in own and own[k].shape == v.shape for k, v in s.items()))
    if strict:
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)):
            if keys:
                raise ConfigError(f"model.{field}: {path}: {len(keys)} tensor(s) {what}, e.g. {keys[0]!r} "
                                  "(set model.weights_strict: false to load only what matches)")
        module.load_state_dict(state)
        return
    match = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not match:
        raise ConfigError(f"model.{field}: {path}: no tensor matches this model by name and shape")
    module.load_state_dict(match, strict=False)
    kept = len(own) - len(match)
    if kept:
        print(f"[visionkit] model.{field}: loaded {len(match)} tensors from {path}; {kept} kept their "
              "initial values (not in the file, or of another shape)", flush=True)


def build_model(cfg: ModelConfig, num_classes: int) -> Segmenter:
    if cfg.name == "unet":
        net = UNet(num_classes, cfg.width, cfg.depth, cfg.max_width, cfg.stem_stride)
    else:
        net = _torchvision_model(cfg.name, num_classes, cfg.aux_loss)
    if cfg.weights_backbone is not None:
        # An ImageNet classifier's state dict: resnet keys as they are, mobilenet's under "features.".
        load_weights(net.backbone, cfg.weights_backbone, strict=False, field="weights_backbone",
                     prefixes=("", "features.", "backbone."))
    if cfg.weights is not None:
        load_weights(net, cfg.weights, cfg.weights_strict)
    return Segmenter(net, cfg.mean, cfg.std)
