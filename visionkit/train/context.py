"""Where the training loop runs: a Ray Train worker, or this process (``ray.num_workers: 0``).

The loop talks only to this small interface, so the same code runs under Ray with N workers and
in-process for debugging and fast tests. Everything Ray-specific stays in :class:`RayWorker`.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from .. import checkpoint
from ..checkpoint import Checkpoint
from ..errors import UserError
from ..storage import download, is_remote

STATE_FILE = "last.pt"


class LocalWorker:
    """The loop in the calling process: one worker, no Ray, no DDP."""

    rank = 0
    world_size = 1

    def __init__(self, use_gpu: bool = False, resume_from: Optional[str] = None, s3_endpoint: Optional[str] = None):
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self._resume_from, self._s3_endpoint = resume_from, s3_endpoint

    def describe(self) -> dict[str, Any]:
        """Where this worker runs (``workers.json``)."""
        return {"rank": self.rank, "hostname": socket.gethostname(), "pid": os.getpid(), "device": str(self.device)}

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def restored_state(self) -> Optional[Checkpoint]:
        """``--resume``'s checkpoint file: a path, or an object-store URI fetched by each worker."""
        return self._load(self._resume_from) if self._resume_from else None

    def _load(self, uri: str) -> Checkpoint:
        if not is_remote(uri):
            return checkpoint.load(Path(uri))
        with tempfile.TemporaryDirectory(prefix="visionkit-resume-") as tmp:
            local = download(uri, self._s3_endpoint, Path(tmp) / "last.pt")
            return checkpoint.load(local, where=uri)

    def checkpoint_for_eval(self, job: dict[str, Any]) -> Checkpoint:
        return checkpoint.load(Path(job["checkpoint"]))

    def eval_result(self, job: dict[str, Any], payload: dict[str, Any]) -> None:
        import json

        from ..fileio import atomic_write_text

        atomic_write_text(Path(job["output"]), json.dumps(payload, indent=1))

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj]

    def sync_buffers(self, model: torch.nn.Module) -> None:
        pass

    def report(self, metrics: dict[str, Any], state_file: Optional[Path]) -> None:
        pass

    def progress(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True, mininterval=0.5)


class RayWorker(LocalWorker):
    """A Ray Train worker: DDP model, distributed sampler, checkpoints reported to Ray."""

    def __init__(self, resume_from: Optional[str] = None, s3_endpoint: Optional[str] = None, threads: int = 1,
                 run_state: Optional[str] = None):
        """``run_state``: the run's own ``checkpoints/last.pt``, which a restart compares with Ray's."""
        import ray.train
        import ray.train.torch

        from .raylogs import quiet

        quiet()
        torch.set_num_threads(threads)  # the CPUs this worker was given (ray.resources_per_worker)
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._resume_from, self._s3_endpoint, self._run_state = resume_from, s3_endpoint, run_state

    def describe(self):
        import ray

        return {**super().describe(), "node_id": ray.get_runtime_context().get_node_id(),
                "node_ip": ray.util.get_node_ip_address()}

    def prepare_model(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def checkpoint_for_eval(self, job):
        """The driver's file, sent as bytes through Ray's object store."""
        import ray

        with tempfile.TemporaryDirectory(prefix="visionkit-eval-") as tmp:
            local = Path(tmp) / "checkpoint.pt"
            local.write_bytes(ray.get(job["checkpoint_ref"]))
            return checkpoint.load(local, where=job["checkpoint"])

    def eval_result(self, job, payload):
        """Handed to the driver's actor: eval.json is written where the driver runs."""
        import ray

        ray.get(job["result_box"].put.remote(payload))

    def restored_state(self):
        """The later of Ray's latest checkpoint (a restart after a failure) and the run's own
        ``last.pt`` (``--resume``'s file), which can be ahead of Ray's: rank 0 writes it (and the
        epoch's line of metrics.jsonl) just before it reports to Ray, so a worker lost in between
        restarts from Ray's older checkpoint, or from none; a run continued in-process
        (``--debug-local``) moved it past Ray's too. Every worker takes the same one."""
        import ray.train

        reported = ray.train.get_checkpoint()
        ray_state = None
        if reported is not None:
            with reported.as_directory() as d:
                ray_state = checkpoint.load(Path(d) / STATE_FILE)
        own = self._own_state()
        # A worker that cannot read the run's file (a run directory not shared between nodes)
        # makes every worker take Ray's: they must all start from the same epoch.
        epochs = self.all_gather(own.epoch if own is not None else None)
        if own is not None and all(e == own.epoch for e in epochs) and (ray_state is None or own.epoch > ray_state.epoch):
            return own
        if ray_state is None:
            return super().restored_state()  # --resume's file where a worker lacks it: its one-line error
        return ray_state

    def _own_state(self) -> Optional[Checkpoint]:
        uri = self._run_state or self._resume_from
        if not uri:
            return None
        try:
            return self._load(uri)
        except (OSError, UserError):  # not written yet (no epoch finished), or not on this node
            return None

    def progress(self, total, desc):
        # Drawn by the driver: plain tqdm's carriage returns garble forwarded worker logs.
        from ray.experimental.tqdm_ray import tqdm

        return tqdm(total=total, desc=desc, unit="step")

    def all_gather(self, obj):
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def sync_buffers(self, model):
        """Rank 0's BatchNorm statistics everywhere: after its last local batch each worker's
        differ, and the evaluated model must be the one rank 0 saves."""
        if self.world_size > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)

    def report(self, metrics, state_file):
        """A barrier on every worker; rank 0 hands Ray the checkpoint for failure recovery."""
        import ray.train

        if state_file is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="visionkit-ckpt-") as tmp:
            # A hard link costs nothing; Ray copies it into the run's storage.
            target = Path(tmp) / STATE_FILE
            try:
                target.hardlink_to(state_file)
            except OSError:
                import shutil

                shutil.copy2(state_file, target)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
