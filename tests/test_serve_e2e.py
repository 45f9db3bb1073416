"""End to end: a run -> `visionkit export` -> `visionkit serve` on a free loopback port; real
images over HTTP get exactly what `visionkit predict` writes, for each task, and bad requests
get their 4xx. The server runs as tests/test_serve.py runs it: torch and Ray unimportable."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionkit import cli
from visionkit.data import synth
from visionkit.train import launch

from conftest import REPO, cls_overrides, run_cli
from servehelp import multipart, running_server

TASKS = ("classification", "detection", "segmentation")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return synth.scenes(tmp_path_factory.mktemp("serve_scenes") / "shapes", num_train=16, num_val=6, size=64, seed=4)


@pytest.fixture(scope="module")
def exported(shapes_cls, scenes, tmp_path_factory) -> dict[str, Path]:
    """One tiny run per task (1 epoch, in this process), exported: what a user would serve."""
    root = tmp_path_factory.mktemp("serve_runs")
    common = ["ray.num_workers=0", "train.progress=false", f"output.storage_path={root}", "train.epochs=1"]
    runs = {
        "classification": launch.train(str(REPO / "configs/classification/shapes.yaml"), cls_overrides(
            shapes_cls, root, "cls", **{"ray.num_workers": 0, "train.epochs": 1})),
        "detection": launch.train(str(REPO / "configs/detection/shapes.yaml"), common + [
            "output.name=det", f"data.root={scenes}", "data.train_transforms=[]", "model.min_size=64",
            "model.max_size=64", "train.batch_size=4"]),
        "segmentation": launch.train(str(REPO / "configs/segmentation/shapes.yaml"), common + [
            "output.name=seg", f"data.root={scenes}", "model.width=8", "model.blocks=[1,1,1]", "train.batch_size=4"]),
    }
    models = {}
    for task, run in runs.items():
        models[task] = root / f"{task}.onnx"
        assert cli.main(["export", str(run), "-o", str(models[task]), "--check-images", "2"]) == 0
    return models


def _images(task: str, shapes_cls: Path, scenes: Path) -> list[Path]:
    if task == "classification":
        return sorted((shapes_cls / "val").rglob("*.png"))[::15][:4]
    return sorted((scenes / "images" / "val").glob("*"))[:4]


def _png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "P"
        return np.asarray(img)


@pytest.mark.parametrize("task", TASKS)
def test_served_predictions_equal_visionkit_predict(task, exported, shapes_cls, scenes, tmp_path):
    images = _images(task, shapes_cls, scenes)
    out = tmp_path / "predict"
    # --batch-size 1: one image per graph run, as the server without micro-batching, so the
    # floats are the same bit for bit
    done = run_cli("predict", str(exported[task]), *map(str, images), "-o", str(out), "--batch-size", "1")
    assert done.returncode == 0, done.stderr
    written = json.loads((out / "predictions.json").read_text())

    with running_server(exported[task]) as server:
        body, ctype = multipart([("image", str(p), p.read_bytes(), "image/png") for p in images])
        status, answer, _ = server.call("POST", "/predict", body, {"Content-Type": ctype})
        assert status == 200, answer
        served = answer["predictions"]
        # The raw-body form gives the same result, under the name "image 0".
        status, raw, _ = server.call("POST", "/predict", images[0].read_bytes(), {"Content-Type": "image/png"})
        assert status == 200 and {**raw["predictions"][0], "file": str(images[0])} == served[0]
        # Each kind of bad request, against a real model.
        assert server.call("POST", "/predict", b"\x89PNG\r\n\x1a\nbroken", {"Content-Type": "image/png"})[0] == 400
        assert server.call("POST", "/predict", images[0].read_bytes(), {"Content-Type": "text/plain"})[0] == 415
        status, _, _ = server.call("POST", "/predict", b"\0" * (17 * 1024 * 1024), {"Content-Type": "image/png"})
        assert status == 413
        assert server.call("GET", "/metadata")[1]["metadata"]["task"] == task

    assert [r["file"] for r in served] == [str(p) for p in images]
    if task == "classification":
        assert served == written  # every field, every probability
    elif task == "segmentation":
        for got, want in zip(served, written):
            mask = _png_array(base64.b64decode(got.pop("mask_png")))
            with Image.open(out / want.pop("mask")) as img:
                assert np.array_equal(mask, np.asarray(img))
            assert got == want
    else:
        # predict writes COCO results (boxes rounded; image ids in images.json); the server
        # answers per image with the same boxes
        ids = {i["file_name"]: i["id"] for i in json.loads((out / "images.json").read_text())}
        assert sum(len(r["detections"]) for r in served) == len(written) > 0
        for result in served:
            mine = [{"image_id": ids[result["file"]], "category_id": d["category_id"],
                     "bbox": [round(v, 3) for v in d["bbox"]], "score": round(d["score"], 5), "class": d["class"]}
                    for d in result["detections"]]
            assert mine == [r for r in written if r["image_id"] == ids[result["file"]]]
