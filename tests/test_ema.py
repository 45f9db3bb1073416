"""train.ema, in this process: the average and its warmup, an exact resume, and the EMA weights
being the ones that are evaluated, picked for best.pt, evaluated again by eval and exported."""

import shutil

import pytest
import torch

from visionkit import checkpoint
from visionkit.config import EMAConfig, load_config
from visionkit.errors import ConfigError
from visionkit.train import launch
from visionkit.train.ema import EMA, decay_at
from visionkit.train.runlog import read_metrics

from conftest import REPO, cls_overrides, crashing_after_epoch

CONFIG = str(REPO / "configs" / "classification" / "shapes.yaml")
FLIPS = "[{name: HorizontalFlip, p: 0.5}, {name: VerticalFlip, p: 0.5}]"


def test_the_average_covers_parameters_and_float_buffers_and_warms_up(tmp_path):
    assert [decay_at(0.9, 4, t) for t in (0, 4, 100)] == [0.0, 0.9, 0.9]
    # The window 1 / (1 - decay) grows linearly from 1 to 10 steps over the warmup.
    assert [1 / (1 - decay_at(0.9, 4, t)) for t in (1, 2, 3)] == pytest.approx([3.25, 5.5, 7.75])
    assert decay_at(0.9, 0, 0) == 0.9

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMA.create(EMAConfig(decay=0.9, warmup_steps=4), model)
    expected = None
    for t in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 3))  # BatchNorm's running statistics and num_batches_tracked move
        ema.update(model)
        now = {k: v.clone() for k, v in model.state_dict().items()}
        d = decay_at(0.9, 4, t)
        expected = now if expected is None else {
            k: v if not v.is_floating_point() else d * expected[k] + (1 - d) * v for k, v in now.items()}
    got = ema.module.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-6, msg=key)
    assert int(got["1.num_batches_tracked"]) == 6 and ema.updates == 6
    assert ema.state() == {"updates": 6, "decay": 0.9, "warmup_steps": 4}

    config = tmp_path / "c.yaml"
    config.write_text("task: classification\ntrain: {ema: {decay: 1.5}}\n")
    with pytest.raises(ConfigError, match=r"^.*train\.ema\.decay: input should be less than 1 \(got 1\.5"):
        load_config(config)
    with pytest.raises(ConfigError, match=r"train\.ema\.warmup: unknown key \(did you mean 'warmup_steps'\?\)"):
        load_config(config, ["train.ema={warmup: 3}"])


