"""(b) Seconds from command to first training step: `visionkit train` vs a bare Ray Train script,
and `visionkit train --debug-local` (the same loop in the calling process, no Ray).

The first two start a fresh Python process, an embedded Ray and a 2-worker TorchTrainer that
train the same MLP on the same MNIST-format files; the third trains it in the command's own
process. All stamp the wall-clock time of their first step.

    python benchmarks/startup.py [--repeats 2]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import REPO, report, timed_train

BARE = r'''
import json, os, sys, time
import ray, ray.train, torch
from ray.train.torch import TorchTrainer, prepare_model, prepare_data_loader

def loop(config):
    from visionkit_plugins.classification.data import DataConfig, MnistDataset
    ds = MnistDataset(DataConfig(format="mnist", root=config["root"], channels=1), "train")
    loader = prepare_data_loader(torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True))
    model = prepare_model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(),
                                              torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for images, labels in loader:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad(); loss.backward(); opt.step()
        if ray.train.get_context().get_world_rank() == 0:
            with open(config["stamp"], "w") as fh:
                fh.write(str(time.time()))
        break
    ray.train.report({"done": 1})

ray.init(num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=256 * 1024**2)
TorchTrainer(loop, train_loop_config={"root": sys.argv[1], "stamp": sys.argv[2]},
             scaling_config=ray.train.ScalingConfig(num_workers=2),
             run_config=ray.train.RunConfig(storage_path=sys.argv[3], name="bare")).fit()
'''


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from visionkit_plugins.classification.data import write_idx

    tmp = Path(tempfile.mkdtemp(prefix="vk-start-"))
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6000), ("t10k", 1000)):
        write_idx(tmp / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    (tmp / "bare.py").write_text(BARE)
    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    bare, ours, local = [], [], []
    for r in range(args.repeats):
        stamp = tmp / f"stamp{r}"
        start = time.time()
        subprocess.run([sys.executable, str(tmp / "bare.py"), str(tmp), str(stamp), str(tmp / f"bare{r}")],
                       cwd=REPO, check=True, capture_output=True)
        bare.append(float(stamp.read_text()) - start)
        start, rows, _ = timed_train([str(REPO / "configs/classification/mnist_mlp.yaml"), f"data.root={tmp}",
                                      "ray.num_workers=2", "train.epochs=1", f"output.storage_path={tmp}/runs",
                                      f"output.name=vk{r}", "train.progress=false"])
        ours.append(rows[0]["first_step_unix"] - start)
        start, rows, _ = timed_train([str(REPO / "configs/classification/mnist_mlp.yaml"), f"data.root={tmp}",
                                      "train.epochs=1", f"output.storage_path={tmp}/runs", f"output.name=local{r}",
                                      "train.progress=false", "--debug-local"])
        local.append(rows[0]["first_step_unix"] - start)
    b, o, d = statistics.median(bare), statistics.median(ours), statistics.median(local)
    report("start-up: command to first training step (2 Ray workers, embedded Ray)", [
        "", f"| command | seconds (median of {args.repeats}) |", "|---|---|",
        f"| bare Ray Train script | {b:.1f} |", f"| visionkit train | {o:.1f} |",
        f"| visionkit train --debug-local | {d:.1f} |",
        f"\nratio visionkit / bare: **{o / b:.2f}** (target <= 1.2); --debug-local / 2 workers: **{d / o:.2f}**",
        "\neach run (s): " + "; ".join(f"{name} {', '.join(f'{x:.1f}' for x in xs)}" for name, xs in
                                      (("bare", bare), ("visionkit", ours), ("--debug-local", local))),
        f"\nload average at the end: {os.getloadavg()[0]:.1f}"])


if __name__ == "__main__":
    main()
