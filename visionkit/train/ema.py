"""``train.ema``: an exponential moving average of the weights, the model that gets evaluated.

The average is the one torch's :class:`~torch.optim.swa_utils.AveragedModel` keeps with
``use_buffers=True``, as torchvision's references build their ``--model-ema``: parameters *and*
floating-point buffers (BatchNorm's running statistics) are averaged, so the averaged model's
statistics belong to its averaged weights; integer buffers (``num_batches_tracked``) are copied.
It is updated after every optimizer step (once per ``grad_accum_steps`` batches), on every
worker, from the same weights. The update is AveragedModel's (one ``torch._foreach_lerp_``),
written out here with the update count kept on the host: AveragedModel keeps it in a tensor and
reads it back at every update (``n_averaged == 0``, ``> 0``, the decay), a host sync per
optimizer step on a GPU, where the loop has none.

Warmup. The averaging window is ``1 / (1 - decay)`` optimizer steps; an average that started at
the full window would hold on to the random initial weights for that many steps. The decay of
update ``t`` (the number of updates before it) is::

    window_t = 1 + (1 / (1 - decay) - 1) * min(1, t / warmup_steps)      decay_t = 1 - 1 / window_t

timm's ModelEmaV3 warmup, ``1 - (1 + t / gamma) ** -power``, with ``power = 1`` and ``gamma``
chosen so that the full decay is reached at exactly ``warmup_steps``. Chosen over the TF /
torchvision-style ``min(decay, (1 + t) / (10 + t))`` because ``warmup_steps`` then means what it
says (full decay from that step on, none of the 10 hidden in a formula) and the window grows
linearly, without a jump. With ``warmup_steps = 1 / (1 - decay)`` the warmup is the running mean
of the weights so far (the window equals the steps done), which is what a bias-corrected EMA
would give; a shorter warmup weighs the early weights more than that, a longer one less.
Update 0 is always a copy of the weights (the average starts from the weights after the first
optimizer step, as torchvision's does); ``warmup_steps: 0``: the full decay from update 1.

Resume. The checkpoint holds the average (``model``, what eval, export, the report and
``model.weights`` read) and the optimizer's own weights (``trained_model``) with the update count:
a resumed run continues both, bit for bit.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch


def decay_at(decay: float, warmup_steps: int, t: int) -> float:
    """The decay of update ``t`` (the number of updates before it; update 0 is a copy)."""
    if warmup_steps <= 0 or t >= warmup_steps:
        return decay
    window = 1.0 + (1.0 / (1.0 - decay) - 1.0) * t / warmup_steps
    return 1.0 - 1.0 / window


class EMA:
    """The averaged copy of a model and its update count."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup_steps: int):
        self.decay, self.warmup_steps = decay, warmup_steps
        #: the averaged model (to evaluate and to save)
        self.module = copy.deepcopy(model).eval()
        #: updates so far, on the host: the next decay needs nothing from the device
        self.updates = 0

    @classmethod
    def create(cls, cfg, model: torch.nn.Module, saved_weights: Optional[dict[str, Any]] = None,
               saved_state: Optional[dict[str, Any]] = None) -> Optional["EMA"]:
        """None without ``train.ema``. ``saved_weights`` / ``saved_state``: a checkpoint's average
        and its ``ema`` entry; without them (a run that turns EMA on at resume) the average starts
        from the model's weights at the next update."""
        if cfg is None:
            return None
        ema = cls(model, cfg.decay, cfg.warmup_steps)
        if saved_weights is not None and saved_state is not None:
            ema.module.load_state_dict(saved_weights)
            ema.updates = int(saved_state["updates"])
        return ema

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """After an optimizer step, from the trained (unwrapped) model."""
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if self.updates == 0:  # the average starts from the weights after the first step
            torch._foreach_copy_(averaged, current)
        else:
            pairs = list(zip(averaged, current, strict=True))
            floats = [pair for pair in pairs if pair[0].is_floating_point()]
            counts = [pair for pair in pairs if not pair[0].is_floating_point()]  # num_batches_tracked: copied
            weight = 1.0 - decay_at(self.decay, self.warmup_steps, self.updates)
            if floats:
                torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
            if counts:
                torch._foreach_copy_([a for a, _ in counts], [c for _, c in counts])
        self.updates += 1

    def state(self) -> dict[str, Any]:
        """The checkpoint's ``ema`` entry (the weights go in its ``model``)."""
        return {"updates": self.updates, "decay": self.decay, "warmup_steps": self.warmup_steps}

    def describe(self) -> str:
        warmup = f", warmup {self.warmup_steps} steps" if self.warmup_steps else ""
        return (f"[visionkit] train.ema: decay {self.decay:g} (window {1 / (1 - self.decay):.0f} optimizer steps{warmup}); "
                "evaluating EMA weights: best.pt, eval, export and the report use them")


def weights_label(weights: str, state: Optional[dict[str, Any]]) -> str:
    """A checkpoint's weights as export's log line and the report name them (its ``weights`` and
    ``ema`` entries): the average's settings, or the optimizer's own weights."""
    if weights != "ema":
        return "trained weights"
    state = state or {}
    warmup = f", warmup {state['warmup_steps']} steps" if state.get("warmup_steps") else ""
    return f"EMA weights (decay {state.get('decay', float('nan')):g}{warmup})"


def resume_weights(ckpt) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """A checkpoint's (trained weights, EMA weights or None): ``model`` is the average when the
    checkpoint says ``weights: ema``, the trained weights then being ``trained_model``."""
    if getattr(ckpt, "weights", "trained") == "ema" and ckpt.trained_model is not None:
        return ckpt.trained_model, ckpt.model
    return ckpt.model, None
