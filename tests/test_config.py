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