def test_a_resume_after_a_crash_gives_the_same_ema_weights_bit_for_bit(shapes_cls, tmp_path, one_thread, capsys,
                                                                       monkeypatch):
    """As the demo trains (ResNet-18 and its BatchNorm, the flips, AdamW with a warmup and a cosine
    LR), killed after epoch 2's checkpoint, inside the EMA warmup (10 steps an epoch, 25 of
    warmup), and resumed: the average (weights and BatchNorm statistics), the trained weights and
    the update count are those of a run never interrupted, bit for bit. A resume that restarted
    the average or its update count, or took the average for the trained weights, would end
    elsewhere. Then what the run's EMA weights are used for: the metric logged at the best epoch
    is theirs, and eval and export read them."""
    extra = {"ray.num_workers": 0, "model.name": "resnet18", "data.train_transforms": FLIPS,
             "train.optimizer.name": "adamw", "train.optimizer.weight_decay": 0.05, "train.scheduler.name": "cosine",
             "train.scheduler.warmup_epochs": 1, "train.ema.decay": 0.9, "train.ema.warmup_steps": 25}
    straight = launch.train(CONFIG, cls_overrides(shapes_cls, tmp_path, "straight", **extra))
    assert "evaluating EMA weights" in capsys.readouterr().out

    with crashing_after_epoch(monkeypatch, 1):  # after epoch 2's checkpoint
        launch.train(CONFIG, cls_overrides(shapes_cls, tmp_path, "crashed", **extra))
    crashed = tmp_path / "crashed"
    assert checkpoint.load(crashed / "checkpoints" / "last.pt").ema["updates"] == 20
    no_ema = tmp_path / "no_ema"
    shutil.copytree(crashed, no_ema)
    launch.train(None, [], resume=str(crashed))

    a = checkpoint.load(straight / "checkpoints" / "last.pt")
    b = checkpoint.load(crashed / "checkpoints" / "last.pt")
    assert a.weights == b.weights == "ema" and a.ema == b.ema == {"updates": 30, "decay": 0.9, "warmup_steps": 25}
    for name in ("model", "trained_model"):
        for key, value in getattr(a, name).items():
            assert torch.equal(getattr(b, name)[key], value), f"{name}.{key}"
    statistics = [k for k in a.model if k.endswith(("running_mean", "running_var"))]
    assert len(statistics) == 2 * 20  # ResNet-18's BatchNorm layers: the average's own statistics
    assert all(not torch.equal(a.model[k], a.trained_model[k]) for k in statistics), "a copy of the trained statistics"
    assert all(int(a.model[k]) == 30 for k in a.model if k.endswith("num_batches_tracked"))
    rows, ref = read_metrics(crashed), read_metrics(straight)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [(r["train/loss"], r["lr"], r["val/top1"]) for r in rows] == [(r["train/loss"], r["lr"], r["val/top1"])
                                                                         for r in ref]
    assert len({r["lr"] for r in rows}) == 3  # the LR moved at every epoch

    # EMA turned off at resume: training continues from the trained weights, not the average.
    launch.train(None, ["train.ema=null"], resume=str(no_ema))
    c = checkpoint.load(no_ema / "checkpoints" / "last.pt")
    assert c.weights == "trained" and c.trained_model is None and c.ema is None
    assert all(torch.equal(c.model[k], v) for k, v in a.trained_model.items())

    # best.pt holds the average that was evaluated: eval reproduces the logged metric.
    best = checkpoint.load(straight / "checkpoints" / "best.pt")
    row = read_metrics(straight)[best.epoch]
    result = launch.evaluate(str(straight), [])
    assert result["weights"] == "ema" and result["epoch"] == best.epoch
    assert result["top1"] == row["val/top1"] == best.best["value"]
    # ... and not the metric of the trained weights of that epoch.
    trained = tmp_path / "trained.pt"
    checkpoint.save(checkpoint.Checkpoint(**{**vars(best), "model": best.trained_model, "weights": "trained",
                                             "trained_model": None, "ema": None}), trained)
    raw = launch.evaluate(str(trained), [])
    assert raw["weights"] == "trained" and raw["confusion_matrix"] != result["confusion_matrix"]

    from visionkit.export.exporter import export
    from visionkit.export.run import load_run
    from visionkit.runtime import Model

    exported = load_run(str(straight), []).model.state_dict()
    assert all(torch.equal(exported[k], v) for k, v in best.model.items())
    # export says which weights it exports, in its log and in the model's metadata; so does the report.
    capsys.readouterr()
    export(str(straight), output=str(tmp_path / "ema.onnx"), check_images=2)
    assert f" (epoch {best.epoch + 1}) with its EMA weights (decay 0.9, warmup 25 steps), opset 17" in capsys.readouterr().out
    source = Model.load(tmp_path / "ema.onnx", providers=["CPUExecutionProvider"]).metadata.source
    assert source["weights"] == "ema" and source["ema"] == best.ema
    export(str(trained), output=str(tmp_path / "trained.onnx"), check_images=2)
    assert " with its trained weights, opset 17" in capsys.readouterr().out
    assert Model.load(tmp_path / "trained.onnx", providers=["CPUExecutionProvider"]).metadata.source["weights"] == "trained"
    assert "<dt>weights</dt><dd>EMA weights (decay 0.9, warmup 25 steps): evaluated every epoch" in (
        straight / "report.html").read_text()


def test_ema_turned_on_at_resume_starts_from_the_trained_weights(shapes_cls, tmp_path, one_thread):
    """A checkpoint written without EMA (or by an older visionkit) resumes with it."""
    run = launch.train(CONFIG, cls_overrides(shapes_cls, tmp_path, "late", **{"ray.num_workers": 0, "train.epochs": 1}))
    assert checkpoint.load(run / "checkpoints" / "last.pt").weights == "trained"
    assert "EMA weights" not in (run / "report.html").read_text()
    launch.train(None, ["train.epochs=2", "train.ema={decay: 0.99, warmup_steps: 0}"], resume=str(run))
    ckpt = checkpoint.load(run / "checkpoints" / "last.pt")
    assert ckpt.weights == "ema" and ckpt.ema["updates"] == 10
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # tensors and plain containers only
    assert set(state["model"]) == set(state["trained_model"])
