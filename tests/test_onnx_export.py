"""Train (small) -> export -> parity report -> predict -> eval on the .onnx, for every task.

One tiny run per task is trained in this process (``ray.num_workers: 0``) and exported once;
the tests then read the files. The predictions run in a subprocess where importing torch is
impossible, which is what a deployment gets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from visionkit import cli
from visionkit.data import synth
from visionkit.errors import UserError
from visionkit.export.precision import to_fp16
from visionkit.fileio import torch_load
from visionkit.runtime import Model
from visionkit.train import launch

from conftest import REPO, cls_overrides

TASKS = ("classification", "detection", "segmentation")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return synth.scenes(tmp_path_factory.mktemp("onnx_scenes") / "shapes", num_train=24, num_val=8, size=64, seed=2)


def _config(task: str) -> str:
    return str(REPO / "configs" / task / "shapes.yaml")


def _common(root: Path, name: str) -> list[str]:
    return ["ray.num_workers=0", "train.progress=false", f"output.storage_path={root}", f"output.name={name}"]


@pytest.fixture(scope="module")
def runs(shapes_cls, scenes, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx_runs")
    return {
        "classification": launch.train(_config("classification"), cls_overrides(shapes_cls, root, "cls", **{
            "ray.num_workers": 0, "model.name": "resnet18", "train.epochs": 1})),
        "detection": launch.train(_config("detection"), _common(root, "det") + [
            f"data.root={scenes}", "data.train_transforms=[]", "model.min_size=64", "model.max_size=64",
            "train.epochs=1", "train.batch_size=4"]),
        "segmentation": launch.train(_config("segmentation"), _common(root, "seg") + [
            f"data.root={scenes}", "model.width=8", "model.blocks=[1,1,1]", "train.epochs=1", "train.batch_size=4"]),
    }


@pytest.fixture(scope="module")
def models(runs, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx_models")
    paths = {}
    for task, run in runs.items():
        paths[task] = out / f"{task}.onnx"
        assert cli.main(["export", str(run), "-o", str(paths[task]), "--check-images", "8"]) == 0
    return paths


def _report(model: Path) -> dict:
    return json.loads(model.with_suffix(".report.json").read_text())


@pytest.mark.parametrize("task", TASKS)
def test_export_is_checked_and_described(task, models, runs):
    report = _report(models[task])
    assert report["ok"] is True
    checks = report["checks"]
    assert checks["onnx_checker"]["ok"]
    # The runtime's numpy pre-processing is the training pipeline, value for value.
    assert checks["preprocessing"]["ok"] and checks["preprocessing"]["max_abs_diff_levels"] < 0.01
    assert checks["outputs"]["ok"] and checks["outputs"]["images"] == 8
    props = {p.key: json.loads(p.value) for p in onnx.load(str(models[task])).metadata_props}
    assert props["visionkit.task"] == task
    assert props["visionkit.classes"] == torch_load(runs[task] / "checkpoints" / "best.pt")["classes"]
    assert props["visionkit.version"] and props["visionkit.opset"] == 17
    assert props["visionkit.source"]["run_dir"] == str(runs[task])
    assert props["visionkit.normalization"]["in_graph"] is True and len(props["visionkit.normalization"]["mean"]) == 3
    assert props["visionkit.data"]["root"]
    if task == "classification":
        assert props["visionkit.input_size"] == [32, 32] and checks["outputs"]["max_abs_prob_diff"] <= 1e-4
    if task == "detection":
        assert checks["outputs"]["torch_detections"] > 0, "an untrained FCOS still proposes boxes"
        assert checks["outputs"]["matched"] >= checks["outputs"]["torch_detections"] - checks["outputs"]["borderline"]
        assert props["visionkit.category_ids"] == [1, 2, 3, 4]
    if task == "segmentation":
        assert checks["outputs"]["pixel_agreement"] >= 0.999


def _op_types(graph) -> set[str]:
    """Node types, subgraphs (If/Loop bodies) included."""
    found = set()
    for node in graph.node:
        found.add(node.op_type)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found |= _op_types(sub)
    return found


def test_what_is_in_the_graphs(models):
    ops = {task: _op_types(onnx.load(str(path)).graph) for task, path in models.items()}
    assert "Softmax" in ops["classification"]
    assert {"NonMaxSuppression", "TopK"} <= ops["detection"]  # NMS inside the graph
    assert "ArgMax" in ops["segmentation"]
    outputs = {task: [o.name for o in onnx.load(str(path)).graph.output] for task, path in models.items()}
    assert outputs == {"classification": ["probabilities"],
                       "detection": ["boxes", "scores", "labels", "num_detections"],
                       "segmentation": ["class_map"]}


def test_dynamic_batch_and_image_size(models):
    rng = np.random.default_rng(0)
    cls = Model.load(models["classification"])
    probs = cls.run(rng.random((3, 3, 32, 32), dtype=np.float32))["probabilities"]
    assert probs.shape == (3, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    det = Model.load(models["detection"])
    for n, h, w in ((1, 64, 64), (3, 64, 64), (2, 96, 80)):
        out = det.run(rng.random((n, 3, h, w), dtype=np.float32))
        assert out["boxes"].shape == (n, 100, 4) and out["num_detections"].shape == (n,)
        counts = out["num_detections"]
        assert all((out["labels"][i, :c] >= 0).all() and (out["labels"][i, c:] == -1).all() for i, c in enumerate(counts))
        assert (out["boxes"][..., 2] <= w + 1e-3).all() and (out["boxes"][..., 3] <= h + 1e-3).all()
    seg = Model.load(models["segmentation"])
    assert seg.run(rng.random((2, 3, 48, 80), dtype=np.float32))["class_map"].shape == (2, 48, 80)


def test_a_batch_detects_what_each_image_alone_does(models, scenes):
    """NMS runs per (image, class): boxes of one image never suppress another's."""
    det = Model.load(models["detection"])
    files = sorted((scenes / "images" / "val").glob("*.png"))[:6]
    batch = np.stack([p.array for p in det.preprocess(files)])
    together = det.run(batch)
    assert together["num_detections"].sum() > 0
    for i in range(len(files)):
        alone = det.run(batch[i:i + 1])
        n = int(alone["num_detections"][0])
        assert together["num_detections"][i] == n
        assert np.array_equal(together["labels"][i, :n], alone["labels"][0, :n])
        assert np.allclose(together["boxes"][i, :n], alone["boxes"][0, :n], atol=1e-3)
        assert np.allclose(together["scores"][i, :n], alone["scores"][0, :n], atol=1e-5)


