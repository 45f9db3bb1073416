"""Resume as users run it: the demo's augmentation on, loader processes, another batch size, a
changed LR, overrides that do not fit, class folders that moved, initial weights that are gone.
In this process (``ray.num_workers: 0``); the 2-worker Ray resume is in test_ray.py."""

import json
import shutil

import pytest
import torch

from visionkit import checkpoint
from visionkit.errors import UserError
from visionkit.train import launch
from visionkit.train.runlog import read_metrics

from conftest import REPO, cls_overrides, crashing_after_epoch, run_cli

CONFIG = str(REPO / "configs" / "classification" / "shapes.yaml")
# The demo config's own augmentation, which cls_overrides turns off for speed elsewhere.
DEMO_FLIPS = "[{name: HorizontalFlip, p: 0.5}, {name: VerticalFlip, p: 0.5}]"


def demo_like(root, runs, name, **extra):
    """The demo's augmentation and LR schedule on the small MLP, in this process."""
    return cls_overrides(root, runs, name, **{
        "ray.num_workers": 0, "data.train_transforms": DEMO_FLIPS, "train.epochs": 4,
        "train.optimizer.name": "adamw", "train.optimizer.weight_decay": 0.05,
        "train.scheduler.name": "cosine", "train.scheduler.warmup_epochs": 1, **extra})


def weights(run) -> dict:
    return checkpoint.load(run / "checkpoints" / "last.pt").model


@pytest.mark.parametrize("loader_workers", [0, 2])
def test_resume_with_the_demo_augmentation_is_bit_exact(shapes_cls, tmp_path, monkeypatch, loader_workers):
    straight = launch.train(CONFIG, demo_like(shapes_cls, tmp_path, "straight", **{"train.loader_workers": loader_workers}))
    again = launch.train(CONFIG, demo_like(shapes_cls, tmp_path, "again", **{"train.loader_workers": loader_workers}))
    with crashing_after_epoch(monkeypatch, 1):
        launch.train(CONFIG, demo_like(shapes_cls, tmp_path, "crashed", **{"train.loader_workers": loader_workers}))
    crashed = tmp_path / "crashed"
    launch.train(None, [], resume=str(crashed))

    ref = read_metrics(straight)
    assert [r["train/loss"] for r in read_metrics(again)] == [r["train/loss"] for r in ref]  # reproducible
    rows = read_metrics(crashed)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert [r["train/loss"] for r in rows] == [r["train/loss"] for r in ref]
    for key, value in weights(straight).items():
        assert torch.equal(value, weights(crashed)[key]), key


def test_train_seed_reaches_the_augmentation(shapes_cls, tmp_path):
    """Another seed, the same initial weights (none are random in the comparison): only the
    order and the flips can differ, and they must."""
    a = launch.train(CONFIG, demo_like(shapes_cls, tmp_path, "a", **{"train.epochs": 1}))
    b = launch.train(CONFIG, demo_like(shapes_cls, tmp_path, "b", **{"train.epochs": 1, "train.seed": 1}))
    assert read_metrics(a)[0]["train/loss"] != read_metrics(b)[0]["train/loss"]


def test_each_epoch_and_each_layout_augments_the_same_image_its_own_way(shapes_cls):
    """Per-sample seeds from (seed, epoch, index): the same for 0 or 2 loader processes, new each epoch."""
    from visionkit.config import load_config
    from visionkit.train.loop import Task

    def batches(loader_workers: int, epoch: int):
        _, raw = load_config(CONFIG, [f"data.root={shapes_cls}", "data.image_size=32", f"data.train_transforms={DEMO_FLIPS}",
                                      f"train.loader_workers={loader_workers}", "train.batch_size=40"])
        task = Task(raw, "test")
        dataset = task.dataset("train")
        loader = task.train_loader(dataset, rank=0, world_size=1)
        loader.sampler.set_epoch(epoch)
        return torch.cat([images for images, _ in loader])

    zero = batches(0, 0)
    assert torch.equal(zero, batches(2, 0))  # loader processes change nothing
    assert not torch.equal(zero, batches(0, 1))  # a new epoch draws new flips and a new order


def test_resume_with_another_batch_size_follows_the_lr_of_an_uninterrupted_run(shapes_cls, tmp_path, monkeypatch):
    """Half the steps per epoch after the resume (another batch size, as 2 -> 1 workers changes the
    global batch): the LR stays where the fraction of training puts it, and still ends at 0."""
    straight = launch.train(CONFIG, demo_like(shapes_cls, tmp_path, "straight"))
    with crashing_after_epoch(monkeypatch, 1):
        launch.train(CONFIG, demo_like(shapes_cls, tmp_path, "resized"))
    run = tmp_path / "resized"
    launch.train(None, ["train.batch_size=32"], resume=str(run))
    lrs = [r["lr"] for r in read_metrics(run)]
    assert lrs == pytest.approx([r["lr"] for r in read_metrics(straight)], abs=1e-12)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9) and lrs[1] > 0.0015  # cosine: half-way, then 0 at the end


def test_resume_with_a_new_lr_and_weight_decay_uses_them(shapes_cls, tmp_path, monkeypatch):
    """The divergence error's advice (`--resume RUN train.optimizer.lr=...`) must take effect."""
    base = demo_like(shapes_cls, tmp_path, "lr", **{"train.scheduler.name": "constant", "train.scheduler.warmup_epochs": 0})
    with crashing_after_epoch(monkeypatch, 1):
        launch.train(CONFIG, base)
    run = tmp_path / "lr"
    seen = []
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append([(g["lr"], g["weight_decay"]) for g in self.param_groups])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    launch.train(None, ["train.optimizer.lr=0.0005", "train.optimizer.weight_decay=0.2"], resume=str(run))
    assert seen and all(groups == [(0.0005, 0.2), (0.0005, 0.0)] for groups in seen)
    assert [r["lr"] for r in read_metrics(run)] == pytest.approx([0.003, 0.003, 0.0005, 0.0005])


