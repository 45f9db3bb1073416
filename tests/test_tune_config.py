"""In this process, without Ray: the tune: section and its space, train.early_stopping."""

import math
from pathlib import Path

import pytest
import yaml

from visionkit import checkpoint, cli
from visionkit.config import EarlyStoppingConfig
from visionkit.errors import ConfigError
from visionkit.train import launch
from visionkit.train.early_stopping import EarlyStopping
from visionkit.train.runlog import read_metrics
from visionkit.tune.space import parse_space, trial_config

from conftest import REPO, cls_overrides

CONFIG = str(REPO / "configs" / "classification" / "shapes.yaml")


def tune_config(tmp_path, root, space: dict, **tune) -> str:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({
        "task": "classification", "data": {"root": str(root), "image_size": 32}, "model": {"name": "mlp"},
        "train": {"epochs": 3}, "ray": {"num_workers": 1}, "output": {"storage_path": str(tmp_path / "runs")},
        "tune": {"space": space, "scheduler": "asha", **tune}}))
    return str(path)


@pytest.mark.parametrize("space, expected", [
    ({"train.optimizer.lrr": {"loguniform": [1e-4, 1e-2]}},
     "tune.space.train.optimizer.lrr: not a key of the classification config (did you mean 'train.optimizer.lr'?)"),
    ({"train.optimizer.lr": {"loguniform": [-1e-4, 1e-2]}},
     "tune.space.train.optimizer.lr.loguniform: bounds must be > 0 (it samples log(value)), got [-0.0001, 0.01]"),
    ({"model.hidden": {"choice": []}}, "tune.space.model.hidden.choice: empty; give at least one value"),
    ({"train.batch_size": {"choice": [16, 0]}},
     "tune.space.train.batch_size: the value 0 does not fit the config: train.batch_size: input should be greater "
     "than or equal to 1 (got 0 of type int)"),
    ({"train.optimizer.lr": {"loguniformm": [1e-4, 1e-2]}},
     "tune.space.train.optimizer.lr: unknown distribution 'loguniformm' (did you mean 'loguniform'?); "
     "allowed: choice, uniform, loguniform, randint, grid"),
    ({"train.epochs": {"choice": [2, 3]}},
     "tune.space.train.epochs: with scheduler asha every trial runs up to the same train.epochs (ASHA's max_t); "
     "search train.epochs with scheduler fifo"),
    ({"ray.num_workers": {"choice": [1, 2]}},
     "tune.space.ray.num_workers: ray.* cannot be searched: every trial gets the same workers and resources "
     "(set ray.* outside tune.space)"),
    # Both ends are whole numbers, but every sample would not be: refused, not failed in every trial.
    ({"train.batch_size": {"uniform": [8, 64]}},
     "tune.space.train.batch_size.uniform: samples fractional values (e.g. 36.25) and train.batch_size takes whole "
     "numbers: use {randint: [8, 65]} (high excluded)"),
    ({"train.early_stopping.patiance": {"choice": [2, 3]}},
     "tune.space.train.early_stopping.patiance: not a key of the classification config "
     "(did you mean 'train.early_stopping.patience'?)"),
    ({"train.early_stopping.min_delta": {"uniform": [0, 0.1]}},
     "tune.space.train.early_stopping.min_delta: switches on train.early_stopping (null in the config), which then "
     "lacks a key: train.early_stopping.patience: required key is missing; set it in the config"),
])
def test_a_bad_space_is_one_line_before_anything_starts(shapes_cls, tmp_path, capsys, space, expected):
    config = tune_config(tmp_path, shapes_cls, space)
    assert cli.main(["tune", config]) == 2
    err = capsys.readouterr().err
    assert err == f"visionkit: error: {config}: {expected}\n"
    assert not (tmp_path / "runs").exists()  # no tune directory, no Ray: refused while checking


