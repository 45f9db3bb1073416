"""(c) Throughput with 1 vs 2 Ray workers, each pinned to one thread (one CPU per worker).

Ray sets OMP_NUM_THREADS to the worker's CPU count, so 1 worker uses 1 core and 2 workers use
2 cores: the comparison shows what the second worker buys, not a thread-count difference.

    python benchmarks/scaling.py [data-root]   (default: generates data/shapes_cls)

The demo's per-worker batch (16) and a larger one (64), to separate compute from all-reduce.
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
    # Per-worker batch 16 is the demo's; 64 shows how much of the gap is DDP's gradient
    # all-reduce (ResNet-18: 45 MB per step over gloo), which a larger batch amortises.
    results = {}
    for batch in (16, 64):
        for workers in (1, 2):
            _, rows, _ = timed_train([str(REPO / "configs/classification/shapes.yaml"), f"data.root={root}",
                                      f"ray.num_workers={workers}", f"train.batch_size={batch}", "train.epochs=3",
                                      "train.progress=false", "output.storage_path=/tmp/vk-scaling",
                                      f"output.name=w{workers}-b{batch}-{int(time.time())}"],
                                     env={"OMP_NUM_THREADS": "1"})
            results[batch, workers] = statistics.median(r["train/images_per_s"] for r in rows[1:])
    lines = ["", "| batch per worker | 1 worker, images/s | 2 workers, images/s | speed-up |", "|---|---|---|---|"]
    for batch in (16, 64):
        one, two = results[batch, 1], results[batch, 2]
        lines.append(f"| {batch} | {one:.0f} | {two:.0f} | **{two / one:.2f}x** |")
    report("scaling: 1 vs 2 Ray workers (ResNet-18, 32 px shapes, 1 thread per worker, median of epochs 2-3)", lines)


if __name__ == "__main__":
    main()
