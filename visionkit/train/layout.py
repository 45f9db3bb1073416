"""How many Ray workers, and what each holds: ``ray.num_workers: auto`` resolved against the cluster.

On CPUs, two processes on the same cores do not train faster than one that uses them all: they
split the cores, all-reduce every gradient between them, and each runs steps too small to fill
its threads. So ``auto`` is one worker per node holding all of that node's CPUs on CPU-only
clusters, and one worker per GPU (with its share of the node's CPUs) on GPU clusters. Every
worker runs torch with as many intra-op threads as CPUs it was given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ConfigError


@dataclass(frozen=True)
class Layout:
    num_workers: int
    resources_per_worker: dict[str, float]
    placement_strategy: str
    threads: int  # torch intra-op threads per worker

    def describe(self) -> str:
        gpu = self.resources_per_worker.get("GPU", 0)
        each = f"{self.threads} CPU thread{'s' * (self.threads != 1)}" + (f", {gpu:g} GPU" if gpu else "")
        return f"{self.num_workers} Ray worker{'s' * (self.num_workers != 1)} ({each} each)"


def cluster_nodes() -> list[dict[str, float]]:
    """Each alive node's total resources (the driver must be connected to Ray)."""
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def threads_for(resources: dict[str, float]) -> int:
    return max(1, int(math.floor(resources.get("CPU", 1) + 1e-9)))


def resolve(ray_cfg, nodes: list[dict[str, float]], source: str = "config") -> Layout:
    """``nodes``: each node's total resources (``CPU``, ``GPU``, custom ones)."""
    requested: Optional[dict[str, float]] = ray_cfg.resources_per_worker
    strategy = ray_cfg.placement_strategy
    if ray_cfg.num_workers != "auto":
        resources = dict(requested) if requested is not None else {"CPU": 1.0}
        if ray_cfg.use_gpu:
            resources.setdefault("GPU", 1.0)
        return Layout(int(ray_cfg.num_workers), resources, strategy, threads_for(resources))
    if requested is not None:
        # The user sized a worker: as many as fit on the cluster.
        fits = sum(min(int(node.get(k, 0) // v) for k, v in requested.items() if v > 0) if any(
            v > 0 for v in requested.values()) else 0 for node in nodes)
        if fits < 1:
            raise ConfigError(f"{source}: ray.num_workers: auto: no node has room for one worker of "
                              f"ray.resources_per_worker {requested}")
        return Layout(fits, dict(requested), strategy, threads_for(requested))
    if ray_cfg.use_gpu:
        gpu_nodes = [n for n in nodes if n.get("GPU", 0) >= 1]
        if not gpu_nodes:
            raise ConfigError(f"{source}: ray.use_gpu: true, but the cluster has no GPU; set ray.use_gpu: false")
        workers = sum(int(n["GPU"]) for n in gpu_nodes)
        cpus = max(1, min(int(n.get("CPU", 1) // int(n["GPU"])) for n in gpu_nodes))
        return Layout(workers, {"CPU": float(cpus), "GPU": 1.0}, strategy, cpus)
    cpu_nodes = [n for n in nodes if n.get("CPU", 0) >= 1]
    if not cpu_nodes:
        raise ConfigError(f"{source}: ray.num_workers: auto: the cluster has no node with a CPU")
    cpus = min(int(n["CPU"]) for n in cpu_nodes)
    # One worker per node: spread them, or two could share a bigger node's CPUs.
    return Layout(len(cpu_nodes), {"CPU": float(cpus)}, "SPREAD" if len(cpu_nodes) > 1 else strategy, cpus)


def as_job(layout: Layout) -> dict[str, Any]:
    return {"threads": layout.threads, "num_workers": layout.num_workers,
            "resources_per_worker": layout.resources_per_worker}
