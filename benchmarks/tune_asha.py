"""ASHA against FIFO on the same trials: the best metric each search finds and the compute it spends.

Two ``visionkit tune`` searches over the classification demo (configs/classification/shapes.yaml),
the same space (learning rate and weight decay) and the same searcher seed, so both draw the same
8 trials; one stops trials at ASHA's rungs, the other runs every trial to the end. Compute is
counted in trial-epochs (what results.csv records), which does not drift with the machine's load
as wall time does; wall time is printed too.

    python benchmarks/tune_asha.py                 # 8 trials x 10 epochs, 1 CPU per trial
    python benchmarks/tune_asha.py --epochs 6 --trials 4
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

import yaml

from _common import REPO, report

SPACE = {"train.optimizer.lr": {"loguniform": [1e-4, 3e-2]},
         "train.optimizer.weight_decay": {"uniform": [0.0, 0.2]}}


def search(config: Path, scheduler: dict, out: Path, name: str) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "visionkit.cli", "tune", str(config),
                           f"output.storage_path={out}", f"output.name={name}",
                           f"tune.scheduler={yaml.safe_dump(scheduler, default_flow_style=True).strip()}"],
                          cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"visionkit tune failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    with open(out / name / "results.csv", newline="") as f:
        return wall, list(csv.DictReader(f))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=10, help="train.epochs of every trial (the demo's 10)")
    ap.add_argument("--cpus-per-trial", type=int, default=1, help="one worker per trial with this many CPUs")
    ap.add_argument("--seed", type=int, default=0, help="tune.seed: the same trials for both searches")
    ap.add_argument("--schedulers", nargs="+", choices=["asha", "fifo"], default=["asha", "fifo"])
    args = ap.parse_args()

    data = REPO / "data" / "shapes_cls"
    if not data.is_dir():
        subprocess.run([sys.executable, "-m", "visionkit.cli", "data", "synth", "classification", str(data)], check=True)
    cfg = yaml.safe_load((REPO / "configs" / "classification" / "shapes.yaml").read_text())
    cfg["data"]["root"] = str(data)
    cfg["train"]["epochs"] = args.epochs
    cfg["train"]["progress"] = False
    cfg["ray"] = {"num_workers": 1, "resources_per_worker": {"CPU": args.cpus_per_trial}}
    cfg["tune"] = {"space": SPACE, "num_samples": args.trials, "seed": args.seed}
    out = REPO / "benchmarks" / "out" / "tune"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    config = out / f"search-{stamp}.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))

    results = {}
    schedulers = {"asha": {"name": "asha", "grace_period": 1, "reduction_factor": 2}, "fifo": {"name": "fifo"}}
    for label in args.schedulers:
        wall, rows = search(config, schedulers[label], out, f"{label}-{stamp}")
        failed = [r for r in rows if r["status"] == "error"]
        if failed:  # a trial that never trained would make the comparison meaningless
            raise SystemExit(f"{label}: {len(failed)} trial(s) failed: {failed[0]['error']} ({out / f'{label}-{stamp}'})")
        best = max(rows, key=lambda r: float(r["best_top1"]))
        results[label] = {"wall": wall, "epochs": sum(int(r["epochs"]) for r in rows), "best": float(best["best_top1"]),
                          "best_trial": best, "rows": rows}
        print(f"{label}: best top1 {float(best['best_top1']):.4f} (lr {float(best['train.optimizer.lr']):.2e}, "
              f"wd {float(best['train.optimizer.weight_decay']):.3f}), {results[label]['epochs']} trial-epochs, "
              f"{wall:.0f} s", flush=True)

    values = {label: sorted(round(float(row["train.optimizer.lr"]), 8) for row in r["rows"])
              for label, r in results.items()}
    same = len({tuple(v) for v in values.values()}) == 1
    lines = [f"- {args.trials} trials x {args.epochs} epochs, one worker x {args.cpus_per_trial} CPU per trial, "
             f"space {SPACE}, tune.seed {args.seed}; the same trials in every search: {same}",
             "", "| search | best top-1 | its lr, wd | trial-epochs | wall s |", "|---|---|---|---|---|"]
    for label, r in results.items():
        b = r["best_trial"]
        lines.append(f"| {label} | {r['best']:.4f} | {float(b['train.optimizer.lr']):.2e}, "
                     f"{float(b['train.optimizer.weight_decay']):.3f} | {r['epochs']} | {r['wall']:.0f} |")
    if len(results) < 2:
        report("ASHA against FIFO on the classification demo", lines)
        return
    a, f = results["asha"], results["fifo"]
    lines.append(f"\nASHA / FIFO: compute (trial-epochs) {a['epochs'] / f['epochs']:.2f}, wall time "
                 f"{a['wall'] / f['wall']:.2f}, best top-1 {a['best'] - f['best']:+.4f}")
    report("ASHA against FIFO on the classification demo", lines)


if __name__ == "__main__":
    main()