@pytest.mark.parametrize("tune, overrides, expected", [
    ({"num_sample": 4}, [], "tune.num_sample: unknown key (did you mean 'num_samples'?); allowed: space, num_samples, "
                            "max_concurrent_trials, seed, scheduler, search"),
    ({"scheduler": {"name": "asha", "grace_perod": 1}}, [],
     "tune.scheduler.grace_perod: unknown key (did you mean 'grace_period'?); allowed: name, grace_period, "
     "reduction_factor"),
    ({}, ["output.name=a/b"],
     "output.name: 'a/b' must be one folder name (put parent folders in output.storage_path)"),
])
def test_a_mistake_in_the_tune_section_or_the_output_is_one_line_naming_the_file(shapes_cls, tmp_path, capsys, tune,
                                                                                 overrides, expected):
    config = tune_config(tmp_path, shapes_cls, {"train.optimizer.lr": {"loguniform": [1e-4, 1e-2]}}, **tune)
    assert cli.main(["tune", config, *overrides]) == 2
    source = config + (" (with command-line overrides)" if overrides else "")
    assert capsys.readouterr().err == f"visionkit: error: {source}: {expected}\n"
    assert not (tmp_path / "runs").exists()


def test_optuna_without_the_package_and_a_grace_period_past_the_epochs_are_one_line(shapes_cls, tmp_path, capsys,
                                                                                    monkeypatch):
    import sys

    space = {"train.optimizer.lr": {"loguniform": [1e-4, 1e-2]}}
    config = tune_config(tmp_path, shapes_cls, space, search="optuna")
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError, as without the package
    assert cli.main(["tune", config]) == 2
    assert capsys.readouterr().err == (
        f"visionkit: error: {config}: tune.search: optuna needs the optuna package, which is not installed: "
        "pip install 'visionkit[tune-optuna]' (or set tune.search: random)\n")
    monkeypatch.undo()
    config = tune_config(tmp_path, shapes_cls, space, scheduler={"name": "asha", "grace_period": 3})
    assert cli.main(["tune", config]) == 2
    assert "tune.scheduler.grace_period (3) must be < train.epochs (3)" in capsys.readouterr().err


