"""(c) Throughput with 1 vs 2 Ray workers, each pinned to one thread (one CPU per worker).

Ray sets OMP_NUM_THREADS to the worker's CPU count, so 1 worker uses 1 core and 2 workers use
2 cores: the comparison shows what the second worker buys, not a thread-count difference.

    python benchmarks/scaling.py [data-root]   (default: generates data/shapes_cls)
"""

import statistics
import sys
import time
from pathlib import Path

from _common import REPO, report, timed_train


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "data" / "shapes_cls"
    if not root.exists():
        from visionkit.data import synth

        synth.classification(root)
    results = {}
    for workers in (1, 2):
        _, rows, _ = timed_train([str(REPO / "configs/classification/shapes.yaml"), f"data.root={root}",
                                  f"ray.num_workers={workers}", "train.epochs=3", "train.progress=false",
                                  "output.storage_path=/tmp/vk-scaling", f"output.name=w{workers}-{int(time.time())}"],
                                 env={"OMP_NUM_THREADS": "1"})
        results[workers] = statistics.median(r["train/images_per_s"] for r in rows[1:])
    report("scaling: 1 vs 2 Ray workers (ResNet-18, 32 px shapes, batch 32 per worker, 1 thread each)", [
        "", "| workers | images/s (median of epochs 2-3) |", "|---|---|",
        f"| 1 | {results[1]:.0f} |", f"| 2 | {results[2]:.0f} |",
        f"\nspeed-up 2 vs 1: **{results[2] / results[1]:.2f}x**"])


if __name__ == "__main__":
    main()
