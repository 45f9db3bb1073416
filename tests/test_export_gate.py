"""The int8/fp16 export's metric gate, without an export: the drop counts in the metric's direction."""

import pytest

from visionkit.export.exporter import metric_drop_check
from visionkit.plugin import Metric


class _Scored(Metric):
    """A metric that only names its primary key: the gate reads nothing else."""

    def update(self, outputs, batch):
        pass

    def state(self):
        return None

    def merge(self, states):
        pass

    def compute(self):
        return {}


class CountMAE(_Scored):
    """A third-party counting task's error: lower is better."""

    primary = "mae"
    higher_is_better = False


class Top1(_Scored):
    primary = "top1"
    higher_is_better = True


def gate(metric, fp32, reduced, max_drop):
    return metric_drop_check(metric, {metric.primary: fp32}, {metric.primary: reduced}, "int8", 40, max_drop)


def test_a_worse_error_metric_is_refused():
    check = gate(CountMAE(), 0.5, 0.75, max_drop=0)  # the int8 model's error rose by a quarter
    assert check["drop_points"] == 25.0 and check["ok"] is False
    assert check["direction"] == "lower is better" and "lower is better" in check["threshold"]
    assert check["metric"] == "mae" and check["fp32"] == 0.5 and check["int8"] == 0.75 and check["images"] == 40


def test_a_better_error_metric_passes():
    check = gate(CountMAE(), 0.75, 0.5, max_drop=0)
    assert check["drop_points"] == -25.0 and check["ok"] is True


@pytest.mark.parametrize("max_drop, ok", [(25, True), (24.5, False)])
def test_a_higher_is_better_metric_keeps_its_rule(max_drop, ok):
    check = gate(Top1(), 0.75, 0.5, max_drop)
    assert check["drop_points"] == 25.0 and check["ok"] is ok and check["direction"] == "higher is better"
    assert gate(Top1(), 0.5, 0.75, 0)["ok"] is True


@pytest.mark.parametrize("metric", [CountMAE(), Top1()])
def test_an_unchanged_metric_passes_a_zero_threshold(metric):
    assert gate(metric, 0.625, 0.625, 0)["ok"] is True
