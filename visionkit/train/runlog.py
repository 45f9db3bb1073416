"""What a run leaves behind (written by rank 0): metrics.jsonl, workers.json, TensorBoard events,
PNG plots.

Ray Train V2 keeps no metrics that come without a checkpoint, so the project writes its own log.
``metrics.jsonl`` has one line per finished epoch; on resume, lines past the checkpoint's epoch
(written by an epoch that never got its checkpoint) are dropped, so every epoch appears once.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text

METRICS_FILE = "metrics.jsonl"


def parse_metrics(text: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash ends the usable log
    return rows


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    return parse_metrics(path.read_text()) if path.exists() else []


def scalars(result: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class RunLog:
    def __init__(self, run_dir: Path, last_epoch: int):
        self.run_dir = Path(run_dir)
        self.plots = self.run_dir / "plots"
        self.plots.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.run_dir) if r["epoch"] <= last_epoch]
        atomic_write_text(self.run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
        self.rows = kept
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a crashed attempt logged past the checkpoint.
        self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=last_epoch + 1)

    def epoch(self, row: dict[str, Any], result: dict[str, Any] | None, plot: bool = True) -> None:
        self.rows.append(row)
        with open(self.run_dir / METRICS_FILE, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if key != "epoch" and not key.endswith("_unix") and isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(key, value, row["epoch"])
        self.tb.flush()
        if result is not None:
            atomic_write_text(self.run_dir / "eval_last.json", json.dumps({"epoch": row["epoch"], **result}))
        if plot:
            self.plot_curves()

    def workers(self, placement: list[dict[str, Any]], start_epoch: int) -> None:
        """``workers.json``: where each attempt's workers ran (node, host, process), newest last."""
        path = self.run_dir / "workers.json"
        try:
            attempts = json.loads(path.read_text())["attempts"]
        except (OSError, ValueError, KeyError):
            attempts = []
        attempts.append({"started_unix": time.time(), "start_epoch": start_epoch, "workers": placement})
        atomic_write_text(path, json.dumps({"attempts": attempts}, indent=1))
        if any("node_id" in w for w in placement):
            where = ", ".join(f"rank {w['rank']} on node {w['node_id'][:8]} ({w['hostname']})" for w in placement)
            print(f"[visionkit] workers: {where}", flush=True)

    def best(self, result: dict[str, Any], epoch: int, primary: str) -> None:
        atomic_write_text(self.run_dir / "eval_best.json", json.dumps({"epoch": epoch, "primary": primary, **result}))

    def plot_curves(self) -> Path:
        """``plots/curves.png``: the panels of report.html's curves (:func:`visionkit.report.charts.curve_panels`:
        constants such as ``val/num_images`` left out), on whole-epoch ticks."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        from ..report.charts import curve_panels

        panels = curve_panels(self.rows, self._primary())
        cols = min(4, max(1, len(panels)))
        rows = max(1, -(-len(panels) // cols))
        fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
        for ax in axes.flat[len(panels):]:
            ax.axis("off")
        if not panels:
            axes[0][0].text(0.5, 0.5, "curves start at the second epoch", ha="center", va="center", fontsize=9)
        for ax, panel in zip(axes.flat, panels):
            for series in panel.series:
                ax.plot(*zip(*series.points), marker="o", ms=3, label=series.label)
            if panel.marker is not None:
                ax.axvline(panel.marker, color="grey", linestyle="--", linewidth=0.8)
            if len(panel.series) > 1:
                ax.legend(fontsize=7)
            ax.set_title(panel.title, fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        out = self.plots / "curves.png"
        fig.savefig(out, dpi=90)
        plt.close(fig)
        return out

    def _primary(self) -> str | None:
        """The metric that picks best.pt (eval_best.json), drawn first among validation panels."""
        try:
            return json.loads((self.run_dir / "eval_best.json").read_text()).get("primary")
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        self.tb.close()