TORCH_FREE = r'''
import importlib.abc, json, sys

attempts = []

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "ray", "albumentations"):
            attempts.append(name)
            raise ImportError(f"{name} is blocked: the runtime must not import it")
        return None

sys.meta_path.insert(0, NoTorch())
from visionkit import cli

jobs = json.loads(sys.argv[1])
codes = [cli.main(["predict", *job]) for job in jobs]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "ray", "albumentations"))
print(json.dumps({"codes": codes, "attempts": attempts, "loaded": loaded}))
'''


@pytest.fixture(scope="module")
def predictions(models, shapes_cls, scenes, tmp_path_factory) -> dict[str, Path]:
    """`visionkit predict` for every task in one process that cannot import torch."""
    out = tmp_path_factory.mktemp("onnx_predictions")
    cls_images = sorted((shapes_cls / "val").rglob("*.png"))[:5]
    jobs = {"classification": [str(models["classification"]), *map(str, cls_images), "-o", str(out / "cls"), "--draw"],
            "detection": [str(models["detection"]), str(scenes / "images" / "val"), "-o", str(out / "det"), "--draw"],
            "segmentation": [str(models["segmentation"]), str(scenes / "images" / "val"), "-o", str(out / "seg"),
                             "--draw"]}
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, json.dumps(list(jobs.values()))], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status == {"codes": [0, 0, 0], "attempts": [], "loaded": []}, status
    return {"classification": out / "cls", "detection": out / "det", "segmentation": out / "seg", "cls_images": cls_images}


def test_predict_classification(predictions):
    records = json.loads((predictions["classification"] / "predictions.json").read_text())
    assert [r["file"] for r in records] == [str(p) for p in predictions["cls_images"]]
    for r in records:
        assert r["class"] in ("circle", "square", "star", "triangle") and len(r["top_k"]) == 4
        assert r["top_k"][0]["class"] == r["class"] and abs(sum(t["probability"] for t in r["top_k"]) - 1) < 1e-4
    assert len(list((predictions["classification"] / "drawn").glob("*.png"))) == 5


