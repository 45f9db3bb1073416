"""What a search leaves a person: the live table, ``results.csv``, ``best.yaml``, ``plots/trials.png``.

Each trial's numbers come from its own run directory (``metrics.jsonl``, ``config.yaml``), the
files ``visionkit eval``/``export``/``report`` read, so the summary and the runs agree; Ray
Tune's result grid says which trials there were and which failed, with what.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from ray.tune import Callback

from ..config import EarlyStoppingConfig
from ..errors import UserError
from ..storage import open_run
from ..train.early_stopping import EarlyStopping
from .space import format_value
from .trial import EPOCHS, read_rows


class TrialTable(Callback):
    """The live table: trial, status, parameters, epoch, metric, best so far. Printed when a
    trial changes status, and at most every ``interval`` seconds while epochs go by."""

    def __init__(self, keys: list[str], primary: str, higher_is_better: bool, epochs: int, interval: float = 20.0):
        self.keys, self.primary, self.higher_is_better, self.epochs = keys, primary, higher_is_better, epochs
        self.interval = interval
        self._printed_at = 0.0
        self._statuses: Optional[tuple] = None
        self._epochs: Optional[tuple] = None

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        statuses = tuple((t.trial_id, t.status) for t in trials)
        epochs = tuple((t.last_result or {}).get(EPOCHS) for t in trials)
        now = time.monotonic()
        if statuses == self._statuses and (epochs == self._epochs or now - self._printed_at < self.interval):
            return
        self._statuses, self._epochs, self._printed_at = statuses, epochs, now
        print(self.render(trials), flush=True)

    def render(self, trials: list) -> str:
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        head = "[visionkit] tune: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        rows = []
        for t in trials:
            last = t.last_result or {}
            done = last.get(EPOCHS)
            status = t.status
            if status == "TERMINATED" and not last.get("done"):
                status = "INCOMPLETE"  # ended with the search (Ctrl-C), not by Tune's decision
            elif status == "TERMINATED" and done is not None and done < self.epochs:
                status = "STOPPED"  # by the scheduler, or by train.early_stopping
            best = (t.metric_analysis.get(self.primary) or {}).get("max" if self.higher_is_better else "min")
            rows.append([t.trial_id, status, *(format_value(t.config.get(k)) for k in self.keys),
                         f"{done or 0}/{self.epochs}", _num(last.get(self.primary)), _num(best)])
        return head + "\n" + table(["trial", "status", *self.keys, "epoch", self.primary, "best"], rows)


def _num(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


@dataclass
class TrialSummary:
    trial_id: str
    values: dict[str, Any]
    status: str  # finished, stopped by asha, early stopping, error, incomplete
    run_uri: str
    config: Optional[dict[str, Any]] = None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (1-based epoch, primary metric)
    epochs: int = 0  # epochs trained (rows of metrics.jsonl)
    best: Optional[float] = None
    best_epoch: Optional[int] = None
    error: str = ""

    @property
    def last(self) -> Optional[float]:
        return self.curve[-1][1] if self.curve else None


def _error_line(error: BaseException) -> str:
    from ..train.launch import _user_error_in

    found = _user_error_in(error)
    text = str(found if found is not None else error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if found is None and lines else (lines[0] if lines else type(error).__name__)


def _summarize_trial(result, search, trials_uri: str, endpoint: Optional[str]) -> TrialSummary:
    trial_id = Path(result.path).name
    run = open_run(trials_uri, trial_id, endpoint)
    summary = TrialSummary(trial_id, dict(result.config or {}), "incomplete", run.uri)
    if run.exists("config.yaml"):
        summary.config = yaml.safe_load(run.read_bytes("config.yaml"))
    rows = read_rows(run)
    key = f"val/{search.primary}"
    summary.curve = [(int(r["epoch"]) + 1, float(r[key])) for r in rows if key in r]
    summary.epochs = len(rows)
    pick = max if search.higher_is_better else min
    scored = [(e, v) for e, v in summary.curve if not math.isnan(v)]
    if scored:
        summary.best = pick(v for _, v in scored)
        summary.best_epoch = next(e for e, v in scored if v == summary.best)  # the first, as best.pt
    # Tune marks a result done when the trial ended or its scheduler stopped it; a trial still
    # running when the search was interrupted (Ctrl-C) has none.
    done = bool((result.metrics or {}).get("done"))
    if result.error is not None:
        summary.status, summary.error = "error", _error_line(result.error)
    elif summary.config and summary.epochs >= summary.config["train"]["epochs"]:
        summary.status = "finished"
    elif summary.config and _early_stopped(summary, search.higher_is_better):
        summary.status = "early stopping"
    elif done and search.cfg.tune.scheduler.name != "fifo":
        summary.status = f"stopped by {search.cfg.tune.scheduler.name}"
    return summary


def _early_stopped(summary: TrialSummary, higher_is_better: bool) -> bool:
    """Replays train.early_stopping over the trial's evaluations (exact: the same rule, the same values)."""
    settings = summary.config["train"].get("early_stopping")
    if not settings:
        return False
    stopper = EarlyStopping.create(EarlyStoppingConfig(**settings), higher_is_better)
    return any(stopper.update(v) for _, v in summary.curve)


