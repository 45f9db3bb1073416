"""Experiment tracking (``tracking:`` in a config). MLflow only, for now: :mod:`.mlflow`.

Nothing here imports MLflow until a run asks for it: it is an optional extra
(``pip install "visionkit[mlflow]"``), and a run without ``tracking:`` never loads it.
"""

from __future__ import annotations

from typing import Any, Optional

RUN_FILE = "mlflow.json"  # in the run directory: which MLflow run a resume continues


class _Off:
    """What the training uses when nothing is tracked: every hook does nothing."""

    def begin(self, run, resolved: dict[str, Any], resumed) -> None:
        return None

    def watching(self):
        import contextlib

        return contextlib.nullcontext()

    def finish(self, run) -> None:
        pass

    def epoch(self, row: dict[str, Any]) -> None:
        pass


OFF = _Off()


def driver(cfg, source: str):
    """The driver's tracker, checked before anything is written or any Ray worker starts: MLflow
    installed, the tracking URI answering. A no-op without ``tracking.mlflow``."""
    settings = cfg.tracking.mlflow if cfg.tracking is not None else None
    if settings is None:
        return OFF
    from .mlflow import DriverTracker

    return DriverTracker.preflight(settings, source)


def worker(info: Optional[dict[str, Any]], rows: list[dict[str, Any]]):
    """Rank 0's logger of each epoch's metrics to the run the driver opened (``info``, from the job);
    ``rows``: the epochs the run already has, logged first where MLflow lacks them."""
    if not info:
        return OFF
    from .mlflow import EpochLogger

    return EpochLogger(info, rows)