def test_predict_detection_writes_coco_results(predictions, scenes):
    results = json.loads((predictions["detection"] / "predictions.json").read_text())
    images = json.loads((predictions["detection"] / "images.json").read_text())
    assert len(images) == 8 and {i["id"] for i in images} == set(range(1, 9))
    assert results and set(results[0]) == {"image_id", "category_id", "bbox", "score", "class"}
    assert all(r["category_id"] in (1, 2, 3, 4) and len(r["bbox"]) == 4 and r["score"] >= 0.05 for r in results)
    # COCO tools accept the file as it is.
    from pycocotools.coco import COCO

    gt = COCO(str(scenes / "annotations" / "instances_val.json"))
    assert len(gt.loadRes(str(predictions["detection"] / "predictions.json")).getAnnIds()) == len(results)
    assert len(list((predictions["detection"] / "drawn").glob("*.png"))) == 8


def test_predict_segmentation_writes_masks(predictions, scenes):
    records = json.loads((predictions["segmentation"] / "predictions.json").read_text())
    assert len(records) == 8
    for r in records:
        with Image.open(predictions["segmentation"] / r["mask"]) as mask, Image.open(r["file"]) as image:
            assert mask.mode == "P" and mask.size == image.size
            assert np.asarray(mask).max() < 5
        assert abs(sum(r["pixel_fraction"].values()) - 1) < 1e-3
    assert len(list((predictions["segmentation"] / "drawn").glob("*.png"))) == 8


@pytest.mark.parametrize("task", TASKS)
def test_eval_on_onnx_gives_the_checkpoint_metric(task, runs, models):
    checkpoint = launch.evaluate(str(runs[task]), [])
    assert cli.main(["eval", str(models[task])]) == 0
    onnx_result = json.loads(models[task].with_suffix(".eval.json").read_text())
    key = checkpoint["primary"]
    assert onnx_result["primary"] == key and onnx_result["num_images"] == checkpoint["num_images"]
    assert abs(onnx_result[key] - checkpoint[key]) <= 0.005, (onnx_result[key], checkpoint[key])


def test_segmentation_eval_scores_at_the_validation_resize(scenes, tmp_path):
    """With a validation Resize the metric scores at the resized size: the runtime hands eval
    the graph's class map as it is, not resized to the photo and back (not the identity)."""
    run = launch.train(_config("segmentation"), _common(tmp_path, "seg40") + [
        f"data.root={scenes}", "model.width=8", "model.blocks=[1,1,1]", "train.epochs=1", "train.batch_size=4",
        "data.val_transforms=[{name: Resize, height: 40, width: 40}]"])
    path = tmp_path / "seg40.onnx"
    assert cli.main(["export", str(run), "-o", str(path), "--check-images", "4"]) == 0
    model = Model.load(path)
    files = sorted((scenes / "images" / "val").glob("*.png"))[:3]
    graph = model.run(np.stack([p.array for p in model.preprocess(files)]))["class_map"]
    for k, result in enumerate(model.predict(files, graph_size=True)):
        assert np.array_equal(result["mask"], graph[k])
    assert all(r["mask"].shape == (64, 64) for r in model.predict(files))  # predict: the photo's size
    checkpoint = launch.evaluate(str(run), [])
    assert cli.main(["eval", str(path)]) == 0
    onnx_result = json.loads(path.with_suffix(".eval.json").read_text())
    assert abs(onnx_result["mIoU"] - checkpoint["mIoU"]) <= 0.005, (onnx_result["mIoU"], checkpoint["mIoU"])


# --- reduced precision --------------------------------------------------------------------------

def test_int8_export_reports_its_speed_and_accuracy_change(runs, models, tmp_path):
    path = tmp_path / "cls.int8.onnx"
    assert cli.main(["export", str(runs["classification"]), "-o", str(path), "--precision", "int8",
                     "--check-images", "8", "--calibration-images", "16", "--max-metric-drop", "100"]) == 0
    report = _report(path)
    int8 = report["checks_int8"]
    assert int8["validation_metric"]["metric"] == "top1" and "drop_points" in int8["validation_metric"]
    assert int8["speed"]["ms_per_image_fp32"] > 0 and int8["speed"]["ms_per_image_int8"] > 0
    assert int8["conversion"]["calibration_images"] == 16
    model = Model.load(path)
    assert model.metadata.precision == "int8"
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)
    assert path.stat().st_size < models["classification"].stat().st_size / 2


