"""(b) Seconds from command to first training step, on the demo's own data and config:
`visionkit train configs/classification/shapes.yaml` vs a bare Ray Train script with the same
layout (one worker holding every CPU, as `ray.num_workers: auto` gives here), model (ResNet-18),
batch and data (the demo's ImageFolder of 32-px shapes), and `visionkit train --debug-local`
(the same loop in the calling process, no Ray). All stamp the wall-clock time of their first step.

    python benchmarks/startup.py [--repeats 2] [--data data/shapes_cls]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, report, timed_train

BARE = r'''
import os, sys, time
import ray, ray.train
from ray.train.torch import TorchTrainer

def loop(config):
    # Imported here, as Ray's examples do: a __main__ function is pickled by value with its globals.
    import torch, torchvision
    from ray.train.torch import prepare_model, prepare_data_loader
    torch.set_num_threads(os.cpu_count())
    tf = torchvision.transforms.Compose([torchvision.transforms.ToTensor(),
                                         torchvision.transforms.Normalize([0.5] * 3, [0.25] * 3)])
    ds = torchvision.datasets.ImageFolder(os.path.join(config["root"], "train"), transform=tf)
    loader = prepare_data_loader(torch.utils.data.DataLoader(ds, batch_size=config["batch"], shuffle=True))
    model = prepare_model(torchvision.models.resnet18(num_classes=len(ds.classes)))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    for images, labels in loader:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad(); loss.backward(); opt.step()
        with open(config["stamp"], "w") as fh:
            fh.write(str(time.time()))
        break
    ray.train.report({"done": 1})

ray.init(num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=256 * 1024**2)
TorchTrainer(loop, train_loop_config={"root": sys.argv[1], "stamp": sys.argv[2], "batch": int(sys.argv[4])},
             scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": os.cpu_count()}),
             run_config=ray.train.RunConfig(storage_path=sys.argv[3], name="bare")).fit()
'''


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", default=str(REPO / "data" / "shapes_cls"), help="the demo's data (visionkit data synth classification)")
    args = parser.parse_args()
    import yaml

    data = Path(args.data).resolve()
    if not (data / "train").is_dir():
        subprocess.run([sys.executable, "-m", "visionkit.cli", "data", "synth", "classification", str(data)], check=True)
    config = REPO / "configs" / "classification" / "shapes.yaml"
    batch = yaml.safe_load(config.read_text())["train"]["batch_size"]
    tmp = Path(tempfile.mkdtemp(prefix="vk-start-"))
    (tmp / "bare.py").write_text(BARE)
    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    bare, ours, local = [], [], []
    common = [str(config), f"data.root={data}", "train.epochs=1", f"output.storage_path={tmp}/runs", "train.progress=false"]
    for r in range(args.repeats):
        stamp = tmp / f"stamp{r}"
        start = time.time()
        subprocess.run([sys.executable, str(tmp / "bare.py"), str(data), str(stamp), str(tmp / f"bare{r}"), str(batch)],
                       cwd=REPO, check=True, capture_output=True)
        bare.append(float(stamp.read_text()) - start)
        start, rows, _ = timed_train([*common, f"output.name=vk{r}"])
        ours.append(rows[0]["first_step_unix"] - start)
        start, rows, _ = timed_train([*common, f"output.name=local{r}", "--debug-local"])
        local.append(rows[0]["first_step_unix"] - start)
    b, o, d = statistics.median(bare), statistics.median(ours), statistics.median(local)
    report("start-up: command to first training step (the demo's config and data, embedded Ray)", [
        "", f"| command | seconds (median of {args.repeats}) |", "|---|---|",
        f"| bare Ray Train script | {b:.1f} |", f"| visionkit train | {o:.1f} |",
        f"| visionkit train --debug-local | {d:.1f} |",
        f"\nratio visionkit / bare: **{o / b:.2f}** (target <= 1.2); --debug-local / Ray: **{d / o:.2f}**",
        "\neach run (s): " + "; ".join(f"{name} {', '.join(f'{x:.1f}' for x in xs)}" for name, xs in
                                      (("bare", bare), ("visionkit", ours), ("--debug-local", local))),
        f"\nload average at the end: {os.getloadavg()[0]:.1f}"])


if __name__ == "__main__":
    main()
