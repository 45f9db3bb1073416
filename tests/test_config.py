"""Config loading: overrides, and errors that name the file, the key and what was expected."""

from pathlib import Path

import pytest
import yaml

from visionkit.config import load_config, task_configs
from visionkit.errors import ConfigError, PluginError
from visionkit.registry import get_plugin

from conftest import REPO, run_cli

DEMO = REPO / "configs" / "classification" / "shapes.yaml"


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_overrides_win_and_are_typed():
    cfg, raw = load_config(DEMO, ["train.epochs=3", "train.optimizer.lr=0.01", "train.amp=bf16", "model.name=mlp"])
    assert (cfg.train.epochs, cfg.train.optimizer.lr, cfg.train.amp) == (3, 0.01, "bf16")
    assert raw["model"]["name"] == "mlp"


def test_unknown_core_key_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, {"task": "classification", "train": {"epoch": 3}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "train.epoch" in msg and "did you mean 'epochs'" in msg


def test_unknown_plugin_key_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, {"task": "classification", "data": {"rot": "x"}})
    cfg, _ = load_config(path)
    with pytest.raises(ConfigError) as err:
        task_configs(cfg, get_plugin("classification"), str(path))
    msg = str(err.value)
    assert str(path) in msg and "data.rot" in msg and "did you mean 'root'" in msg


def test_wrong_type_says_expected_and_got(tmp_path):
    path = write(tmp_path, {"task": "classification", "train": {"batch_size": "lots"}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "train.batch_size" in msg and "integer" in msg and "'lots'" in msg and "str" in msg


def test_bad_override_is_attributed_to_the_command_line():
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, ["train.optimizer.name=rmsprop"])
    assert "command-line overrides" in str(err.value) and "train.optimizer.name" in str(err.value)
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(DEMO, ["train.epochs"])


def test_unknown_task_lists_available_ones():
    with pytest.raises(PluginError) as err:
        get_plugin("clasification")
    assert "did you mean 'classification'" in str(err.value) and "available tasks:" in str(err.value)


def test_cli_config_errors_are_one_line_without_traceback(tmp_path):
    for data, expect in [
        ({"task": "clasification"}, "did you mean 'classification'"),
        ({"task": "classification", "data": {"root": str(tmp_path / "nope")}, "train": {"epochs": 0}}, "train.epochs"),
        ({"task": "classification", "data": {"root": str(tmp_path / "nope")}}, "data folder not found"),
    ]:
        path = write(tmp_path, data)
        proc = run_cli("train", str(path))
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and expect in lines[0], proc.stderr
    proc = run_cli("train", str(tmp_path / "missing.yaml"))
    assert proc.returncode != 0 and "missing.yaml: config file not found" in proc.stderr


def test_resolved_config_saved_in_run_dir(tmp_path, shapes_cls):
    from conftest import cls_overrides

    proc = run_cli("train", str(DEMO), *cls_overrides(shapes_cls, tmp_path, "saved", **{"ray.num_workers": 0, "train.epochs": 1}))
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((tmp_path / "saved" / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1 and saved["model"]["name"] == "mlp"
    assert saved["data"]["root"] == str(shapes_cls)  # absolute: workers may run elsewhere
    assert saved["data"]["on_corrupt"] == "fail"  # defaults are spelled out


def test_unreadable_or_misfit_settings_are_one_line_config_errors(tmp_path, shapes_cls):
    from conftest import cls_overrides
    from visionkit.train import launch

    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00task: x")
    with pytest.raises(ConfigError, match="binary.yaml: cannot read the config file"):
        load_config(binary, [])
    for overrides, expect in [
        ({"ray.resources_per_worker": "{CPU: 1, GPU: 1}"}, "ray.use_gpu: true or drop the GPU entry"),
        ({"ray.resources_per_worker": "{CPU: -1}"}, "amounts must be >= 0"),
        ({"output.name": "a/b"}, "output.name: 'a/b' must be one folder name"),
    ]:
        base = cls_overrides(shapes_cls, tmp_path, "x", **{"ray.num_workers": 0})
        with pytest.raises(ConfigError, match=expect.replace("(", r"\(").replace(".", r"\.")):
            launch.train(str(DEMO), [o for o in base if o.split("=")[0] not in overrides] +
                         [f"{k}={v}" for k, v in overrides.items()])


def test_a_run_that_stopped_before_its_first_checkpoint_can_simply_run_again(tmp_path, shapes_cls):
    """A wrong address or a full cluster leaves config.yaml and nothing else: the same command
    (same output.name, as a RayJob manifest has) must not dead-end on 'run directory exists'."""
    from conftest import cls_overrides
    from visionkit.errors import UserError
    from visionkit.train import launch
    from visionkit.train.runlog import read_metrics

    overrides = cls_overrides(shapes_cls, tmp_path, "again", **{"ray.num_workers": 0, "train.epochs": 1})
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "config.yaml").write_text("task: classification\n")  # the failed attempt's
    run = launch.train(str(DEMO), overrides)
    assert [r["epoch"] for r in read_metrics(run)] == [0]
    with pytest.raises(UserError, match="run directory exists"):  # now it has a checkpoint to keep
        launch.train(str(DEMO), overrides)
    # Evaluating a checkpoint outside a run folder writes beside it, not two levels up.
    loose = tmp_path / "loose" / "best.pt"
    loose.parent.mkdir()
    loose.write_bytes((run / "checkpoints" / "best.pt").read_bytes())
    launch.evaluate(str(loose), [])
    assert (tmp_path / "loose" / "best.eval.json").is_file() and not (tmp_path / "eval.json").exists()
