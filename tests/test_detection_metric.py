"""Detection metric: the plugin's mAP equals pycocotools COCOeval on the file, whatever the sharding."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from visionkit.data import synth
from visionkit_plugins.detection import DataConfig, DetectionPlugin
from visionkit_plugins.detection.metric import LOGGED, STAT_NAMES

VAL_JSON = "annotations/instances_val.json"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = synth.scenes(tmp_path_factory.mktemp("scenes"), num_train=4, num_val=24, size=64, seed=5)
    # Non-contiguous category ids and a crowd region, to exercise the mapping back and iscrowd.
    new_id = {1: 3, 2: 7, 3: 11, 4: 15}
    for name in ("instances_train.json", "instances_val.json"):
        path = root / "annotations" / name
        coco = json.loads(path.read_text())
        for c in coco["categories"]:
            c["id"] = new_id[c["id"]]
        for a in coco["annotations"]:
            a["category_id"] = new_id[a["category_id"]]
        if name == "instances_val.json":
            coco["annotations"][1]["iscrowd"] = 1
            coco["annotations"][1]["bbox"] = [0.0, 0.0, 40.0, 40.0]
        path.write_text(json.dumps(coco))
    return root


def fake_predictions(val, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Jittered true boxes, wrong labels and random false positives, some on crowd regions."""
    rng = np.random.default_rng(seed)
    outputs = []
    for i in range(len(val)):
        _, target = val[i]
        boxes, scores, labels = [], [], []
        for g in target["gt"]:
            x, y, w, h = g["bbox"]
            j = rng.normal(0, 0.08 * max(w, h), 4)
            boxes.append([x + j[0], y + j[1], x + w + j[2], y + h + j[3]])
            scores.append(rng.uniform(0.2, 1.0))
            labels.append(g["category_id"] if rng.random() < 0.85 else int(rng.integers(1, 5)))
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, 50, 2)
            boxes.append([x, y, x + rng.uniform(4, 14), y + rng.uniform(4, 14)])
            scores.append(rng.uniform(0.0, 0.6))
            labels.append(int(rng.integers(1, 5)))
        outputs.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.tensor(scores, dtype=torch.float32),
                        "labels": torch.tensor(labels, dtype=torch.int64)})
    return outputs


def plugin_result(val, outputs, workers: int, batch: int = 3) -> dict:
    """Shards like the trainer (rank::world_size), gathers states, merges on every 'worker'."""
    plugin = DetectionPlugin()
    metrics = []
    for rank in range(workers):
        metric = plugin.build_metric(val.classes)
        idx = list(range(rank, len(val), workers))
        for s in range(0, len(idx), batch):
            chunk = idx[s:s + batch]
            metric.update([outputs[i] for i in chunk], plugin.collate([val[i] for i in chunk]))
        metrics.append(metric)
    states = [m.state() for m in metrics]
    for m in metrics:
        m.merge(states)
    results = [m.compute() for m in metrics]
    assert all(r["mAP"] == results[0]["mAP"] for r in results)
    return results[0]


def pycocotools_direct(ann_file: Path, val, outputs) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = []
    for i, out in enumerate(outputs):
        image_id = val[i][1]["image_id"]
        for (x0, y0, x1, y1), s, lab in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
            results.append({"image_id": image_id, "category_id": val.category_ids[lab - 1],
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_map_equals_pycocotools_on_the_file_for_any_worker_count(scenes):
    val = DetectionPlugin().build_dataset(DataConfig(root=scenes), "val")
    outputs = fake_predictions(val)
    expected = pycocotools_direct(scenes / VAL_JSON, val, outputs)
    assert 0.2 < expected[0] < 0.95  # a non-trivial case
    for workers in (1, 2, 3):
        result = plugin_result(val, outputs, workers)
        got = np.array([result["coco_stats"][k] for k in STAT_NAMES])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert {k for k, v in result.items() if isinstance(v, float)} == set(LOGGED)  # logged per epoch
    # mAP is the mean of the per-class APs (every class has ground truth here)
    assert np.isclose(np.mean(list(result["per_class_AP"].values())), result["mAP"])
    assert set(result["per_class_AP"]) == set(synth.CLASSES)
    json.dumps(result)  # the core writes results as JSON


def test_detections_on_crowd_regions_are_ignored_not_false_positives(scenes):
    val = DetectionPlugin().build_dataset(DataConfig(root=scenes), "val")
    outputs = fake_predictions(val, seed=1)
    index = next(i for i in range(len(val)) if any(g["iscrowd"] for g in val[i][1]["gt"]))
    crowd = next(g for g in val[index][1]["gt"] if g["iscrowd"])
    before = plugin_result(val, outputs, 2)
    x, y, w, h = crowd["bbox"]
    out = outputs[index]
    inside = torch.tensor([[x + 2, y + 2, x + 14, y + 14]])  # well inside the crowd box, top score
    outputs[index] = {"boxes": torch.cat([out["boxes"], inside]), "scores": torch.cat([out["scores"], torch.tensor([1.0])]),
                      "labels": torch.cat([out["labels"], torch.tensor([crowd["category_id"]])])}
    after = plugin_result(val, outputs, 2)
    assert after["mAP"] == before["mAP"] and after["mAP50"] == before["mAP50"]
    np.testing.assert_allclose([after["coco_stats"][k] for k in STAT_NAMES], pycocotools_direct(scenes / VAL_JSON, val, outputs),
                               atol=1e-12)


def test_no_detections_scores_zero(scenes):
    val = DetectionPlugin().build_dataset(DataConfig(root=scenes), "val")
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
             for _ in range(len(val))]
    result = plugin_result(val, empty, 2)
    assert result["mAP"] == 0.0 and result["mAP50"] == 0.0


def test_visuals_are_written(scenes, tmp_path):
    plugin = DetectionPlugin()
    val = plugin.build_dataset(DataConfig(root=scenes), "val")
    result = json.loads(json.dumps(plugin_result(val, fake_predictions(val), 1)))  # as reloaded from JSON
    paths = plugin.write_visuals(result, val.classes, tmp_path / "plots")
    assert [p.name for p in paths] == ["pr_curve.png", "val_predictions.png"]
    assert all(p.stat().st_size > 5000 for p in paths)
