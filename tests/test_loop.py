"""The training loop's pieces, in this process (``ray.num_workers: 0``): fast and exact."""

import collections
import json
import math
import pickle
from pathlib import Path

import pytest
import torch

from visionkit.config import SchedulerConfig
from visionkit import checkpoint
from visionkit.train import launch, loop
from visionkit.train.optim import lr_factor
from visionkit.train.runlog import read_metrics

from conftest import REPO, cls_overrides, crashing_after_epoch

CONFIG = str(REPO / "configs" / "classification" / "shapes.yaml")


def train_local(root, runs, name, **extra):
    return launch.train(CONFIG, cls_overrides(root, runs, name, **{"ray.num_workers": 0, **extra}))


def weights(run_dir: Path) -> dict:
    return checkpoint.load(run_dir / "checkpoints" / "last.pt").model


def test_a_cnn_learns_the_shapes(tmp_path_factory, tmp_path, one_thread):
    """ResNet-18 from scratch on 1,200 generated images: well above chance (0.25) in 6 epochs.
    (The full demo config reaches >= 0.95; see benchmarks/README.md.)"""
    from visionkit.data import synth

    root = synth.classification(tmp_path_factory.mktemp("learn"), num_train=1200, num_val=200, size=32, seed=3)
    run = train_local(root, tmp_path, "learn", **{
        "model.name": "resnet18", "train.epochs": 6, "train.batch_size": 32,
        "train.optimizer.name": "adamw", "train.optimizer.lr": 0.003, "train.optimizer.weight_decay": 0.05,
        "train.scheduler.name": "cosine", "train.scheduler.warmup_epochs": 1})
    best = json.loads((run / "eval_best.json").read_text())
    assert best["top1"] >= 0.5, best
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == list(range(6))
    assert rows[-1]["train/loss"] < 0.7 * rows[0]["train/loss"]
    for name in ("curves.png", "confusion_matrix.png"):
        assert (run / "plots" / name).stat().st_size > 1000
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_after_a_crash_replays_exactly(shapes_cls, tmp_path, monkeypatch):
    straight = train_local(shapes_cls, tmp_path, "straight")

    with crashing_after_epoch(monkeypatch, 1):  # after epoch 2's checkpoint
        train_local(shapes_cls, tmp_path, "crashed")
    crashed = tmp_path / "crashed"
    assert checkpoint.load(crashed / "checkpoints" / "last.pt").epoch == 1
    launch.train(None, [], resume=str(crashed))

    rows, ref = read_metrics(crashed), read_metrics(straight)
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # none skipped, none repeated
    for a, b in zip(rows, ref):
        assert a["train/loss"] == b["train/loss"] and a["val/top1"] == b["val/top1"]
    for key, value in weights(straight).items():
        assert torch.equal(value, weights(crashed)[key]), key


def test_metrics_past_the_checkpoint_are_dropped_on_resume(shapes_cls, tmp_path, monkeypatch):
    """A crash between the metrics line and the checkpoint must not leave that epoch twice."""
    real_save = loop.save_checkpoint

    def crash_in_save(*args, **kwargs):
        if args[6] == 1:
            raise KeyboardInterrupt("killed while writing the checkpoint")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", crash_in_save)
    with pytest.raises(KeyboardInterrupt):
        train_local(shapes_cls, tmp_path, "torn")
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    run = tmp_path / "torn"
    assert [r["epoch"] for r in read_metrics(run)] == [0, 1]
    launch.train(None, [], resume=str(run))
    assert [r["epoch"] for r in read_metrics(run)] == [0, 1, 2]


def test_checkpoint_write_is_atomic(shapes_cls, tmp_path, monkeypatch):
    run = train_local(shapes_cls, tmp_path, "atomic", **{"train.epochs": 1})
    before = (run / "checkpoints" / "last.pt").read_bytes()

    def torn_save(obj, fh, *a, **k):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError):
        launch.train(None, ["train.epochs=2"], resume=str(run))
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    assert checkpoint.load(run / "checkpoints" / "last.pt").epoch == 0
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_gradient_accumulation_matches_a_larger_batch(shapes_cls, tmp_path):
    big = train_local(shapes_cls, tmp_path, "big", **{"train.epochs": 1, "train.batch_size": 32})
    accum = train_local(shapes_cls, tmp_path, "accum", **{"train.epochs": 1, "train.batch_size": 16,
                                                           "train.grad_accum_steps": 2})
    for key, value in weights(big).items():
        torch.testing.assert_close(weights(accum)[key], value, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_and_clipping_run_on_cpu(shapes_cls, tmp_path):
    run = train_local(shapes_cls, tmp_path, "bf16", **{"train.epochs": 1, "train.amp": "bf16",
                                                        "train.grad_clip_norm": 1.0})
    assert math.isfinite(read_metrics(run)[0]["train/loss"])


def test_lr_schedule_warmup_then_cosine_and_step():
    cfg = SchedulerConfig(name="cosine", warmup_epochs=1, warmup_start_factor=0.1)
    f = [lr_factor(cfg, s / 10, epochs=5) for s in range(50)]
    assert f[0] == pytest.approx(0.1) and f[5] == pytest.approx(0.55) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] < 0.01
    step = SchedulerConfig(name="step", step_epochs=2, gamma=0.5)
    assert [lr_factor(step, s / 10, 6) for s in (0, 19, 20, 45)] == [1.0, 1.0, 0.5, 0.25]


def test_eval_command_writes_json(shapes_cls, tmp_path):
    run = train_local(shapes_cls, tmp_path, "ev", **{"train.epochs": 1})
    result = launch.evaluate(str(run), [])
    saved = json.loads((run / "eval.json").read_text())
    assert saved["top1"] == result["top1"] == read_metrics(run)[0]["val/top1"]
    assert saved["num_images"] == 60 and len(saved["confusion_matrix"]) == 4


