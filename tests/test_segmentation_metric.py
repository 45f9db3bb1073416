"""The confusion-matrix metric: checked against a hand count, and exact across workers."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch

from visionkit_plugins.segmentation.data import IGNORE_INDEX
from visionkit_plugins.segmentation.metric import SegmentationMetric, decode_sample

I = IGNORE_INDEX
CLASSES = ["background", "cat", "dog", "bird"]  # "bird" appears in neither prediction nor truth


def hand_example():
    target = torch.tensor([[[0, 0, 1, 1],
                            [0, 2, 2, I],
                            [1, 1, 2, I]]])
    pred = torch.tensor([[[0, 1, 1, 1],
                          [0, 2, 0, 2],
                          [1, 2, 2, 0]]], dtype=torch.uint8)
    images = torch.rand(1, 3, 3, 4)
    return pred, (images, target)


def test_against_a_hand_count():
    pred, batch = hand_example()
    metric = SegmentationMetric(CLASSES)
    metric.update(pred, batch)
    r = metric.compute()
    # 10 labelled pixels (2 ignore pixels dropped, whatever was predicted there). Rows = truth:
    #   bg:  (0,0)->0 (0,1)->1 (1,0)->0           -> [2, 1, 0, 0]
    #   cat: (0,2)->1 (0,3)->1 (2,0)->1 (2,1)->2  -> [0, 3, 1, 0]
    #   dog: (1,1)->2 (1,2)->0 (2,2)->2           -> [1, 0, 2, 0]
    assert r["confusion"] == [[2, 1, 0, 0], [0, 3, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    # IoU = TP / (truth + predicted - TP): bg 2/(3+3-2), cat 3/(4+4-3), dog 2/(3+3-2); bird: 0/0
    iou = [2 / 4, 3 / 5, 2 / 4]
    assert r["IoU_per_class"][:3] == pytest.approx(iou)
    assert r["IoU_per_class"][3] is None  # undefined, not 0 and not 1 ...
    assert r["mIoU"] == pytest.approx(sum(iou) / 3)  # ... and left out of the mean
    assert r["pixel_acc"] == pytest.approx(7 / 10)
    assert r["acc_per_class"][:3] == pytest.approx([2 / 3, 3 / 4, 2 / 3]) and r["acc_per_class"][3] is None
    assert r["mAcc"] == pytest.approx((2 / 3 + 3 / 4 + 2 / 3) / 3)


def test_class_predicted_but_absent_counts_as_zero():
    target = torch.tensor([[[0, 0], [1, 1]]])
    pred = torch.tensor([[[0, 3], [1, 1]]], dtype=torch.uint8)
    metric = SegmentationMetric(CLASSES)
    metric.update(pred, (torch.rand(1, 3, 2, 2), target))
    r = metric.compute()
    assert r["IoU_per_class"] == [0.5, 1.0, None, 0.0]
    assert r["mIoU"] == pytest.approx(1.5 / 3)


def random_batches(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        target = torch.randint(0, 4, (3, 17, 13), generator=g)
        target[torch.rand(target.shape, generator=g) < 0.1] = I
        pred = torch.randint(0, 4, (3, 17, 13), generator=g).to(torch.uint8)
        batches.append((pred, (torch.rand(3, 3, 17, 13, generator=g), target)))
    return batches


def scalars(result):
    return {k: v for k, v in result.items() if isinstance(v, float)}


@pytest.mark.parametrize("workers", [2, 3])
def test_merge_is_exact(workers):
    """Batches dealt round-robin to N "workers", their states pickled and merged, equal one metric
    over everything, to the last bit."""
    batches = random_batches(7)
    single = SegmentationMetric(CLASSES)
    for pred, batch in batches:
        single.update(pred, batch)
    shards = [SegmentationMetric(CLASSES) for _ in range(workers)]
    for i, (pred, batch) in enumerate(batches):
        shards[i % workers].update(pred, batch)
    states = [pickle.loads(pickle.dumps(m.state())) for m in shards]
    for rank in range(workers):  # every worker merges and computes; all agree
        merged = SegmentationMetric(CLASSES)
        merged.merge(states)
        a, b = single.compute(), merged.compute()
        assert a["confusion"] == b["confusion"]
        assert scalars(a) == scalars(b)
        assert a["IoU_per_class"] == b["IoU_per_class"]


def test_result_is_json_and_state_small():
    metric = SegmentationMetric(CLASSES)
    for pred, batch in random_batches(3):
        metric.update(pred, batch)
    r = metric.compute()
    text = json.dumps({k: v for k, v in r.items() if not isinstance(v, float)}, allow_nan=False)
    assert len(text) < 100_000
    assert {"mIoU", "pixel_acc", "mAcc"} <= set(scalars(r))
    assert len(r["samples"]) == 4
    sample = r["samples"][0]
    assert decode_sample(sample["image"]).shape == (17, 13, 3)
    assert decode_sample(sample["target"]).shape == (17, 13)
    assert len(pickle.dumps(metric.state())) < 50_000


def test_empty_metric_is_nan_not_an_error():
    r = SegmentationMetric(CLASSES).compute()
    assert math.isnan(r["mIoU"]) and r["IoU_per_class"] == [None] * 4


def test_large_images_are_shrunk_for_the_samples():
    metric = SegmentationMetric(CLASSES)
    target = torch.zeros(1, 300, 600, dtype=torch.long)
    metric.update(torch.zeros(1, 300, 600, dtype=torch.uint8), (torch.rand(1, 3, 300, 600), target))
    image, mask, pred = metric.state()["samples"][0]
    assert image.shape == (128, 256, 3) and mask.shape == (128, 256) and pred.shape == (128, 256)
    assert np.all(mask == 0)
