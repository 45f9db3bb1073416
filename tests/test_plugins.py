"""Plugin discovery through entry points: a third-party package is found like the built-ins."""

import textwrap

import pytest
import yaml

from conftest import pip, run_cli


def test_builtin_plugins_are_listed_with_their_origin():
    proc = run_cli("plugins")
    assert "classification" in proc.stdout
    assert "visionkit_plugins.classification:ClassificationPlugin  [visionkit" in proc.stdout


def test_third_party_plugin_is_discovered_and_trains_through_the_cli(toy_plugin, tmp_path):
    proc = run_cli("plugins")
    assert "toy vectors (third-party test plugin)" in proc.stdout
    assert "vk_toy.plugin:ToyPlugin  [vk-toy-plugin 0.0.1]" in proc.stdout

    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({
        "task": "toy", "train": {"epochs": 8, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.01}},
        "ray": {"num_workers": 0}, "output": {"storage_path": str(tmp_path), "name": "toy"}}))
    proc = run_cli("train", str(config))
    assert proc.returncode == 0, proc.stderr
    best = yaml.safe_load((tmp_path / "toy" / "eval_best.json").read_text())
    assert best["accuracy"] >= 0.85 and best["seen"] == 100
    # its export and serving: tests/test_toyplugin_deploy.py


@pytest.fixture
def broken_plugin(tmp_path):
    pkg = tmp_path / "broken"
    (pkg / "vk_broken").mkdir(parents=True)
    (pkg / "vk_broken" / "__init__.py").write_text("import a_module_that_does_not_exist\n")
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "vk-broken-plugin"
        version = "0.0.1"
        [project.entry-points."visionkit.tasks"]
        broken = "vk_broken:Plugin"
        [tool.setuptools]
        packages = ["vk_broken"]
    """))
    pip("install", "--no-deps", "--no-build-isolation", str(pkg))
    yield "broken"
    pip("uninstall", "-y", "vk-broken-plugin")


def test_broken_plugin_is_named_with_its_cause_and_does_not_hide_others(broken_plugin, tmp_path):
    proc = run_cli("plugins")
    assert proc.returncode == 1
    assert "classification" in proc.stdout and "visionkit_plugins.classification" in proc.stdout
    line = next(l for l in proc.stdout.splitlines() if l.startswith("broken"))
    assert "vk_broken:Plugin" in line and "vk-broken-plugin 0.0.1" in line
    assert "No module named 'a_module_that_does_not_exist'" in line
    config = tmp_path / "b.yaml"
    config.write_text("task: broken\n")
    proc = run_cli("train", str(config))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "task plugin 'broken'" in proc.stderr and "a_module_that_does_not_exist" in proc.stderr


def test_a_plugin_that_cannot_be_created_is_named_with_the_cause():
    import pytest

    from visionkit.errors import PluginError
    from visionkit.registry import PluginEntry

    abstract = PluginEntry("half", "visionkit.plugin:TaskPlugin", "half 0.1")  # abstract methods left out
    with pytest.raises(PluginError, match=r"task plugin 'half' .* cannot be created: TypeError: .*abstract"):
        abstract.load()
    wrong = PluginEntry("path", "pathlib:Path", "path 0.1")
    with pytest.raises(PluginError, match="is a Path, expected a visionkit.plugin.TaskPlugin subclass"):
        wrong.load()