def test_fp16_export_and_its_limit(runs, tmp_path, capsys):
    path = tmp_path / "seg.fp16.onnx"
    assert cli.main(["export", str(runs["segmentation"]), "-o", str(path), "--precision", "fp16",
                     "--check-images", "4"]) == 0
    fp16 = _report(path)["checks_fp16"]
    assert fp16["outputs"]["pixel_agreement"] > 0.95 and "fp16" in fp16["validation_metric"]
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in onnx.load(str(path)).graph.initializer)
    # The detector's NMS runs per (image, class) in one op, with no control flow: fp16 converts.
    det = tmp_path / "d.onnx"
    assert cli.main(["export", str(runs["detection"]), "-o", str(det), "--precision", "fp16", "--check-images", "2"]) == 0
    assert "fp16" in _report(det)["checks_fp16"]["validation_metric"]
    # onnxruntime's float16 converter miswires If/Loop bodies: such graphs are refused.
    branch = lambda name: onnx.helper.make_graph(  # noqa: E731
        [onnx.helper.make_node("Identity", ["x"], [name])], name, [],
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1])])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("If", ["c"], ["y"], then_branch=branch("t"), else_branch=branch("e"))], "g",
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
         onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "if.onnx"))
    with pytest.raises(UserError, match="control flow"):
        to_fp16(tmp_path / "if.onnx", tmp_path / "if.fp16.onnx")


# --- bad input ------------------------------------------------------------------------------------

def _one_line_error(capsys, code: int, argv: list[str], *needles: str) -> str:
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("visionkit: error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_a_file_that_is_not_onnx_is_one_line(tmp_path, capsys, shapes_cls):
    fake = tmp_path / "model.onnx"
    fake.write_text("this is not a model")
    image = next((shapes_cls / "val").rglob("*.png"))
    _one_line_error(capsys, 2, ["predict", str(fake), str(image), "-o", str(tmp_path / "out")],
                    str(fake), "not a usable ONNX model")
    _one_line_error(capsys, 2, ["eval", str(fake)], "not a usable ONNX model")


def test_a_model_without_metadata_needs_explicit_flags(models, tmp_path, capsys, shapes_cls):
    bare = onnx.load(str(models["classification"]))
    del bare.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(bare, str(path))
    images = sorted((shapes_cls / "val").rglob("*.png"))[:4]
    _one_line_error(capsys, 2, ["predict", str(path), *map(str, images), "-o", str(tmp_path / "a")],
                    "no visionkit metadata", "--task")
    _one_line_error(capsys, 2, ["eval", str(path)], "no visionkit metadata")
    # Described by hand, it runs: this graph normalises itself, so mean 0 / std 1 outside it.
    classes = ",".join(Model.load(models["classification"]).metadata.classes)
    assert cli.main(["predict", str(path), *map(str, images), "-o", str(tmp_path / "b"), "--task", "classification",
                     "--classes", classes, "--input-size", "32x32", "--mean", "0", "0", "0", "--std", "1", "1", "1"]) == 0
    assert cli.main(["predict", str(models["classification"]), *map(str, images), "-o", str(tmp_path / "c")]) == 0
    by_hand = json.loads((tmp_path / "b" / "predictions.json").read_text())
    exported = json.loads((tmp_path / "c" / "predictions.json").read_text())
    assert [r["class"] for r in by_hand] == [r["class"] for r in exported]
    _one_line_error(capsys, 2, ["predict", str(path), str(images[0]), "--classes", "a,b"], "give --task too")


def test_eval_of_an_export_keeps_the_training_preprocessing(models, tmp_path, capsys):
    _one_line_error(capsys, 2, ["eval", str(models["classification"]), "data.mean=[0,0,0]"],
                    "data.mean is fixed by the training run")
    _one_line_error(capsys, 2, ["eval", str(models["classification"]), "model.name=mlp"], "only data.* keys")


def test_outputs_never_overwrite_each_other_and_unwritable_ones_are_one_line(models, scenes, tmp_path, capsys):
    from visionkit.runtime.output import _unique_stems

    assert _unique_stems([Path("a/x.png"), Path("b/x.png"), Path("c/x-2.png")]) == ["x", "x-2", "x-2-2"]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    image = str(sorted((scenes / "images" / "val").glob("*.png"))[0])
    _one_line_error(capsys, 2, ["predict", str(models["segmentation"]), image, "-o", str(blocker / "out")], str(blocker))


def test_undecodable_images_and_wrong_channels(models, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    _one_line_error(capsys, 2, ["predict", str(models["detection"]), str(bad), "-o", str(tmp_path / "o")],
                    f"{bad}: cannot decode image")
    model = Model.load(models["segmentation"])
    from visionkit.errors import DataError

    with pytest.raises(DataError, match=r"image 1: array of shape \(8, 8, 2\)"):
        model.predict([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 2), np.uint8)])
    # Grey images are what training made of them too: RGB by repetition.
    assert model.predict(np.zeros((16, 16), np.uint8))[0]["mask"].shape == (16, 16)


