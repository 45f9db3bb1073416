"""Loss: pixel cross-entropy (ignore pixels excluded), plus the auxiliary head's and optional Dice.

``total = ce_weight * ce + aux_weight * aux + presence_weight * presence + dice_weight * dice``;
the parts are logged unweighted. Dice optimises region overlap directly, which helps small classes that
cross-entropy, dominated by background pixels, under-serves.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from visionkit.errors import ConfigError
from visionkit.plugin import LossOutput, Section

from .data import IGNORE_INDEX


class LossConfig(Section):
    ce_weight: float = Field(1.0, ge=0)
    class_weights: Optional[list[float]] = Field(None, description="cross-entropy weight per class, in class order")
    aux_weight: float = Field(0.5, ge=0, description="for models built with aux_loss (torchvision's reference: 0.5)")
    dice_weight: float = Field(0.0, ge=0)
    presence_weight: float = Field(0.2, ge=0, description="for models built with presence_loss (EncNet: 0.2)")
    dice_smooth: float = Field(1.0, gt=0)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over labelled pixels; a batch with none gives 0 (PyTorch's mean would give NaN)."""
    total = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum")
    valid = target != IGNORE_INDEX
    if weight is None:
        norm = valid.sum()
    else:
        norm = weight[target[valid]].sum()
    return total / norm.clamp(min=1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float) -> torch.Tensor:
    """1 - mean over classes of the soft Dice over the batch's labelled pixels."""
    num_classes = logits.shape[1]
    valid = (target != IGNORE_INDEX).unsqueeze(1)
    probs = logits.softmax(1) * valid
    onehot = F.one_hot(target.clamp(max=num_classes - 1) * valid.squeeze(1), num_classes).permute(0, 3, 1, 2)
    onehot = onehot.to(probs.dtype) * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * inter + smooth) / (denom + smooth)).mean()


def presence_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on which classes each image holds (ignore pixels left out)."""
    num_classes = logits.shape[1]
    present = torch.zeros_like(logits)
    for k in range(target.shape[0]):
        labels = target[k][target[k] != IGNORE_INDEX].unique()
        present[k, labels[labels < num_classes]] = 1
    return F.binary_cross_entropy_with_logits(logits, present)


def build_loss(cfg: LossConfig, classes: list[str]):
    weight = None
    if cfg.class_weights is not None:
        if len(cfg.class_weights) != len(classes):
            raise ConfigError(f"loss.class_weights: {len(cfg.class_weights)} values for {len(classes)} classes "
                              f"({', '.join(classes)})")
        weight = torch.tensor(cfg.class_weights, dtype=torch.float32)

    def loss_fn(model: torch.nn.Module, batch) -> LossOutput:
        images, target = batch
        outputs = model(images)
        w = weight.to(images.device) if weight is not None else None
        logits = outputs["out"].float()
        parts = {"ce": cross_entropy(logits, target, w)}
        total = cfg.ce_weight * parts["ce"]
        if "aux" in outputs:
            parts["aux"] = cross_entropy(outputs["aux"].float(), target, w)
            total = total + cfg.aux_weight * parts["aux"]
        if "presence" in outputs:
            parts["presence"] = presence_loss(outputs["presence"].float(), target)
            total = total + cfg.presence_weight * parts["presence"]
        if cfg.dice_weight > 0:
            parts["dice"] = dice_loss(logits, target, cfg.dice_smooth)
            total = total + cfg.dice_weight * parts["dice"]
        return LossOutput(total, parts)

    return loss_fn
