"""Time-to-accuracy of a config, wall clock from process start (as a user waits for it).

    python benchmarks/time_to_accuracy.py configs/classification/shapes.yaml [key=value ...]

Prints one row per epoch: wall seconds since the command started, and the validation metrics.
"""

import sys

from _common import report, timed_train


def main() -> None:
    start, rows, _ = timed_train(sys.argv[1:])
    keys = [k for k in rows[-1] if k.startswith("val/") and k != "val/num_images"][:4]
    lines = ["", "| epoch | wall s | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['epoch'] + 1} | {r['end_unix'] - start:.0f} | " +
                     " | ".join(f"{r[k]:.4f}" if k in r else "" for k in keys) + " |")
    lines.append(f"\nfirst training step at {rows[0]['first_step_unix'] - start:.1f} s after the command started")
    report(f"time to accuracy: {sys.argv[1]}", lines)


if __name__ == "__main__":
    main()
