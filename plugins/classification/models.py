"""Classification models: torchvision architectures by name, and the original example's MLP."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from visionkit.errors import ConfigError
from visionkit.weights import load_weights
from visionkit.plugin import Section


class ModelConfig(Section):
    name: str = "resnet18"
    weights: Optional[Path] = None  # a local state-dict file; nothing is ever downloaded
    # torchvision's published weights for this architecture (DEFAULT, IMAGENET1K_V1...), read from
    # torch's cache ($TORCH_HOME/hub/checkpoints); `visionkit weights fetch` puts them there.
    pretrained: Optional[str] = None
    # false: load the tensors whose name and shape fit (a head for another class count keeps its
    # initial values, named in one line); true: every tensor must fit
    weights_strict: bool = False
    # Extra keyword arguments of the torchvision builder, e.g. {zero_init_residual: true} for ResNets.
    builder_args: dict[str, Any] = {}
    hidden: list[int] = [256, 128]  # mlp only
    dropout: float = 0.0  # mlp only


class MLP(nn.Module):
    """784-256-128-10 with ReLU in the original example; sizes follow the data."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


#: torchvision classifiers with auxiliary heads: in training mode they return (logits, aux...)
#: tuples that no loss takes. Built without the heads, and with torchvision's own initialisation
#: (its current default, given explicitly to silence its FutureWarning), they train like the others.
AUX_HEAD_MODELS = {"googlenet", "inception_v3"}
#: inputs smaller than this shrink to nothing in the model's stem (torchvision's documented minimum)
MIN_INPUT_SIZE = {"inception_v3": 75}


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_model(cfg: ModelConfig, num_classes: int, channels: int, image_size: int) -> nn.Module:
    if cfg.name == "mlp":
        model: nn.Module = MLP(channels * image_size * image_size, cfg.hidden, num_classes, cfg.dropout)
    else:
        import torchvision

        names = torchvision_names()
        if cfg.name not in names:
            close = difflib.get_close_matches(cfg.name, names + ["mlp"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"model.name: unknown classification model {cfg.name!r}{hint}; "
                              "use 'mlp' or a torchvision classification model name")
        args = dict(cfg.builder_args)
        if cfg.name in AUX_HEAD_MODELS:
            if args.get("aux_logits"):
                raise ConfigError(f"model.builder_args: aux_logits: true is not supported for {cfg.name}: its auxiliary "
                                  "outputs would reach the loss; leave aux_logits out")
            args = {"aux_logits": False, "init_weights": True, **args}
        minimum = MIN_INPUT_SIZE.get(cfg.name, 0)
        if image_size < minimum:
            raise ConfigError(f"data.image_size: {cfg.name} needs inputs of at least {minimum} px, the model would get "
                              f"{image_size} (data.image_size, or its default when unset); set data.image_size: "
                              f"{minimum} or more")
        try:
            model = torchvision.models.get_model(cfg.name, weights=None, num_classes=num_classes, **args)
        except TypeError as exc:
            raise ConfigError(f"model.builder_args: {cfg.name} does not accept {sorted(cfg.builder_args)} ({exc})") from None
        if channels == 1:
            _first_conv_to_gray(model)
    if cfg.pretrained:
        from visionkit.pretrained import load_pretrained

        load_pretrained(model, cfg.name, cfg.pretrained, cfg.weights_strict)
    if cfg.weights:
        load_weights(model, cfg.weights, cfg.weights_strict)
    return model


def _first_conv_to_gray(model: nn.Module) -> None:
    """Replace the first 3-channel conv by a 1-channel one, for grayscale inputs."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                setattr(parent, name, nn.Conv2d(1, child.out_channels, child.kernel_size, child.stride,
                                                child.padding, child.dilation, child.groups, child.bias is not None))
                return