def test_a_resume_override_that_does_not_fit_is_refused_and_not_saved(shapes_cls, tmp_path):
    run = launch.train(CONFIG, demo_like(shapes_cls, tmp_path, "fixed", **{"train.epochs": 1}))
    saved = (run / "config.yaml").read_text()
    for override, key in (("model.hidden=[32]", "model.hidden"), ("model.name=resnet18", "model.name"),
                          ("train.optimizer.name=sgd", "train.optimizer.name")):
        proc = run_cli("train", "--resume", str(run), override, "train.epochs=2")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert key in proc.stderr and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert (run / "config.yaml").read_text() == saved
    # What a checkpoint can continue with is accepted: mixed precision, and a plain resume still works.
    launch.train(None, ["train.epochs=2", "train.amp=bf16"], resume=str(run))
    assert [r["epoch"] for r in read_metrics(run)] == [0, 1]


def test_renamed_or_missing_class_folders_are_refused(shapes_cls, tmp_path):
    run = launch.train(CONFIG, demo_like(shapes_cls, tmp_path, "classes", **{"train.epochs": 1}))
    renamed = tmp_path / "renamed"
    shutil.copytree(shapes_cls, renamed)
    for split in ("train", "val"):
        (renamed / split / "circle").rename(renamed / split / "zigzag")
    with pytest.raises(UserError, match="classes differ.*missing from the data: \\['circle'\\]"):
        launch.train(None, [f"data.root={renamed}", "train.epochs=2"], resume=str(run))
    assert "zigzag" not in (run / "config.yaml").read_text() and str(renamed) not in (run / "config.yaml").read_text()

    missing = tmp_path / "missing"
    shutil.copytree(shapes_cls, missing)
    for split in ("train", "val"):
        shutil.rmtree(missing / split / "square")
    proc = run_cli("eval", str(run), f"data.root={missing}")
    assert proc.returncode == 2 and "classes differ" in proc.stderr and "square" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_eval_and_export_do_not_need_the_initial_weights_file(shapes_cls, tmp_path):
    first = launch.train(CONFIG, demo_like(shapes_cls, tmp_path, "first", **{"train.epochs": 1}))
    start = tmp_path / "start.pt"
    shutil.copy(first / "checkpoints" / "last.pt", start)
    run = launch.train(CONFIG, demo_like(shapes_cls, tmp_path, "finetuned", **{"train.epochs": 1, "model.weights": str(start)}))
    start.unlink()  # another machine, a cleaned disk
    result = launch.evaluate(str(run), [])
    assert result["top1"] == read_metrics(run)[0]["val/top1"]
    assert launch.evaluate(str(run), ["model.weights=null"])["top1"] == result["top1"]
    proc = run_cli("export", str(run), "-o", str(tmp_path / "model.onnx"), "--check-images", "8")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    launch.train(None, ["train.epochs=2"], resume=str(run))  # a resume neither
    assert len(read_metrics(run)) == 2


def test_a_checkpoint_from_a_newer_visionkit_is_refused_in_one_line(shapes_cls, tmp_path):
    run = launch.train(CONFIG, demo_like(shapes_cls, tmp_path, "future", **{"train.epochs": 1}))
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["format"] = checkpoint.FORMAT + 1
    torch.save(state, tmp_path / "future.pt")
    proc = run_cli("eval", str(tmp_path / "future.pt"))
    assert proc.returncode == 2 and f"checkpoint format {checkpoint.FORMAT + 1}" in proc.stderr, proc.stderr
    assert "future.pt" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_format_1_checkpoint_still_resumes(shapes_cls, tmp_path):
    """Written before the LR became a function of progress: one optimizer group, a LambdaLR state."""
    run = launch.train(CONFIG, demo_like(shapes_cls, tmp_path, "old", **{"train.epochs": 1, "train.optimizer.weight_decay": 0}))
    path = run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    groups = state["optimizer"]["param_groups"]
    state["optimizer"]["param_groups"] = [{**groups[0], "params": groups[0]["params"] + groups[1]["params"]}]
    state.update(format=1, scheduler={"last_epoch": 10})
    del state["plugin_config_version"]
    torch.save(state, path)
    launch.train(None, ["train.epochs=2"], resume=str(run))
    assert [r["epoch"] for r in read_metrics(run)] == [0, 1]


def test_the_last_short_accumulation_group_weighs_like_a_short_batch(shapes_cls, tmp_path):
    """160 images, batches of 16 accumulated by 3: the last group has one batch, and must count
    as fully as the last (short) batch of 48 does."""
    big = launch.train(CONFIG, cls_overrides(shapes_cls, tmp_path, "big", **{
        "ray.num_workers": 0, "train.epochs": 1, "train.batch_size": 48}))
    accum = launch.train(CONFIG, cls_overrides(shapes_cls, tmp_path, "accum", **{
        "ray.num_workers": 0, "train.epochs": 1, "train.batch_size": 16, "train.grad_accum_steps": 3}))
    for key, value in weights(big).items():
        torch.testing.assert_close(weights(accum)[key], value, rtol=1e-4, atol=1e-5)


def test_overrides_may_follow_flags(shapes_cls, tmp_path):
    args = cls_overrides(shapes_cls, tmp_path, "flags", **{"train.epochs": 1})
    proc = run_cli("train", CONFIG, "--debug-local", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "flags" / "eval_best.json").read_text())["epoch"] == 0
