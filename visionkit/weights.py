"""Local weights files for a plugin's model: tensors only, matched by name and shape.

Every plugin takes ``model.weights`` (and some a backbone's weights), a state dict or a
visionkit checkpoint. One reader, so the safety (``weights_only=True``: a file can never run
code) and the error messages (which field, which file, which tensor) are the same everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .errors import ConfigError
from .fileio import torch_load


def read_state_dict(path: Path | str, field: str = "weights") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.{field}: {path} not found")
    try:
        state = torch_load(path)
    except ValueError as exc:
        raise ConfigError(f"model.{field}: {path} is not a readable weights file ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a visionkit checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.{field}: {path} is not a state dict of tensors")
    return state


def load_weights(module: nn.Module, path: Path | str, strict: bool, field: str = "weights",
                 add_prefix: str = "", strip_prefixes: Sequence[str] = ("",)) -> None:
    """Loads the file ``path`` into ``module`` (see :func:`load_state`)."""
    load_state(module, read_state_dict(path, field), strict, field, str(path), add_prefix, strip_prefixes)


def _names(keys: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _counted(key: str) -> bool:
    """BatchNorm's ``num_batches_tracked`` is bookkeeping, not a weight: files saved from
    FrozenBatchNorm2d models (torchvision's published detectors) have none, and a BatchNorm2d
    that loads without it starts its count at 0 (PyTorch fills it in)."""
    return key.rpartition(".")[2] != "num_batches_tracked"


def load_state(module: nn.Module, state: dict[str, torch.Tensor], strict: bool, field: str, where: str,
               add_prefix: str = "", strip_prefixes: Sequence[str] = ("",)) -> None:
    """Loads the tensors of ``state`` (read from ``where``) into ``module``: the one policy for
    every task and every source of initial weights (``model.weights``, ``model.pretrained``, a
    backbone's), each task's ``model.weights_strict`` defaulting to false.

    Keys are renamed first: the one of ``strip_prefixes`` under which most tensors fit is removed
    (a classifier's ``features.`` for a segmenter's backbone), then ``add_prefix`` is put in front
    (``backbone.`` to load a classifier into a detector). Strict: every tensor must fit, or a
    one-line error names the first that does not. Otherwise what fits is loaded and the rest
    keeps its initial values, said in one line that names the skipped tensors.
    """
    path = where
    own = module.state_dict()

    def renamed(prefix: str) -> dict[str, torch.Tensor]:
        return {add_prefix + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    def fitting(candidate: dict[str, torch.Tensor]) -> int:
        return sum(k in own and own[k].shape == v.shape for k, v in candidate.items())

    state = max((renamed(p) for p in strip_prefixes), key=fitting)
    missing = sorted(k for k in set(own) - set(state) if _counted(k))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if strict:
        for what, keys in (("of another shape", wrong), ("not in the model", unexpected), ("missing from the file", missing)):
            if keys:
                raise ConfigError(f"model.{field}: {path} does not fit {type(module).__name__}: {len(keys)} tensor(s) "
                                  f"{what}, e.g. {keys[0]!r} (set model.weights_strict: false to load only what fits)")
        module.load_state_dict(state)
        return
    match = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not match:
        raise ConfigError(f"model.{field}: {path}: no tensor matches {type(module).__name__} by name and shape")
    module.load_state_dict(match, strict=False)
    loaded, total = len(match), len(match) + len(wrong) + len(missing)  # not counting what _counted leaves out
    if loaded < total:
        skipped = wrong + [k for k in missing if k not in wrong]
        print(f"[visionkit] model.{field}: loaded {loaded} of {total} tensors from {path}; {len(skipped)} kept their "
              f"initial values ({len(wrong)} of another shape, {len(missing)} not in the file): {_names(skipped)}", flush=True)
