"""Through Ray Train with 2 workers: few, purposeful runs sharing one Ray instance."""

from pathlib import Path

import yaml

from visionkit.train import launch
from visionkit.train.runlog import read_metrics

from conftest import REPO, cls_overrides, kill_driver_when, run_cli, start_driver

CONFIG = str(REPO / "configs" / "classification" / "shapes.yaml")


def test_worker_failure_restarts_from_the_last_checkpoint(ray_cluster, toy_plugin, tmp_path):
    marker = tmp_path / "failed-once"
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({
        "task": "toy", "data": {"fail_once_marker": str(marker), "fail_at_epoch": 2},
        "train": {"epochs": 4, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.01}, "progress": False},
        "ray": {"num_workers": 2, "max_failures": 1}, "output": {"storage_path": str(tmp_path), "name": "flaky"}}))
    run = launch.train(str(config), [])
    assert marker.exists()  # rank 1 really failed in epoch 3
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]  # each epoch exactly once
    assert rows[-1]["val/accuracy"] > 0.8


def test_resume_after_the_driver_is_killed_is_bit_exact(ray_cluster, shapes_cls, tmp_path):
    """As users run it: 2 Ray workers, the demo's flips and cosine LR, 2 loader processes each,
    train.ema on (each worker keeps the average); the driver SIGKILLed mid-run, then --resume:
    the same EMA and trained weights, bit for bit, as a run that was never interrupted. The
    uninterrupted run's checkpoint evaluates alike in this process and on 2 workers."""
    import torch

    from visionkit import checkpoint

    extra = {"train.epochs": 4, "train.batch_size": 8, "train.loader_workers": 2,
             "data.train_transforms": "[{name: HorizontalFlip, p: 0.5}, {name: VerticalFlip, p: 0.5}]",
             "train.optimizer.name": "adamw", "train.scheduler.name": "cosine", "train.scheduler.warmup_epochs": 1,
             "train.ema": "{decay: 0.9, warmup_steps: 25}"}
    straight = launch.train(CONFIG, cls_overrides(shapes_cls, tmp_path, "straight", **extra))
    # Evaluated in this process and on 2 workers: the same numbers, and the training's own (EMA) ones.
    one = launch.evaluate(str(straight / "checkpoints" / "last.pt"), [], workers=0, output=str(tmp_path / "one.json"))
    two = launch.evaluate(str(straight / "checkpoints" / "last.pt"), [], workers=2, output=str(tmp_path / "two.json"))
    assert two["workers"] == 2 and one["workers"] == 1 and one["weights"] == "ema"
    for key in ("top1", "mean_class_accuracy", "per_class_accuracy", "confusion_matrix", "num_images"):
        assert one[key] == two[key], key
    assert one["num_images"] == 60  # every validation image once: no sampler padding
    assert one["top1"] == read_metrics(straight)[-1]["val/top1"]  # the 2-worker training eval agrees too
    args = cls_overrides(shapes_cls, tmp_path, "killed", **extra)
    run = tmp_path / "killed"
    kill_driver_when(start_driver("train", CONFIG, *args, "--address", ray_cluster), lambda: len(read_metrics(run)) >= 2)
    done_before = len(read_metrics(run))
    assert 2 <= done_before < 4
    proc = run_cli("train", "--resume", str(run), "--address", ray_cluster)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming at epoch" in proc.stdout
    rows, ref = read_metrics(run), read_metrics(straight)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert [(r["train/loss"], r["lr"], r["val/top1"]) for r in rows] == [(r["train/loss"], r["lr"], r["val/top1"])
                                                                         for r in ref]
    ours, theirs = (checkpoint.load(r / "checkpoints" / "last.pt") for r in (run, straight))
    assert ours.weights == theirs.weights == "ema" and ours.ema == theirs.ema and theirs.ema["updates"] == 40
    for name in ("model", "trained_model"):  # the average, and the weights the optimizer trains
        for key, value in getattr(theirs, name).items():
            assert torch.equal(value, getattr(ours, name)[key]), f"{name}.{key}"


def _train_on_two_workers_then_evaluate(task: str, root: Path, tmp_path: Path):
    """One epoch of the task's demo config through Ray (2 workers), then its metric with 1 and 2 workers."""
    run = launch.train(str(REPO / "configs" / task / "shapes.yaml"), [
        f"data.root={root}", "train.epochs=1", "train.batch_size=4", "train.progress=false", "ray.num_workers=2",
        f"output.storage_path={tmp_path}", f"output.name={task}"])
    one = launch.evaluate(str(run), [], workers=0, output=str(tmp_path / "one.json"))
    two = launch.evaluate(str(run), [], workers=2, output=str(tmp_path / "two.json"))
    return run, read_metrics(run)[0], one, two


def test_detection_trains_on_two_workers_and_evaluates_like_one_process(ray_cluster, tmp_path):
    """CI-sized: a few detection steps through Ray, then the COCO metric with 1 and 2 workers."""
    from visionkit.data import synth

    root = synth.scenes(tmp_path / "scenes", num_train=16, num_val=8, size=128, seed=5)
    _, row, one, two = _train_on_two_workers_then_evaluate("detection", root, tmp_path)
    assert {"train/classification", "train/bbox_regression", "train/bbox_ctrness", "val/mAP", "val/mAP50"} <= set(row)
    for key in ("mAP", "mAP50", "mAP75"):
        assert one[key] == two[key], key


def test_segmentation_trains_on_two_workers_and_evaluates_like_one_process(ray_cluster, tmp_path):
    """CI-sized: a few segmentation steps through Ray; mIoU from summed confusion matrices is exact."""
    from visionkit.data import synth

    root = synth.scenes(tmp_path / "scenes", num_train=16, num_val=6, size=64, seed=6)
    run, row, one, two = _train_on_two_workers_then_evaluate("segmentation", root, tmp_path)
    assert {"train/ce", "train/dice", "val/mIoU", "val/pixel_acc"} <= set(row)
    assert list((run / "plots").glob("*.png")), "no overlays or curves were drawn"
    assert one["confusion"] == two["confusion"]
    assert sum(map(sum, one["confusion"])) == 6 * 64 * 64  # every pixel of every image once
    for key in ("mIoU", "pixel_acc", "mAcc"):
        assert one[key] == two[key], key
