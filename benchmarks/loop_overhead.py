"""(a) Images/s of visionkit's training loop vs a plain PyTorch loop: same model, data, batch.

The original example's setting: MLP 784-256-128-10, Adam 1e-3, batch 64, on MNIST-format IDX
files (generated here: 60,000 random 28x28 images; throughput does not depend on content).
Both sides train on one CPU worker with the same thread count. On a shared VM an epoch's
throughput drifts by +-15% from one epoch to the next, and interference only ever slows an epoch
down. So the rounds alternate the order (ABBA), the headline is the median of the per-round
ratios, and the ratio of each loop's fastest epoch (timeit's estimator) is printed beside it:

    python benchmarks/loop_overhead.py [--rounds 20]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import REPO, report


def plain_epoch(dataset, batch_size: int) -> float:
    """The loop the original example wrote: shuffle, forward, cross-entropy, backward, step."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    model.train()
    tic = time.perf_counter()
    for images, labels in loader:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return len(dataset) / (time.perf_counter() - tic)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from visionkit.train import launch
    from visionkit_plugins.classification.data import DataConfig, MnistDataset, write_idx

    tmp = Path(tempfile.mkdtemp(prefix="vk-bench-"))
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60000), ("t10k", 10000)):
        write_idx(tmp / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    dataset = MnistDataset(DataConfig(format="mnist", root=tmp, channels=1, mean=[0.1307], std=[0.3081]), "train")

    from visionkit.train.runlog import read_metrics

    def visionkit_epoch(r: int) -> float:
        run = launch.train(str(REPO / "configs/classification/mnist_mlp.yaml"), [
            f"data.root={tmp}", "ray.num_workers=0", "train.epochs=1", "train.progress=false",
            f"output.storage_path={tmp}/runs", f"output.name=r{r}"])
        return read_metrics(run)[0]["train/images_per_s"]

    plain, ours = [], []
    for r in range(args.rounds):
        if r % 2 == 0:
            plain.append(plain_epoch(dataset, 64))
            ours.append(visionkit_epoch(r))
        else:
            ours.append(visionkit_epoch(r))
            plain.append(plain_epoch(dataset, 64))
    paired = statistics.median(o / p for o, p in zip(ours, plain))
    p, o = statistics.median(plain), statistics.median(ours)
    report("loop overhead: visionkit vs plain PyTorch (MLP, MNIST-format, batch 64, 1 thread)", [
        "", f"| loop | best epoch, images/s | median of {len(plain)} epochs | slowest |", "|---|---|---|---|",
        f"| plain PyTorch | {max(plain):,.0f} | {p:,.0f} | {min(plain):,.0f} |",
        f"| visionkit (in-process worker) | {max(ours):,.0f} | {o:,.0f} | {min(ours):,.0f} |",
        f"\nratio visionkit / plain, median of the {len(plain)} per-round ratios: **{paired:.3f}** "
        f"(target >= 0.97); of the fastest epochs: {max(ours) / max(plain):.3f}"])


if __name__ == "__main__":
    main()
