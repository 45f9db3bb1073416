"""A plugin's metric is checked before training, not after the first epoch.

Its metric class is checked when the plugin loads (a ``primary`` key, an explicit
``higher_is_better``: without one, a metric to minimise would keep its worst epoch as best.pt),
and :func:`visionkit.plugin.check_metric_result` checks ``compute()``'s answer at the first
evaluation. Packages are simulated by ``*.dist-info`` folders, as in test_registry.py.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli
from test_registry import fake_distribution

# A complete minimal plugin and metric-class mistakes, as a third party's module.
CASES_MODULE = textwrap.dedent('''
    import torch
    from visionkit.plugin import Metric, Section, TaskPlugin


    class _Metric(Metric):
        def update(self, outputs, batch): pass
        def state(self): return None
        def merge(self, states): pass
        def compute(self): return {"acc": 1.0}


    class GoodMetric(_Metric):
        primary = "acc"
        higher_is_better = True


    class NoPrimaryMetric(_Metric):
        higher_is_better = True


    class NoDirectionMetric(_Metric):
        primary = "loss"  # forgot higher_is_better = False


    class Undeclared(TaskPlugin):
        name = "undeclared"
        DataConfig = Section
        ModelConfig = Section
        def build_dataset(self, data, split): return []
        def build_model(self, model, classes, data): return torch.nn.Identity()
        def build_loss(self, loss, classes): return None
        def predict(self, model, batch): return None
        def build_metric(self, classes): return GoodMetric()


    class Good(Undeclared):
        name = "good"
        MetricClass = GoodMetric


    class NoPrimary(Undeclared):
        MetricClass = NoPrimaryMetric


    class NoDirection(Undeclared):
        MetricClass = NoDirectionMetric


    class NotAMetric(Undeclared):
        MetricClass = dict
''')


@pytest.fixture
def site(tmp_path):
    """One package whose plugins get their metric class wrong in each way, and one right."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "vk_metric_cases.py").write_text(CASES_MODULE)
    fake_distribution(site, "vk-metric-cases", "0.1", {"visionkit.tasks": {
        name.lower(): f"vk_metric_cases:{name}" for name in ("Good", "NoPrimary", "NoDirection", "NotAMetric", "Undeclared")}})
    return site


@pytest.fixture
def installed(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    return site


def test_a_plugin_with_a_complete_metric_class_loads(installed):
    from visionkit.registry import get_plugin

    assert get_plugin("good").MetricClass.__name__ == "GoodMetric"


@pytest.mark.parametrize("name, reason", [
    ("noprimary", r"MetricClass NoPrimaryMetric has no 'primary'"),
    ("nodirection", r"MetricClass NoDirectionMetric does not declare higher_is_better"),
    ("notametric", r"MetricClass is dict, expected a visionkit.plugin.Metric subclass"),
    ("undeclared", r"declares no MetricClass"),
])
def test_a_metric_class_that_cannot_pick_the_best_checkpoint_breaks_its_plugin_at_load(installed, name, reason):
    from visionkit.errors import PluginError
    from visionkit.registry import get_plugin

    with pytest.raises(PluginError, match=rf"task plugin '{name}' \(vk_metric_cases:\w+, from vk-metric-cases 0.1\).*{reason}") as info:
        get_plugin(name)
    assert "\n" not in str(info.value)


def test_plugins_command_shows_a_bad_metric_class_as_broken_and_lists_the_rest(site):
    proc = run_cli("plugins", env={"PYTHONPATH": str(site)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line and not line[0].isspace()}
    for name in ("classification", "detection", "segmentation", "good"):
        assert "BROKEN" not in lines[name], lines[name]
    assert "BROKEN" in lines["nodirection"] and "does not declare higher_is_better" in lines["nodirection"]
    assert "BROKEN" in lines["noprimary"] and "has no 'primary'" in lines["noprimary"]
    assert "BROKEN" in lines["undeclared"] and "declares no MetricClass" in lines["undeclared"]


def test_builtin_and_toy_plugins_declare_the_metric_class_they_build():
    import importlib

    from visionkit.plugin import Metric
    from visionkit.registry import get_plugin

    plugins = [get_plugin(name) for name in ("classification", "detection", "segmentation")]
    toy = Path(__file__).parent / "fixtures" / "toyplugin"
    monkeypatch = pytest.MonkeyPatch()
    try:
        monkeypatch.syspath_prepend(str(toy))
        plugins.append(importlib.import_module("vk_toy.plugin").ToyPlugin())
    finally:
        monkeypatch.undo()
    for plugin in plugins:
        assert issubclass(plugin.MetricClass, Metric)
        assert type(plugin.build_metric(["a", "b", "c"])) is plugin.MetricClass, plugin.name
        assert isinstance(plugin.MetricClass.higher_is_better, bool) and plugin.MetricClass.primary


class _Metric:
    primary = "mAP"


@pytest.mark.parametrize("value", [0.5, 1, 0, float("nan")])
def test_a_metric_result_with_a_real_primary_value_passes(value):
    from visionkit.plugin import check_metric_result

    check_metric_result(_Metric(), {"mAP": value, "per_class": [1, 2]}, "det")


@pytest.mark.parametrize("result, expected", [
    ({"map": 0.5, "mAP50": 0.7}, r"task plugin 'det': _Metric.compute\(\) has no 'mAP' key \(its primary metric\); it gave \['mAP50', 'map'\]"),
    ({"mAP": None}, r"task plugin 'det': _Metric.compute\(\)\['mAP'\] is None, expected a finite \(or nan\) int or float"),
    ({"mAP": "0.5"}, r"\['mAP'\] is '0.5', expected"),
    ({"mAP": True}, r"\['mAP'\] is True, expected"),
    ({"mAP": math.inf}, r"\['mAP'\] is inf, expected"),
    ({"mAP": [0.5]}, r"\['mAP'\] is \[0.5\], expected"),
    ([("mAP", 0.5)], r"_Metric.compute\(\) returned a list, expected a dict"),
])
def test_a_metric_result_without_its_primary_number_is_one_line_naming_the_plugin(result, expected):
    from visionkit.errors import PluginError
    from visionkit.plugin import check_metric_result

    with pytest.raises(PluginError, match=expected) as info:
        check_metric_result(_Metric(), result, "det")
    assert "\n" not in str(info.value)
