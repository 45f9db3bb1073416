"""``ray.num_workers: auto`` against the cluster's nodes: one worker per CPU node holding its
CPUs, one per GPU with its share; explicit counts as written."""

import os

import pytest

from visionkit.config import RayConfig
from visionkit.errors import ConfigError
from visionkit.train.layout import resolve


def test_auto_on_cpu_nodes_is_one_worker_per_node_with_all_its_cpus():
    one = resolve(RayConfig(), [{"CPU": 2.0, "memory": 1e9}])
    assert (one.num_workers, one.resources_per_worker, one.threads) == (1, {"CPU": 2.0}, 2)
    assert one.describe() == "1 Ray worker (2 CPU threads each)"
    two = resolve(RayConfig(), [{"CPU": 16.0}, {"CPU": 8.0}, {"memory": 1e9}])  # a node without CPUs is no place
    assert (two.num_workers, two.resources_per_worker, two.placement_strategy) == (2, {"CPU": 8.0}, "SPREAD")


def test_auto_on_gpu_nodes_is_one_worker_per_gpu_with_its_share_of_cpus():
    layout = resolve(RayConfig(use_gpu=True), [{"CPU": 16.0, "GPU": 4.0}, {"CPU": 8.0, "GPU": 2.0}, {"CPU": 4.0}])
    assert (layout.num_workers, layout.resources_per_worker, layout.threads) == (6, {"CPU": 4.0, "GPU": 1.0}, 4)
    with pytest.raises(ConfigError, match="ray.use_gpu: true, but the cluster has no GPU"):
        resolve(RayConfig(use_gpu=True), [{"CPU": 8.0}])


def test_explicit_counts_and_sizes_are_kept():
    assert resolve(RayConfig(num_workers=2), [{"CPU": 2.0}]).resources_per_worker == {"CPU": 1.0}
    sized = resolve(RayConfig(num_workers=3, resources_per_worker={"CPU": 4}), [{"CPU": 2.0}])
    assert (sized.num_workers, sized.threads) == (3, 4)
    assert resolve(RayConfig(num_workers=2, use_gpu=True), []).resources_per_worker == {"CPU": 1.0, "GPU": 1.0}
    # auto with a worker size: as many as fit
    fit = resolve(RayConfig(resources_per_worker={"CPU": 2}), [{"CPU": 8.0}, {"CPU": 3.0}])
    assert (fit.num_workers, fit.threads) == (5, 2)
    with pytest.raises(ConfigError, match="no node has room"):
        resolve(RayConfig(resources_per_worker={"CPU": 16}), [{"CPU": 8.0}])


def test_num_workers_accepts_auto_or_a_count_and_nothing_else():
    from visionkit.config import validate_section

    assert validate_section(RayConfig, {"num_workers": "auto"}, "c").num_workers == "auto"
    assert validate_section(RayConfig, {"num_workers": 0}, "c").num_workers == 0
    for bad in ("many", -1):
        with pytest.raises(ConfigError, match="ray.num_workers|num_workers"):
            validate_section(RayConfig, {"num_workers": bad}, "c", prefix="ray")


def test_the_embedded_ray_runs_its_workers_at_normal_priority():
    """Ray's default (nice 15) let any other busy process take most of the CPU from the training;
    a plain PyTorch script keeps its share, and so must the demo. And with stdout not a terminal
    (a log file, CI), the workers' lines the driver prints carry no colour escape codes."""
    import subprocess
    import sys

    code = ("import os, time, ray\nfrom visionkit.train.launch import init_ray\ninit_ray(None, 1)\n"
            "def work():\n    print('[visionkit] a line from a worker', flush=True)\n    return os.nice(0)\n"
            "print('nice', ray.get(ray.remote(work).remote()))\ntime.sleep(3)\nray.shutdown()\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_worker_niceness", "RAY_ADDRESS", "RAY_COLOR_PREFIX")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert f"nice {os.nice(0)}" in out.stdout, out.stdout + out.stderr[-2000:]
    line = next(line for line in out.stdout.splitlines() if "a line from a worker" in line)
    assert "\x1b" not in line and line.endswith(") [visionkit] a line from a worker"), repr(line)
