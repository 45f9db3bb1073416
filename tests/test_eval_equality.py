"""Validation metrics do not depend on the worker count or the batch size (issue 12, item 4).

The validation set mixes three image sizes, interleaved, so a loader that batches neighbours
would pad small images to large ones. Each evaluation runs the way the workers do: every rank's
shard through :func:`build_val_loader`, a metric per rank, the states merged as ``loop.evaluate``
merges them. The models are the demo configs' own, trained a few steps from a fixed seed so their
predictions are not trivial.
"""

from __future__ import annotations

import importlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionkit.config import load_config, task_configs
from visionkit.data import synth
from visionkit.data.grouping import same_size_batches
from visionkit.train.evalloader import build_val_loader

REPO = Path(__file__).resolve().parents[1]
#: (width, height) crops of 64-px scenes: after fcos_light's resize to 128 px these reach the
#: detector as 128x128, 80x128 and 128x80 (padded to 96 or 128 by its batching)
SIZES = [(64, 64), (64, 40), (40, 64)]
PER_SIZE = {"train": 4, "val": 4}
WORLD_SIZES = (1, 2, 3)
BATCH_SIZES = (2, 5)


def _crop_coco(coco: dict, width: int, height: int) -> dict:
    """The annotations of a top-left crop: masks cropped and re-encoded, boxes recomputed, shapes
    left with fewer than 16 visible pixels dropped (as the generator drops hidden ones)."""
    from pycocotools import mask as mask_utils

    anns = []
    for ann in coco["annotations"]:
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode("ascii"))
        visible = np.asfortranarray(mask_utils.decode(rle)[:height, :width])
        if visible.sum() < 16:
            continue
        cropped = mask_utils.encode(visible)
        cropped["counts"] = cropped["counts"].decode("ascii")
        anns.append({**ann, "segmentation": cropped, "bbox": [float(v) for v in mask_utils.toBbox(cropped)],
                     "area": float(visible.sum())})
    images = [{**img, "width": width, "height": height} for img in coco["images"]]
    return {**coco, "images": images, "annotations": anns}


def mixed_size_scenes(root: Path) -> Path:
    """The shapes scenes at three sizes in one data set (mask folders and COCO JSON), written so
    that both readers list them interleaved: sizes alternate image by image."""
    counts = {split: PER_SIZE[split] for split in ("train", "val")}
    merged = {split: {"images": [], "annotations": [], "categories": None} for split in counts}
    for k, (width, height) in enumerate(SIZES):
        part = synth.scenes(root.parent / f"part{k}", num_train=counts["train"], num_val=counts["val"],
                            size=64, seed=10 + k)
        for split, count in counts.items():
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            coco = _crop_coco(json.loads((part / "annotations" / f"instances_{split}.json").read_text()), width, height)
            new_ids = {}
            for img in coco["images"]:
                i = img["id"] - 1
                name = f"{split}_{i:03d}_{k}.png"  # sorted by name: image i of every size, then i + 1
                for folder in ("images", "masks"):
                    with Image.open(part / folder / split / img["file_name"]) as pil:
                        pil.crop((0, 0, width, height)).save(root / folder / split / name)
                new_ids[img["id"]] = i * len(SIZES) + k + 1
                merged[split]["images"].append({**img, "id": new_ids[img["id"]], "file_name": name})
            for ann in coco["annotations"]:
                merged[split]["annotations"].append(
                    {**ann, "id": len(merged[split]["annotations"]) + 1, "image_id": new_ids[ann["image_id"]]})
            merged[split]["categories"] = coco["categories"]
        shutil.copy(part / "classes.txt", root / "classes.txt")
        shutil.rmtree(part)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, coco in merged.items():  # listed in id order too: interleaved however a reader orders them
        coco["images"].sort(key=lambda img: img["id"])
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return root


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return mixed_size_scenes(tmp_path_factory.mktemp("mixed") / "shapes")


def demo_task(task: str, root: Path, overrides: tuple[str, ...] = ()):
    """The config, plugin and sections of ``configs/<task>/shapes.yaml`` with data at ``root``."""
    from visionkit.registry import get_plugin

    path = REPO / "configs" / task / "shapes.yaml"
    cfg, _ = load_config(path, [f"data.root={root}", *overrides])
    plugin = get_plugin(cfg.task)
    sections = task_configs(cfg, plugin, str(path))
    return cfg, plugin, sections


def trained_model(cfg, plugin, sections, train_set, steps: int) -> torch.nn.Module:
    """The demo model after a few optimizer steps (fixed seed), so predictions are not trivial."""
    torch.manual_seed(0)
    classes = list(train_set.classes)
    model = plugin.build_model(sections.model, classes, sections.data)
    loss_fn = plugin.build_loss(sections.loss, classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.optimizer.lr)
    loader = torch.utils.data.DataLoader(train_set, batch_size=4, shuffle=True, collate_fn=plugin.collate,
                                         generator=torch.Generator().manual_seed(0))
    model.train()
    done = 0
    while done < steps:
        for batch in loader:
            optimizer.zero_grad()
            loss_fn(model, batch).total.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return model.eval()


def evaluate(plugin, model, dataset, world_size: int, batch_size: int):
    """``loop.evaluate`` on ``world_size`` simulated workers: one metric per rank, then merged.
    Returns the result, the merged metric and how many images the ranks scored together."""
    states, seen = [], 0
    for rank in range(world_size):
        metric = plugin.build_metric(list(dataset.classes))
        for batch in build_val_loader(plugin, dataset, rank, world_size, batch_size, loader_workers=0):
            metric.update(plugin.predict(model, batch), batch)
            seen += plugin.batch_size_of(batch)
        states.append(metric.state())
    metric = plugin.build_metric(list(dataset.classes))
    metric.merge(states)
    return metric.compute(), metric, seen


