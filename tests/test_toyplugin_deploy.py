"""A third-party task end to end, deploy half included: tests/fixtures/toyplugin (pip-installed,
as a user installs a plugin) is trained, exported, predicted with its own option, evaluated as
ONNX and served with its own query option, with nothing about it in visionkit's core.
Predict and serve run where torch cannot be imported, as in a deployment."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from PIL import Image

from visionkit import cli
from visionkit.train import launch

from conftest import REPO
from servehelp import running_server

#: `visionkit predict` in a process where torch, torchvision and Ray cannot be imported
PREDICT_WITHOUT_TORCH = r'''
import importlib.abc, json, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "ray", "albumentations"):
            raise ImportError(f"{name} is blocked: the runtime must not import it")

sys.meta_path.insert(0, NoTorch())
from visionkit import cli
sys.exit(cli.main(["predict", *sys.argv[1:]]))
'''


def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PREDICT_WITHOUT_TORCH, *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def _decimals(value: float) -> int:
    text = repr(value)
    return len(text.split(".")[1]) if "." in text else 0


def test_toy_task_trains_exports_predicts_evaluates_and_serves(toy_plugin, tmp_path, monkeypatch, capsys):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({
        "task": "toy", "train": {"epochs": 6, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.01},
                                 "progress": False},
        "ray": {"num_workers": 0}, "output": {"storage_path": str(tmp_path), "name": "toy"}}))
    run = launch.train(str(config), [])

    # export: the plugin's exporter, checked against PyTorch like a built-in task's
    model = tmp_path / "toy.onnx"
    assert cli.main(["export", str(run), "-o", str(model), "--check-images", "16"]) == 0
    report = json.loads(model.with_suffix(".report.json").read_text())
    assert report["ok"] and report["checks"]["outputs"]["max_abs_score_diff"] <= 1e-5
    assert report["checks"]["preprocessing"]["max_abs_diff_levels"] == 0

    # the validation vectors as the 1 x 8 grey images the exported model takes
    from vk_toy.plugin import VectorSet

    val = VectorSet(100, 8, seed=1)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        Image.fromarray(val.pixels[i].numpy()[None, :], mode="L").save(images / f"v{i}.png")

    # predict, with the task's own option, without torch
    done = _predict(str(model), str(images), "-o", str(tmp_path / "out"), "--decimals", "1", "--draw")
    assert done.returncode == 0, done.stderr
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [r["class"] for r in records] == [val.classes[r["index"]] for r in records]
    assert all(_decimals(r["score"]) <= 1 for r in records) and len(list((tmp_path / "out" / "drawn").iterdir())) == 6
    hits = sum(r["index"] == int(val.y[i]) for i, r in enumerate(records))
    assert hits >= 4, records
    # its options are listed by --help; an option it does not declare is refused in one line
    shown = _predict(str(model), "--help")
    assert shown.returncode == 0 and "--decimals INT" in shown.stdout and "digits of the score" in shown.stdout
    refused = _predict(str(model), str(images), "-o", str(tmp_path / "no"), "--top-k", "2")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "--top-k: a toy model takes no such option (its options: --decimals" in refused.stderr
    bad = _predict(str(model), str(images), "--decimals", "9")
    assert bad.returncode == 2 and "--decimals 9: expected 0 to 6" in bad.stderr and bad.stderr.count("\n") == 1

    # eval on the ONNX model: the plugin's own metric, equal to the checkpoint's
    checkpoint = launch.evaluate(str(run), [])
    assert cli.main(["eval", str(model)]) == 0
    onnx_result = json.loads(model.with_suffix(".eval.json").read_text())
    assert onnx_result["primary"] == "accuracy" and onnx_result["seen"] == 100
    assert abs(onnx_result["accuracy"] - checkpoint["accuracy"]) <= 0.01, (onnx_result, checkpoint)

    # serve (torch, Ray... unimportable), with the task's own query option
    png = (images / "v0.png").read_bytes()
    with running_server(model) as server:
        status, options, _ = server.call("GET", "/options")
        assert status == 200 and options["task"] == "toy"
        assert [(o["name"], o["type"], o["min"], o["max"], o["default"]) for o in options["options"]] == [
            ("decimals", "int", 0, 6, 3)]
        status, body, _ = server.call("POST", "/predict?decimals=2", png, {"Content-Type": "image/png"})
        assert status == 200, body
        [served] = body["predictions"]
        assert served["class"] == records[0]["class"] and _decimals(served["score"]) <= 2
        assert abs(served["score"] - records[0]["score"]) <= 0.051
        status, body, _ = server.call("POST", "/predict?top_k=2", png, {"Content-Type": "image/png"})
        assert status == 400 and "\n" not in body["error"], body
        assert "unknown query parameter 'top_k'" in body["error"] and "takes decimals" in body["error"]
        status, body, _ = server.call("POST", "/predict?decimals=9", png, {"Content-Type": "image/png"})
        assert status == 400 and body["error"] == "decimals='9': expected 0 to 6"

    # a plugin that gives no exporter is told so in one line, not with a traceback
    from vk_toy.plugin import ToyPlugin

    monkeypatch.setattr(ToyPlugin, "exporter", lambda self: None)
    capsys.readouterr()
    assert cli.main(["export", str(run), "-o", str(tmp_path / "none.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "task 'toy' does not support export (its plugin gives no exporter)" in err and "\n" not in err, err
