"""(d) Node loss: how long a run takes to recover when a node dies mid-run.

Starts the loopback two-node cluster of the tests (tests/loopback.py: `ray start --head` with 2
CPUs and a second `ray start --address` with 1), runs `visionkit train` with 2 workers spread
over both nodes and `ray.max_failures=1`, SIGKILLs the second node's raylet after the first
epoch, and reads from the run's own files when training went on.

    python benchmarks/cluster.py [--repeats 2]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, report

sys.path.insert(0, str(REPO / "tests"))
from loopback import LoopbackCluster  # noqa: E402


def one_loss(cluster: LoopbackCluster, root: Path, out: Path, name: str) -> dict[str, float]:
    cluster.start_node()
    run = out / name
    cmd = [sys.executable, "-m", "visionkit.cli", "train", str(REPO / "configs/classification/shapes.yaml"),
           f"data.root={root}", "data.image_size=32", "model.name=mlp", "model.hidden=[64]", "data.train_transforms=[]",
           "train.epochs=4", "train.batch_size=8", "train.optimizer.name=adam", "train.optimizer.lr=0.003",
           "train.scheduler.name=constant", "train.progress=false", "ray.placement_strategy=SPREAD",
           "ray.max_failures=1", f"output.storage_path={out}", f"output.name={name}", "--address", cluster.address]
    # A client of a head with token authentication (Ray's default) says so; the token is in ~/.ray.
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "RAY_AUTH_MODE": "token"})
    metrics = run / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().strip()):
        if proc.poll() is not None:
            raise SystemExit(proc.stdout.read())
        time.sleep(0.1)
    killed = cluster.kill_node()
    dead = cluster.wait_node_dead()
    output, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(output)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    attempts = json.loads((run / "workers.json").read_text())["attempts"]
    again = next(r for r in rows if r["epoch"] == attempts[1]["start_epoch"])
    return {"dead": dead - killed, "placed": attempts[1]["started_unix"] - killed,
            "first_step": again["first_step_unix"] - killed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from visionkit.data import synth

    out = Path(tempfile.mkdtemp(prefix="vk-cluster-"))
    root = synth.classification(out / "data", num_train=160, num_val=60, size=32, seed=3)
    load = os.getloadavg()[0]
    cluster = LoopbackCluster(head_cpus=2, node_cpus=1).start()
    try:
        results = [one_loss(cluster, root, out, f"loss{i}") for i in range(args.repeats)]
    finally:
        cluster.stop()
        shutil.rmtree(cluster.tmp, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    report("node loss: seconds from SIGKILL of the second node's raylet (loopback cluster, 2 workers)", [
        f"- load average before: {load:.2f}", "",
        f"| step | seconds (median of {args.repeats}) | each |", "|---|---|---|",
        *(f"| {label} | {med[k]:.1f} | {', '.join(f'{r[k]:.1f}' for r in results)} |" for k, label in (
            ("dead", "node marked dead by the GCS"), ("placed", "workers running again (on the head)"),
            ("first_step", "first training step again"))),
    ])


if __name__ == "__main__":
    main()