def test_an_unreachable_tracking_server_is_one_line_before_the_search_starts(shapes_cls, tmp_path, capsys):
    """Checked once by the search's driver, not found by every trial after Ray started."""
    pytest.importorskip("mlflow")
    import socket

    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tune_config(tmp_path, shapes_cls, {"train.optimizer.lr": {"loguniform": [1e-4, 1e-2]}})
    assert cli.main(["tune", config, f"tracking.mlflow.uri=http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"tracking.mlflow.uri http://127.0.0.1:{port}: no MLflow tracking server" in err
    assert not (tmp_path / "runs").exists()


def test_a_space_becomes_ray_tune_domains_and_trial_configs():
    from ray.tune.search.sample import Categorical, Float, Integer

    base = {"task": "classification", "train": {"optimizer": {"lr": 0.1, "weight_decay": 0.0}, "seed": 0},
            "model": {"hidden": [256, 128]}}
    seen = []
    params = parse_space({
        # As PyYAML reads the example: 1e-4 without a dot is a string in YAML 1.1.
        "train.optimizer.lr": {"loguniform": ["1e-4", "1e-2"]},
        "train.optimizer.weight_decay": {"uniform": [0, 0.1]},
        "train.seed": {"randint": [0, 3]},
        "model.hidden": {"choice": [[64], [128, 64]]},
    }, base, lambda raw: seen.append(raw))
    lr, wd, seed, hidden = (p.domain() for p in params)
    assert isinstance(lr, Float) and (lr.lower, lr.upper) == (1e-4, 1e-2) and type(lr.sampler).__name__ == "_LogUniform"
    assert isinstance(wd, Float) and (wd.lower, wd.upper) == (0, 0.1)
    assert isinstance(seed, Integer) and (seed.lower, seed.upper) == (0, 3)
    assert isinstance(hidden, Categorical) and hidden.categories == [[64], [128, 64]]
    # Every end of every range, a fractional value inside each float range (the geometric middle
    # for loguniform) and every choice was validated in a whole config.
    assert [s["train"]["optimizer"]["lr"] for s in seen[:3]] == [1e-4, 1e-2, pytest.approx(1e-3)]
    assert [s["train"]["optimizer"]["weight_decay"] for s in seen[3:6]] == [0, 0.1, 0.05]
    assert [s["train"]["seed"] for s in seen if s["train"]["seed"] != 0] == [2]  # randint's high is excluded
    assert len(seen) == 3 + 3 + 2 + 2
    trial = trial_config(base, {"train.optimizer.lr": 0.003, "model.hidden": [64]})
    assert trial["train"]["optimizer"] == {"lr": 0.003, "weight_decay": 0.0} and trial["model"]["hidden"] == [64]
    assert base["train"]["optimizer"]["lr"] == 0.1  # the base is not touched
    with pytest.raises(ConfigError, match="grid is not supported by search optuna"):
        parse_space({"train.seed": {"grid": [0, 1]}}, base, lambda raw: None, optuna=True)


def test_a_key_of_a_section_left_null_is_searched_with_that_sections_defaults(shapes_cls, tmp_path):
    """train.early_stopping and train.ema are null by default: searching one of their keys
    switches the section on in each trial, with the section's defaults for its other keys."""
    from visionkit.config import Config, EMAConfig, read_yaml, validate_section
    from visionkit.tune.search import Search

    space = {"train.early_stopping.patience": {"choice": [2, 4]}, "train.ema.decay": {"uniform": [0.9, 0.99]}}
    config = tune_config(tmp_path, shapes_cls, space)
    search = Search(read_yaml(Path(config)), config, tmp_path)
    assert [p.key for p in search.params] == list(space)
    assert search.base["train"]["early_stopping"] is None and search.base["train"]["ema"] is None
    trial = validate_section(Config, trial_config(search.base, {"train.early_stopping.patience": 4,
                                                                "train.ema.decay": 0.95}), "trial")
    assert trial.train.early_stopping == EarlyStoppingConfig(patience=4)
    assert trial.train.ema == EMAConfig(decay=0.95)
    assert search.base["train"]["early_stopping"] is None  # each trial's own copy


def test_early_stopping_counts_evaluations_without_an_improvement_larger_than_min_delta():
    stopper = EarlyStopping.create(EarlyStoppingConfig(patience=2, min_delta=0.01), higher_is_better=True)
    assert [stopper.update(v) for v in (0.5, 0.505, 0.52, 0.525, 0.529)] == [False, False, False, False, True]
    assert stopper.state() == {"best": 0.52, "bad": 2}
    lower = EarlyStopping.create(EarlyStoppingConfig(patience=1), higher_is_better=False, saved=None, best_value=2.0)
    assert not lower.update(1.5) and lower.update(1.5)  # not strictly lower: no improvement
    nan = EarlyStopping.create(EarlyStoppingConfig(patience=2), higher_is_better=True)
    assert [nan.update(v) for v in (math.nan, 0.1, math.nan, math.nan)] == [False, False, False, True]
    resumed = EarlyStopping.create(EarlyStoppingConfig(patience=3), True, saved={"best": 0.7, "bad": 2})
    assert resumed.update(0.69)  # the third evaluation in a row without an improvement


def test_early_stopping_stops_a_stalled_run_at_the_same_epoch_with_or_without_a_resume(shapes_cls, tmp_path, one_thread):
    """The MLP's top-1 stalls on these 60 images; patience 3. The interrupted run ends one epoch
    before the stop (its counter at 2), then resumes with the full epoch budget: it must stop at
    the same epoch, with the same rows. A counter restarted at 0 would run 2 more epochs."""
    extra = {"ray.num_workers": 0, "train.epochs": 12, "train.early_stopping.patience": 3,
             "train.early_stopping.min_delta": 0.01}
    straight = launch.train(CONFIG, cls_overrides(shapes_cls, tmp_path, "straight", **extra))
    rows = read_metrics(straight)
    stop = len(rows)
    assert stop < 12, "the metric did not stall: no early stop"
    state = checkpoint.load(straight / "checkpoints" / "last.pt").early_stopping
    assert state["bad"] == 3 and stop - 1 - 3 >= 0
    # The stop is the rule's: the 3 last evaluations did not beat the reference by 0.01.
    assert all(r["val/top1"] <= state["best"] + 0.01 for r in rows[-3:])

    cut = launch.train(CONFIG, cls_overrides(shapes_cls, tmp_path, "cut", **{**extra, "train.epochs": stop - 1}))
    assert checkpoint.load(cut / "checkpoints" / "last.pt").early_stopping["bad"] == 2
    launch.train(None, ["train.epochs=12"], resume=str(cut))
    resumed = read_metrics(cut)
    assert [r["epoch"] for r in resumed] == list(range(stop))
    assert [(r["train/loss"], r["val/top1"]) for r in resumed] == [(r["train/loss"], r["val/top1"]) for r in rows]

    # A stopped run resumed as it is trains nothing more.
    launch.train(None, [], resume=str(straight))
    assert len(read_metrics(straight)) == stop
