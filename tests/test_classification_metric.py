"""Classification metric: a class with no validation image has no accuracy, rather than 0."""

from __future__ import annotations

import json
import math

import torch


def metric_with(labels: list[int], preds: list[int], num_classes: int):
    from visionkit_plugins.classification.metric import ClassificationMetric

    metric = ClassificationMetric(num_classes)
    if labels:
        logits = torch.nn.functional.one_hot(torch.tensor(preds), num_classes).float()
        metric.update(logits, (None, torch.tensor(labels)))
    return metric


def test_a_class_without_validation_images_is_left_out_of_the_mean(tmp_path):
    from visionkit_plugins.classification.visuals import plot_confusion

    # class 0: 3 of 4 right; class 1: 1 of 2 right; class 2: no images (but predicted once)
    labels, preds = [0, 0, 0, 0, 1, 1], [0, 0, 0, 2, 1, 0]
    result = metric_with(labels, preds, 3).compute()
    seen = sorted(set(labels))
    accuracy = {c: sum(p == c for l, p in zip(labels, preds) if l == c) / labels.count(c) for c in seen}
    assert result["per_class_accuracy"][:2] == [accuracy[0], accuracy[1]]
    assert result["per_class_accuracy"][2] is None  # JSON null: undefined, not 0
    assert result["mean_class_accuracy"] == sum(accuracy.values()) / len(seen)
    assert result["top1"] == sum(l == p for l, p in zip(labels, preds)) / len(labels)
    # What the run writes (eval_*.json, metrics.jsonl via the scalars) and draws still works.
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert plot_confusion(result["confusion_matrix"], ["a", "b", "c"], tmp_path / "cm.png").stat().st_size > 0


def test_mean_class_accuracy_without_any_image_is_nan():
    result = metric_with([], [], 3).compute()
    assert result["per_class_accuracy"] == [None, None, None]
    assert math.isnan(result["mean_class_accuracy"]) and result["num_images"] == 0


def test_merged_workers_give_one_process_result():
    a = metric_with([0, 1], [0, 0], 3)
    b = metric_with([0, 0], [0, 1], 3)
    merged = metric_with([], [], 3)
    merged.merge([a.state(), b.state()])
    whole = metric_with([0, 1, 0, 0], [0, 0, 0, 1], 3)
    assert merged.compute() == whole.compute()