def test_eval_cli_prints_metrics_and_names_bad_targets(shapes_cls, tmp_path):
    from conftest import run_cli

    run = train_local(shapes_cls, tmp_path, "evcli", **{"train.epochs": 1})
    proc = run_cli("eval", str(run), "-o", str(tmp_path / "out.json"))
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["top1"] == json.loads((tmp_path / "out.json").read_text())["top1"]
    proc = run_cli("eval", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "nowhere: no such run directory or checkpoint file" in proc.stderr
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    proc = run_cli("eval", str(tmp_path / "junk.pt"))
    assert proc.returncode == 2 and "junk.pt: not a readable visionkit checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # A pickle of something other than tensors: refused by the weights-only load, in one line.
    (tmp_path / "code.pt").write_bytes(pickle.dumps(collections.OrderedDict(x=print)))
    proc = run_cli("eval", str(tmp_path / "code.pt"))
    assert proc.returncode == 2 and "code.pt: not a readable visionkit checkpoint" in proc.stderr
    assert "weights-only load refused it" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_debug_local_runs_the_loop_here_and_raises_with_the_traceback(shapes_cls, tmp_path, capsys):
    """`--debug-local` whatever the config says: no Ray workers, no DataLoader processes, and a
    plugin author's error comes out as the exception itself (a debugger stops at it)."""
    from visionkit import cli
    from visionkit.errors import DataError

    args = cls_overrides(shapes_cls, tmp_path, "dbg", **{"train.epochs": 1, "ray.num_workers": 4, "train.loader_workers": 2})
    assert cli.main(["train", CONFIG, *args, "--debug-local"]) == 0
    out = capsys.readouterr().out
    assert "training in this process" in out and "finished 1 epoch(s)" in out
    saved = (tmp_path / "dbg" / "config.yaml").read_text()
    assert "num_workers: 0" in saved and "loader_workers: 0" in saved
    with pytest.raises(DataError):
        cli.main(["train", CONFIG, *cls_overrides(tmp_path / "missing", tmp_path, "dbg2"), "--debug-local"])


def test_a_newer_resume_file_wins_over_rays_older_snapshot(tmp_path, monkeypatch):
    """A Ray run to epoch 4, continued in-process (--debug-local) to 9, then --resume'd on Ray
    workers again: Ray still holds its epoch-4 snapshot of the same run, and must not win. And a
    restart after a worker was lost between rank 0's last.pt and Ray's commit of it: the run's
    own last.pt (and metrics.jsonl) are an epoch ahead of Ray's checkpoint; the later one wins,
    on every worker alike, or Ray's where a worker cannot read the run's file."""
    import ray.train

    from visionkit.fileio import atomic_torch_save
    from visionkit.train.context import STATE_FILE, RayWorker

    def state(epoch):
        return {"format": 2, "epoch": epoch, "model": {}, "classes": ["a"], "config": {"task": "x"}}

    snapshot = tmp_path / "ray_checkpoint"
    atomic_torch_save(state(4), snapshot / STATE_FILE)
    atomic_torch_save(state(9), tmp_path / "last.pt")
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(str(snapshot)))
    worker = object.__new__(RayWorker)
    worker._resume_from, worker._s3_endpoint = str(tmp_path / "last.pt"), None
    worker._run_state = str(tmp_path / "last.pt")
    assert worker.restored_state().epoch == 9
    atomic_torch_save(state(12), snapshot / STATE_FILE)  # a restart after a failure: Ray's is newer
    assert worker.restored_state().epoch == 12
    worker._resume_from = None
    assert worker.restored_state().epoch == 12

    # A fresh run (no --resume) restarted after a worker loss: last.pt is at 13, Ray's at 12.
    atomic_torch_save(state(13), tmp_path / "last.pt")
    assert worker.restored_state().epoch == 13
    monkeypatch.setattr(RayWorker, "all_gather", lambda self, obj: [obj, None])  # rank 1 cannot read it
    assert worker.restored_state().epoch == 12
    monkeypatch.undo()
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(str(snapshot)))
    (tmp_path / "last.pt").write_bytes(b"torn")  # unreadable: Ray's
    assert worker.restored_state().epoch == 12
    (tmp_path / "last.pt").unlink()  # the first epoch never ended before: Ray's
    assert worker.restored_state().epoch == 12
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)  # the first attempt of a fresh run
    assert worker.restored_state() is None
    atomic_torch_save(state(0), tmp_path / "last.pt")  # lost before Ray committed its first checkpoint
    assert worker.restored_state().epoch == 0


def test_a_user_mistake_on_a_worker_ends_the_run_instead_of_spending_restarts():
    """Ray Train's failure policy retries a worker's error up to ray.max_failures times but never
    a controller error: a diverged run (the same values diverge again) becomes one, a lost or
    crashed worker does not (tests/test_tune.py runs it: a diverging trial has one attempt)."""
    from ray.train import ControllerError

    from visionkit.train.callbacks import UserErrorsEndTheRun
    from visionkit.train.loop import TrainingDiverged

    callback = UserErrorsEndTheRun()
    callback.after_exception(None, {1: RuntimeError("worker crashed")})  # restarts as before
    cause = RuntimeError("wrapped by Ray")
    cause.__cause__ = TrainingDiverged("training loss is nan at epoch 1: lower train.optimizer.lr")
    with pytest.raises(ControllerError) as raised:
        callback.after_exception(None, {0: RuntimeError("collective aborted"), 1: cause})
    assert isinstance(raised.value.controller_failure, TrainingDiverged)
    assert str(raised.value.controller_failure).startswith("training loss is nan at epoch 1")
