"""``train.early_stopping``: stop a run whose primary metric has stalled.

The state (the reference value and how many evaluations in a row failed to beat it) is saved
in every checkpoint, so a run resumed in the middle of the patience window stops at the same
epoch as one that was never interrupted. Every worker holds the same merged metric, so every
worker takes the same decision and they all leave the loop together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class EarlyStopping:
    patience: int
    min_delta: float
    higher_is_better: bool
    best: Optional[float] = None  # the value the next evaluations must beat by more than min_delta
    bad: int = 0  # evaluations in a row that did not

    @classmethod
    def create(cls, cfg, higher_is_better: bool, saved: Optional[dict[str, Any]] = None,
               best_value: Optional[float] = None) -> Optional["EarlyStopping"]:
        """None without ``train.early_stopping``. ``saved`` is a checkpoint's state; a checkpoint
        without one (older, or a run that turns early stopping on at resume) counts afresh from
        its best value."""
        if cfg is None:
            return None
        stopper = cls(cfg.patience, cfg.min_delta, higher_is_better)
        if saved:
            stopper.best, stopper.bad = saved.get("best"), int(saved.get("bad", 0))
        else:
            stopper.best = best_value
        return stopper

    def update(self, value: float) -> bool:
        """Counts one evaluation; True once the run should stop. NaN never improves."""
        if self.best is None or (math.isnan(self.best) and not math.isnan(value)):
            improved = not math.isnan(value)
        elif self.higher_is_better:
            improved = value > self.best + self.min_delta
        else:
            improved = value < self.best - self.min_delta
        if improved:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        return self.stopped

    @property
    def stopped(self) -> bool:
        return self.bad >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad}

    def message(self, primary: str, best: dict[str, Any]) -> str:
        delta = f" by more than {self.min_delta:g}" if self.min_delta else ""
        return (f"[visionkit] early stopping: {primary} has not improved{delta} in {self.bad} evaluation(s) "
                f"(train.early_stopping.patience {self.patience}); best {best['value']:.4f} at epoch {best['epoch'] + 1}")
