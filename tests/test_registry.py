"""Entry-point registries (tasks, runtimes), with installed packages simulated by ``*.dist-info``
folders on a temporary ``sys.path`` entry: what pip leaves behind, without running pip.

One package's mistake must disable that name only: a task declared by two packages is BROKEN with
its reason while every other task keeps working.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli


def fake_distribution(site: Path, name: str, version: str, groups: dict[str, dict[str, str]]) -> None:
    """What ``pip install`` writes for a package's metadata: enough for importlib.metadata."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    text = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in groups.items())
    (info / "entry_points.txt").write_text(text)


@pytest.fixture
def site(tmp_path):
    """Two packages that both declare the task ``dup`` and the runtime ``dup``."""
    site = tmp_path / "site"
    site.mkdir()
    fake_distribution(site, "vk-clash-a", "1.0", {"visionkit.tasks": {"dup": "vk_clash_a:Plugin"},
                                                   "visionkit.runtime": {"dup": "vk_clash_a.runtime:Runtime"}})
    fake_distribution(site, "vk-clash-b", "2.0", {"visionkit.tasks": {"dup": "vk_clash_b:Plugin"},
                                                   "visionkit.runtime": {"dup": "vk_clash_b.runtime:Runtime"}})
    return site


@pytest.fixture
def installed(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))  # also invalidates the import caches
    return site


def test_a_task_declared_by_two_packages_is_refused_alone(installed):
    from visionkit.errors import PluginError
    from visionkit.registry import entries, get_plugin

    found = entries()  # used to raise "declared twice" here, for every task
    assert {"classification", "detection", "segmentation", "dup"} <= set(found)
    assert get_plugin("classification").name == "classification"
    with pytest.raises(PluginError) as info:
        get_plugin("dup")
    message = str(info.value)
    assert "\n" not in message
    for part in ("'dup'", "vk-clash-a 1.0", "vk_clash_a:Plugin", "vk-clash-b 2.0", "vk_clash_b:Plugin"):
        assert part in message, message


def test_plugins_command_shows_a_clash_as_broken_and_lists_the_rest(site):
    proc = run_cli("plugins", env={"PYTHONPATH": str(site)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "declared twice" not in proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line and not line[0].isspace()}
    for name in ("classification", "detection", "segmentation"):
        assert "BROKEN" not in lines[name], lines[name]
    assert "visionkit_plugins.classification:ClassificationPlugin  [visionkit" in proc.stdout
    assert "BROKEN" in lines["dup"] and "vk-clash-a 1.0" in lines["dup"] and "vk_clash_b:Plugin" in lines["dup"]


def test_a_runtime_declared_by_two_packages_is_refused_alone(installed):
    from visionkit.errors import UserError
    from visionkit.runtime.tasks import task_runtime

    assert task_runtime("classification").name == "classification"
    with pytest.raises(UserError) as info:  # used to load vk_clash_a's silently (an import error here)
        task_runtime("dup")
    message = str(info.value)
    assert "\n" not in message
    for part in ("'dup'", "vk-clash-a 1.0", "vk_clash_a.runtime:Runtime", "vk-clash-b 2.0", "vk_clash_b.runtime:Runtime"):
        assert part in message, message


def test_a_runtime_that_shadows_a_built_in_one_is_refused(tmp_path, monkeypatch):
    """The built-in runtimes are entry points like a third party's: a second declaration of one
    is refused as any clash is, naming both packages."""
    from visionkit.errors import UserError
    from visionkit.runtime.tasks import task_runtime

    fake_distribution(tmp_path, "vk-shadow", "1.0", {"visionkit.runtime": {"segmentation": "vk_shadow:Runtime"}})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert task_runtime("detection").name == "detection"
    with pytest.raises(UserError, match=r"'segmentation'.*visionkit \S+ \(visionkit_plugins\.segmentation\.runtime:SegmentationRuntime\) and "
                                  r"vk-shadow 1.0 \(vk_shadow:Runtime\)"):
        task_runtime("segmentation")