def all_evaluations(plugin, model, dataset, drop: tuple[str, ...] = ()):
    """Results by (workers, batch size), and the merged metric of the first setting."""
    results, first = {}, None
    for w in WORLD_SIZES:
        for b in BATCH_SIZES:
            result, metric, seen = evaluate(plugin, model, dataset, w, b)
            assert seen == len(dataset), (w, b, seen)
            results[(w, b)] = {k: v for k, v in result.items() if k not in drop}
            first = metric if first is None else first
    return results, first


def assert_all_equal(results: dict[tuple[int, int], dict], shown: tuple[str, ...]) -> None:
    """Every (workers, batch size) gives the same result, compared exactly (as JSON text, so a NaN
    equals a NaN); the message lists the headline numbers of each setting."""
    texts = {setting: json.dumps(result, sort_keys=True) for setting, result in results.items()}
    if len(set(texts.values())) > 1:
        lines = [f"workers={w} batch={b}: " + ", ".join(f"{k}={results[(w, b)][k]!r}" for k in shown)
                 for (w, b) in results]
        pytest.fail("validation metrics differ between worker counts / batch sizes:\n" + "\n".join(lines))


def assert_interleaved(shapes: list[tuple[int, int]]) -> None:
    """Every size present, and neighbours of different sizes: batching neighbours would pad."""
    assert set(shapes) == {(h, w) for w, h in SIZES}
    assert all(a != b for a, b in zip(shapes, shapes[1:])), shapes


def test_same_size_batches_cover_each_index_once_in_full_batches():
    indices = [0, 3, 6, 9, 12, 15, 18, 21]
    keys = ["a", "b", "a", "a", "b", "a", "c", "a"]
    batches = same_size_batches(indices, keys, 2)
    assert sorted(i for b in batches for i in b) == indices
    assert all(len({keys[indices.index(i)] for i in b}) == 1 for b in batches)
    # per key: whole batches but the last; batches in order of their first index
    assert batches == [[0, 6], [3, 12], [9, 15], [18], [21]]
    assert same_size_batches(indices, [None] * len(indices), 3) == [[0, 3, 6], [9, 12, 15], [18, 21]]


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_size_keys_without_decoding_and_one_key_after_a_fixed_resize(scenes, task, monkeypatch):
    _, plugin, sections = demo_task(task, scenes)
    val_set = plugin.build_dataset(sections.data, "val")
    shapes = [tuple(val_set[i][0].shape[-2:]) for i in range(len(val_set))]
    data_module = importlib.import_module(f"plugins.{task}.data")
    monkeypatch.setattr(data_module, "load_rgb", lambda path: pytest.fail(f"{path} decoded for its size key"))
    assert [plugin.eval_size_key(val_set, i) for i in range(len(val_set))] == [(w, h) for h, w in shapes]
    _, plugin, sections = demo_task(task, scenes, ("data.val_transforms=[{name: Resize, height: 48, width: 48}]",))
    val_set = plugin.build_dataset(sections.data, "val")
    assert {plugin.eval_size_key(val_set, i) for i in range(len(val_set))} == {None}


def test_segmentation_metrics_independent_of_workers_and_batch_size(scenes, one_thread):
    tic = time.perf_counter()
    cfg, plugin, sections = demo_task("segmentation", scenes)
    train_set, val_set = plugin.build_dataset(sections.data, "train"), plugin.build_dataset(sections.data, "val")
    assert_interleaved([tuple(val_set[i][1].shape) for i in range(len(val_set))])
    model = trained_model(cfg, plugin, sections, train_set, steps=6)
    # "samples" (the overlay images) are the first images of the first ranks: not a figure of merit
    results, _ = all_evaluations(plugin, model, val_set, drop=("samples",))
    first = results[(1, BATCH_SIZES[0])]
    labelled = sum(int((val_set[i][1] != 255).sum()) for i in range(len(val_set)))
    assert np.asarray(first["confusion"]).sum() == labelled  # with seen == len: each image once
    assert (np.asarray(first["confusion"]).sum(0) > 0).sum() > 1  # the model predicts more than one class
    assert_all_equal(results, ("mIoU", "pixel_acc", "IoU_per_class"))
    print(f"segmentation: mIoU {first['mIoU']!r}, {time.perf_counter() - tic:.1f} s")


def test_detection_metrics_independent_of_workers_and_batch_size(scenes, one_thread):
    tic = time.perf_counter()
    # A low threshold keeps many low-scoring boxes, whose ranking padding would most easily change.
    cfg, plugin, sections = demo_task("detection", scenes, ("model.score_thresh=0.01",))
    train_set, val_set = plugin.build_dataset(sections.data, "train"), plugin.build_dataset(sections.data, "val")
    assert_interleaved([tuple(val_set[i][0].shape[1:]) for i in range(len(val_set))])
    model = trained_model(cfg, plugin, sections, train_set, steps=6)
    # "samples" (the visuals' boxes, rounded to 0.01 px) are left out: a convolution over one image
    # and over several differ by float rounding (~1e-5 px here, oneDNN's kernels at batch 1 vs
    # more), which can tip a rounding. COCOeval compares IoUs and scores with thresholds: exact.
    results, metric = all_evaluations(plugin, model, val_set, drop=("samples",))
    first = results[(1, BATCH_SIZES[0])]
    assert sorted(metric.images) == sorted(rec.id for rec in val_set.split.records)  # with seen == len: once
    assert sum(len(d) for d in metric.dets.values()) > 0  # there are detections to score
    assert_all_equal(results, ("mAP", "mAP50", "AR100"))
    print(f"detection: mAP {first['mAP']!r} mAP50 {first['mAP50']!r}, {time.perf_counter() - tic:.1f} s")