def _order(s: TrialSummary, higher_is_better: bool) -> tuple:
    if s.best is None:
        return (1, 0.0, s.trial_id)
    return (0, -s.best if higher_is_better else s.best, s.trial_id)


def summarize(search, tune_dir, results) -> list[TrialSummary]:
    """Writes results.csv, best.yaml and plots/trials.png into the tune directory and prints them."""
    endpoint = search.base["output"].get("s3_endpoint")
    trials_uri = f"{tune_dir.uri}/trials"
    trials = [_summarize_trial(r, search, trials_uri, endpoint) for r in results]
    trials.sort(key=lambda s: _order(s, search.higher_is_better))
    keys = [p.key for p in search.params]
    primary = search.primary

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["trial", "status", *keys, "epochs", primary, f"best_{primary}", "best_epoch", "run_dir", "error"])
    for s in trials:
        writer.writerow([s.trial_id, s.status, *(_csv(s.values.get(k)) for k in keys), s.epochs, _csv(s.last),
                         _csv(s.best), s.best_epoch or "", s.run_uri, s.error])
    tune_dir.write_bytes("results.csv", out.getvalue().encode())
    _plot(tune_dir, trials, primary)

    rows = [[s.trial_id, s.status, *(format_value(s.values.get(k)) for k in keys), str(s.epochs), _num(s.last),
             _num(s.best), str(s.best_epoch or "-")] for s in trials]
    total = sum(s.epochs for s in trials)
    counts: dict[str, int] = {}
    for s in trials:
        counts[s.status] = counts.get(s.status, 0) + 1
    print(f"[visionkit] tune: {len(trials)} trial(s): " + ", ".join(f"{n} {k}" for k, n in counts.items())
          + f"; {total} trial-epochs trained", flush=True)
    print(table(["trial", "status", *keys, "epochs", primary, "best", "best epoch"], rows), flush=True)
    for s in trials:
        if s.error:
            print(f"[visionkit] trial {s.trial_id}: {s.error}", flush=True)
    if counts.get("incomplete"):  # the search was interrupted (Ctrl-C)
        from .search import resume_command

        print(f"[visionkit] {counts['incomplete']} trial(s) did not finish; continue the search with: "
              f"{resume_command(tune_dir)}", flush=True)
    best = trials[0] if trials and trials[0].best is not None else None
    if best is None and counts.get("incomplete"):
        return trials  # interrupted before any evaluation: no best yet
    if best is None:
        failed = next((s for s in trials if s.error), None)
        why = f"; trial {failed.trial_id}: {failed.error}" if failed else ""
        raise UserError(f"no trial evaluated its model{why} (results in {tune_dir.uri}/results.csv)")
    _write_best(search, tune_dir, best)
    chosen = ", ".join(f"{k}={format_value(best.values.get(k))}" for k in keys)
    print(f"[visionkit] best: trial {best.trial_id}, {primary} {best.best:.4f} at epoch {best.best_epoch} ({chosen}); "
          f"run directory {best.run_uri}", flush=True)
    print(f"[visionkit] files: {tune_dir.uri}/ (results.csv, best.yaml, plots/trials.png, trials/, ray_tune/); "
          f"train the best config: visionkit train {tune_dir.uri}/best.yaml", flush=True)
    return trials


def _csv(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return value


def _write_best(search, tune_dir, best: TrialSummary) -> None:
    """The best trial's own config.yaml, with an output of its own: a new run, not the trial's."""
    config = dict(best.config)
    out = search.resolved["output"]
    config["output"] = {**config["output"], "storage_path": out["storage_path"], "name": None,
                        "s3_endpoint": out.get("s3_endpoint")}
    head = (f"# The best trial of {tune_dir.uri}: {best.trial_id}, {search.primary} {best.best:.4f} at epoch "
            f"{best.best_epoch}.\n# Its full config (run directory {best.run_uri}); train it with: "
            f"visionkit train best.yaml\n")
    tune_dir.write_bytes("best.yaml", (head + yaml.safe_dump(config, sort_keys=False)).encode())


def _plot(tune_dir, trials: list[TrialSummary], primary: str) -> None:
    """plots/trials.png: the primary metric against the epoch, one line per trial (stopped ones dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for s in trials:
        if s.curve:
            ax.plot(*zip(*s.curve), marker="o", ms=3, linestyle="-" if s.status == "finished" else "--",
                    label=f"{s.trial_id} ({s.status})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(primary)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if any(s.curve for s in trials):
        ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{primary} per trial", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    tune_dir.write_bytes("plots/trials.png", buf.getvalue())