def test_a_failed_check_exits_3_and_keeps_the_graph_aside(runs, tmp_path, capsys, monkeypatch):
    from visionkit.export import checks

    monkeypatch.setattr(checks, "MAX_PREPROCESS_DIFF_LEVELS", -1.0)  # any value now "differs"
    path = tmp_path / "model.onnx"
    _one_line_error(capsys, 3, ["export", str(runs["segmentation"]), "-o", str(path), "--check-images", "2"],
                    "export check failed (preprocessing)")
    assert not path.exists() and (tmp_path / "model.failed.onnx").is_file()
    assert _report(path)["ok"] is False


def test_export_refuses_what_the_runtime_cannot_replay(runs, tmp_path, capsys):
    from visionkit.fileio import atomic_torch_save

    # A run validated with a CenterCrop: the runtime replays only Resize.
    state = torch_load(runs["segmentation"] / "checkpoints" / "last.pt")
    state["config"]["data"]["val_transforms"] = [{"name": "CenterCrop", "height": 32, "width": 32}]
    atomic_torch_save(state, tmp_path / "checkpoints" / "last.pt")
    _one_line_error(capsys, 2, ["export", str(tmp_path / "checkpoints" / "last.pt"), "-o", str(tmp_path / "m.onnx")],
                    "data.val_transforms[0]", "CenterCrop", "Resize")
    # ... and an override cannot change how the model's input is prepared.
    _one_line_error(capsys, 2, ["export", str(runs["segmentation"]),
                                "data.val_transforms=[{name: Resize, height: 32, width: 32}]", "-o", str(tmp_path / "m.onnx")],
                    "data.val_transforms is fixed by the training run")
    _one_line_error(capsys, 2, ["export", str(runs["segmentation"]), "model.width=4", "-o", str(tmp_path / "m.onnx")],
                    "only data.* keys")
    _one_line_error(capsys, 2, ["export", str(runs["segmentation"]), "-o", str(tmp_path / "m.txt")], "must end in .onnx")


def test_two_stage_detectors_are_traced_per_image(tmp_path):
    """Faster R-CNN goes through torchvision's own forward, one image of a fixed size per call."""
    import torch

    from visionkit.export.graph import export_graph
    from visionkit.plugin import ExportPlan
    from visionkit.runtime.model import open_session
    from visionkit_plugins.detection.config import ModelConfig
    from visionkit_plugins.detection.export import OUTPUTS, PerImageDetectorGraph, match
    from visionkit_plugins.detection.models import build

    torch.manual_seed(0)
    model = build(ModelConfig(name="fasterrcnn_mobilenet_v3_large_320_fpn"), num_classes=5).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # spread the scores: an untrained head ties them all
    x = torch.rand(1, 3, 96, 128)
    plan = ExportPlan(module=PerImageDetectorGraph(model, 100), output_names=OUTPUTS, dynamic_batch=False,
                      dynamic_size=False)
    export_graph(plan, x, tmp_path / "frcnn.onnx", 17)
    session = open_session(tmp_path / "frcnn.onnx", ["CPUExecutionProvider"])
    assert [d for d in session.get_inputs()[0].shape] == [1, 3, 96, 128]
    image = torch.rand(1, 3, 96, 128)
    boxes, scores, labels, count = session.run(None, {"images": image.numpy()})
    with torch.no_grad():
        ref = model(list(image))[0]
    keep = ref["labels"] > 0
    found = match({"boxes": ref["boxes"][keep].double().numpy(), "scores": ref["scores"][keep].double().numpy(),
                   "labels": (ref["labels"][keep] - 1).numpy()},
                  {"boxes": boxes[0, :count[0]].astype(float), "scores": scores[0, :count[0]].astype(float),
                   "labels": labels[0, :count[0]]}, score_thresh=0.05)
    assert count[0] == keep.sum() > 10 and found["unmatched_torch"] == found["unmatched_onnx"] == 0, found


def test_int8_needs_calibration_images(runs, tmp_path, capsys):
    _one_line_error(capsys, 2, ["export", str(runs["classification"]), "-o", str(tmp_path / "q.onnx"),
                                "--precision", "int8", "--calibration-images", "0"], "--calibration-images 0: at least 1")
