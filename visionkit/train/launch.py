"""The driver side: resolve the config, check the data, start Ray Train, summarise the run."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from .. import checkpoint, tracking
from ..checkpoint import Checkpoint
from ..config import Config, apply_overrides, read_yaml, resolved_dict, task_configs, validate_section
from ..errors import ClusterError, ConfigError, UserError
from ..registry import get_plugin
from ..storage import LocalRun, RunStore, default_endpoint, is_remote, split_run_uri
from .runlog import METRICS_FILE, parse_metrics


def _plugin_for(cfg: Config, source: str):
    try:
        return get_plugin(cfg.task)
    except UserError as exc:
        raise type(exc)(f"{source}: task: {exc}") from None


def _check_devices(cfg: Config, source: str) -> None:
    if cfg.train.amp == "fp16" and not cfg.ray.use_gpu:
        raise ConfigError(f"{source}: train.amp: fp16 needs ray.use_gpu: true (on CPU use bf16 or off)")
    resources = cfg.ray.resources_per_worker or {}
    bad = {k: v for k, v in resources.items() if v < 0}
    if bad:
        raise ConfigError(f"{source}: ray.resources_per_worker: amounts must be >= 0, got {bad}")
    if resources.get("GPU", 0) > 0 and not cfg.ray.use_gpu:
        raise ConfigError(f"{source}: ray.resources_per_worker asks for GPU: {resources['GPU']:g} with ray.use_gpu: "
                          "false; set ray.use_gpu: true or drop the GPU entry")


def _preflight(plugin, sections, resumed: Optional[Checkpoint] = None, source: Optional[str] = None) -> None:
    """Builds the datasets once here so that bad data fails in a second, not after Ray starts;
    a resumed run's classes must be the checkpoint's (a renamed folder would swap labels).
    ``source``: the config's name, for the model check's errors (as the config's own have it)."""
    from ..datacheck import preflight, preflight_line
    from ..datacheck.model import check_model

    datasets = {}
    for split in ("train", "val"):
        dataset = datasets[split] = plugin.build_dataset(sections.data, split)
        if len(dataset) == 0:
            raise UserError(f"data: the {split} split has no samples")
        if resumed is not None and split == "train":
            checkpoint.check_classes(resumed, dataset.classes, f"the training data ({getattr(sections.data, 'root', '')})")
        if split == "train" and getattr(sections.data, "balanced_sampling", False):
            from .balanced import sample_classes

            sample_classes(plugin, dataset)  # a task that cannot balance fails here, not on the workers
    # Image headers and ends (a corrupt, empty or truncated file, a size unlike the annotation's)
    # and the model a worker would build: both fail here, in one line, before Ray starts.
    report = preflight(plugin, datasets)
    print(f"[visionkit] {preflight_line(report)}", flush=True)  # what it read, since it reads a sample
    check_model(plugin, sections, datasets["train"].classes, source)


def _check_reachable(address: str) -> None:
    """A wrong address fails in seconds with one line, not after ray.init's long retries."""
    import socket

    if address in ("auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise UserError(f"--address {address}: that is the dashboard / Ray Jobs address (for `ray job submit`); "
                        "give the cluster's GCS address, e.g. head:6379, or ray://head:10001")
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected HOST:PORT (the head's GCS, e.g. head:6379) or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                        "check the host and port, or start one with `ray start --head`") from None


def init_ray(address: Optional[str], num_cpus: Optional[int] = None, dashboard: bool = False) -> None:
    """``dashboard``: start the embedded Ray with its dashboard (Ray's state API), which Ray Train's
    placement-group cleaner needs when a run's controller is killed (a Tune trial stopped early)."""
    import logging

    import ray

    if ray.is_initialized():
        return
    # The workers' lines come through this driver with a "(RayTrainWorker pid=...)" prefix in
    # colour; in a log file, CI or `ray job logs` the colour is escape codes: plain text there.
    if not _terminal():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except Exception as exc:  # no token, version mismatch, a GCS that is not Ray's, ...
            cause = exc
            while cause is not None and type(cause).__name__ != "AuthenticationError":
                cause = cause.__cause__
            if cause is not None:
                raise UserError(f"--address {address}: the cluster requires token authentication: set RAY_AUTH_MODE=token "
                                "and its token (RAY_AUTH_TOKEN, or ~/.ray/auth_token; `ray get-auth-token` on the head)") from None
            first = (str(exc).strip().splitlines() or [""])[0]
            raise UserError(f"--address {address}: could not join the Ray cluster: {type(exc).__name__}: {first}") from None
    else:
        # An embedded single-node Ray sized to this machine, quiet and small. Its token
        # authentication stays on; only the warning that announces it (to opt out) is dropped.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        # Ray starts its workers at nice 15, so that on a shared cluster node they yield to Ray's
        # own daemons. On the user's own machine the training worker is the job they are waiting
        # for: at 15 it ran at a fraction of the CPU beside any other busy process, where a plain
        # PyTorch script keeps its share. A user who wants it in the background sets the variable.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=dashboard,
                 object_store_memory=256 * 1024**2, logging_level=logging.WARNING,
                 runtime_env={"worker_process_setup_hook": "visionkit.train.raylogs.quiet"})


def _user_error_in(exc: BaseException | None) -> UserError | None:
    """Ray wraps a worker's exception (UserExceptionWithTraceback, RayTaskError): look inside."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "_base_exc", None) or getattr(exc, "cause", None)
        if inner is None and isinstance(exc, UserError):
            return exc
        exc = inner or exc.__cause__
    return None


def _actor_died(err: BaseException | None) -> bool:
    """The worker process is gone (killed, its node lost), as opposed to raising an error."""
    from ray.exceptions import RayActorError

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, RayActorError):
            return True
        err = getattr(err, "health_check_failure", None) or err.__cause__
    return False


def _last_placement(run) -> list[dict[str, Any]]:
    try:
        return json.loads(run.read_bytes("workers.json"))["attempts"][-1]["workers"]
    except Exception:
        return []


def _lost_nodes(run, failed_ranks: set[int], wait_s: float = 30.0) -> list[str]:
    """Nodes that ran this run's workers and are gone now, as ``node 1a2b3c4d (10.0.0.7) running rank 1``.

    A dead raylet is declared dead by the GCS after its health checks fail (about 15 s by
    default), so when a worker died without its own error, wait that long for the verdict."""
    import ray

    placement = [w for w in _last_placement(run) if w.get("node_id")]
    suspects = {w["node_id"] for w in placement if w["rank"] in failed_ranks}
    deadline = time.time() + (wait_s if suspects else 0)
    while True:
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        lost = sorted({w["node_id"] for w in placement} - alive)
        if lost or time.time() >= deadline:
            break
        time.sleep(1)
    out = []
    for node in lost:
        ranks = [w["rank"] for w in placement if w["node_id"] == node]
        ip = next(w.get("node_ip", "?") for w in placement if w["node_id"] == node)
        out.append(f"node {node[:8]} ({ip}) running rank{'s' * (len(ranks) > 1)} {', '.join(map(str, ranks))}")
    return out


def _cluster_free() -> str:
    import ray

    free = ray.available_resources()
    return ", ".join(f"{k} {v:g}" for k, v in sorted(free.items()) if k in ("CPU", "GPU") or not k.startswith(("node:", "memory", "object_store")))


def _raise_worker_failure(exc: BaseException, run, cfg: Config, layout) -> None:
    """A user mistake found on a worker is reported like one found here; a lost node or a
    cluster without room says what is missing and how to resume; a bug keeps its trace."""
    failures = getattr(exc, "worker_failures", None) or {}
    controller = getattr(exc, "controller_failure", None)
    for cause in list(failures.values()) + [controller, exc.__cause__]:
        found = _user_error_in(cause)
        if found is not None:
            raise type(found)(str(found)) from None
    if run is None:
        resume = ""
    elif run.exists("checkpoints/last.pt"):
        resume = f"resume with: visionkit train --resume {run.uri}"
    else:
        resume = "run it again (no epoch finished, nothing to resume)"
    died = {rank for rank, err in failures.items() if _actor_died(err)}
    lost = _lost_nodes(run, died) if run is not None else []
    lost_text = "; lost " + " and ".join(lost) if lost else ""
    if type(controller).__name__ == "WorkerGroupStartupTimeoutError":
        raise ClusterError(
            f"the cluster has no room for {layout.num_workers} worker(s) of {layout.resources_per_worker} "
            f"(waited {cfg.ray.placement_timeout_s:g}s, ray.placement_timeout_s){lost_text}; free now: {_cluster_free()}. "
            f"Add nodes or lower ray.num_workers, then {resume}") from None
    if lost or died:
        what = lost_text[2:] if lost else f"worker rank(s) {sorted(died)} died"
        raise ClusterError(f"{what} and ray.max_failures ({cfg.ray.max_failures}) allows no more restarts; "
                           f"{resume}") from None
    hint = f"\n{resume}" if resume else ""
    raise RuntimeError(f"training failed on a worker: {exc}{hint}") from exc


def _note_storage(run) -> None:
    """Every node writes to the run's storage: a plain directory must be shared between them."""
    import ray

    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if nodes > 1 and not run.remote:
        print(f"[visionkit] {nodes} nodes: {run.storage_path} must be the same shared directory on each "
              "(NFS, a shared volume), or set output.storage_path to s3://...", flush=True)


def _fit(entry, job: dict[str, Any], cfg: Config, run, address: Optional[str], max_failures: int,
         callbacks: Optional[list] = None) -> None:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from .callbacks import UserErrorsEndTheRun
    from .layout import as_job, cluster_nodes, resolve

    started_here = not ray.is_initialized()
    init_ray(address)
    layout = resolve(cfg.ray, cluster_nodes(), job.get("source", "config"))
    job["layout"] = as_job(layout)
    if "run_dir" in job:
        print(f"[visionkit] {cfg.task}: training on {layout.describe()}"
              f"{' (ray.num_workers: auto)' if cfg.ray.num_workers == 'auto' else ''}; run directory {run.uri}", flush=True)
        _note_storage(run)
    # Ray Train waits 60 s for a placement and then retries forever; a finite wait ends in a
    # message instead of a hang (a lost node the cluster cannot replace, a request too big).
    timeout = cfg.ray.placement_timeout_s
    if timeout is not None:
        os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(timeout)
    # The preemption watcher drains workers off spot nodes being reclaimed; on one node it has
    # nothing to watch, and its start logs a core_worker.cc error line the user cannot act on.
    if len(cluster_nodes()) == 1:
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    storage_path, filesystem = run.ray_storage()
    trainer = TorchTrainer(
        entry,
        train_loop_config=job,
        scaling_config=ray.train.ScalingConfig(
            num_workers=layout.num_workers, use_gpu=cfg.ray.use_gpu,
            resources_per_worker=layout.resources_per_worker,
            placement_strategy=layout.placement_strategy),
        run_config=ray.train.RunConfig(
            name=run.name, storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(
                max_failures=max_failures, controller_failure_limit=-1 if timeout is None else 0),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            # Worker prints go straight to stdout once, not also through Ray Train's logger.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
            callbacks=[UserErrorsEndTheRun(), *(callbacks or [])]),
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        try:
            _raise_worker_failure(exc, run if "run_dir" in job else None, cfg, layout)
        finally:
            if started_here:
                ray.shutdown()  # stops forwarding the workers' logs: the error stays the last line


def _override(overrides: list[str], key: str) -> Optional[str]:
    from ..config import parse_override

    found = None
    for text in overrides:
        parts, value = parse_override(text)
        if ".".join(parts) == key:
            found = value
    return found


def _open_resumed(target: str, overrides: list[str]):
    """The run to continue, local or in an object store, and its saved config as a file."""
    if is_remote(target):
        storage_path, name = split_run_uri(target)
        endpoint = _override(overrides, "output.s3_endpoint") or default_endpoint()
        run = RunStore(storage_path, name, endpoint)
    else:
        run = LocalRun(Path(target).resolve())
    if not run.exists("config.yaml"):
        raise UserError(f"{run.uri}: not a visionkit run directory (no config.yaml)")
    if not run.exists("checkpoints/last.pt"):
        raise UserError(f"{run.uri}/checkpoints/last.pt: no checkpoint to resume from (the run stopped before its first epoch ended)")
    return run


def _read_resumed(run) -> Checkpoint:
    """The checkpoint a resume continues, read here to check the resumed config against it."""
    uri = f"{run.uri}/checkpoints/last.pt"
    if not run.remote:
        return checkpoint.load(run.local / "checkpoints" / "last.pt", where=uri)
    with tempfile.TemporaryDirectory(prefix="visionkit-") as tmp:
        local = Path(tmp) / "last.pt"
        local.write_bytes(run.read_bytes("checkpoints/last.pt"))
        return checkpoint.load(local, where=uri)


def _new_run(cfg: Config, source_path: Path):
    out = cfg.output
    name = out.name or f"{source_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ConfigError(f"output.name: {name!r} must be one folder name (put parent folders in output.storage_path)")
    if is_remote(out.storage_path):
        out.s3_endpoint = out.s3_endpoint or default_endpoint()  # saved with the config, for every worker
        run = RunStore(out.storage_path, name, out.s3_endpoint)
    else:
        if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and not Path(out.storage_path).is_absolute():
            raise ConfigError(f"output.storage_path: {out.storage_path!r} is relative and this is a Ray job: the run "
                              "would land in the job's temporary working directory; give an absolute shared path or s3://...")
        run = LocalRun(Path(out.storage_path).resolve() / name)
    # A directory whose run stopped before its first checkpoint (a wrong address, no room on the
    # cluster) holds nothing to keep: the same command runs again there.
    if run.exists("checkpoints/last.pt"):
        raise UserError(f"{run.uri}: run directory exists; continue it with --resume {run.uri} or set output.name")
    out.storage_path, out.name = run.storage_path, name
    return run


def train(config_path: Optional[str], overrides: list[str], resume: Optional[str] = None,
          address: Optional[str] = None, callbacks: Optional[list] = None) -> Path | str:
    """Runs (or continues) one training run; returns its directory (a URI for an object store).
    ``callbacks``: Ray Train callbacks (a Tune trial's reporter, :mod:`visionkit.tune.trial`)."""
    resumed = None
    if resume:
        run = _open_resumed(resume, overrides)
        resumed = _read_resumed(run)
        label = f"{run.uri}/config.yaml"
        with tempfile.TemporaryDirectory(prefix="visionkit-") as tmp:
            saved = Path(tmp) / "config.yaml"
            saved.write_bytes(run.read_bytes("config.yaml"))
            raw = read_yaml(saved, label)
    else:
        label = config_path
        raw = read_yaml(Path(config_path))
    source = label + (" (with command-line overrides)" if overrides else "")
    if resumed is not None:
        # A plugin that changed its config sections since the run started upgrades them first.
        plugin = _plugin_for(validate_section(Config, raw, label), label)
        raw = checkpoint.upgraded_config(resumed, plugin, raw)
    cfg = validate_section(Config, apply_overrides(raw, list(overrides)), source)
    if resumed is not None:
        # The run may have been moved since: it continues where it is now.
        cfg.output.storage_path, cfg.output.name = run.storage_path, run.name
        if run.remote:
            cfg.output.s3_endpoint = run.s3_endpoint
    if resumed is None or cfg.task != plugin.name:  # loaded once; a changed task is refused by check_resume
        plugin = _plugin_for(cfg, source)
    sections = task_configs(cfg, plugin, source, base=Path.cwd())
    _check_devices(cfg, source)
    resolved = resolved_dict(cfg, sections)
    if resumed is not None:
        # Before anything is written: a refused override leaves config.yaml as it was.
        checkpoint.check_resume(resumed, resolved, sections.model, source)
    _preflight(plugin, sections, resumed, source)
    if resumed is None:  # published weights named and cached (a resume reads the checkpoint's);
        from ..pretrained import check_section  # after the model check: a misspelt model.name is did-you-mean

        check_section(sections.model, source)
    tracker = tracking.driver(cfg, source)  # MLflow there and answering: before anything is written
    resolved = resolved_dict(cfg, sections)  # with tracking.mlflow.uri made absolute

    if not resume:
        run = _new_run(cfg, Path(config_path))
        resolved = resolved_dict(cfg, sections)
    # A resume continues the MLflow run in RUN/mlflow.json. Opened before config.yaml is written:
    # a server that went away since the pre-flight leaves a resumed run's config.yaml as it was.
    tracked = tracker.begin(run, resolved, resumed)
    run.write_bytes("config.yaml", yaml.safe_dump(resolved, sort_keys=False).encode())

    # Progress bars only on a terminal: in a log file, CI or `ray job logs`, one line per epoch.
    job = {"config": resolved, "run_dir": run.uri, "source": source, "progress": cfg.train.progress and _terminal(),
           "resume_from": f"{run.uri}/checkpoints/last.pt" if resume else None, "mlflow": tracked,
           "run_state": f"{run.uri}/checkpoints/last.pt"}
    if cfg.ray.num_workers == 0:
        print(f"[visionkit] {cfg.task}: training in this process; run directory {run.uri}", flush=True)
    from . import loop

    tic = time.perf_counter()
    with tracker.watching():  # an MLflow run whose training raised is FAILED (KILLED on Ctrl-C)
        if cfg.ray.num_workers == 0:
            loop.local_train(job, cfg.ray.use_gpu)
        else:
            _fit(loop.ray_train_entry, job, cfg, run, address or cfg.ray.address, cfg.ray.max_failures, callbacks)
    print(final_summary(run, time.perf_counter() - tic), flush=True)
    _write_report(run)
    tracker.finish(run)  # plots/, report.html as artefacts; FINISHED
    return run.uri if run.remote else run.local


def _write_report(run) -> None:
    """report.html for the finished run; a page that cannot be drawn never fails the run."""
    from ..report import write_report

    try:
        print(f"[visionkit] report: {write_report(run)}", flush=True)
    except Exception as exc:  # noqa: BLE001  (the run's own files are all written by now)
        print(f"[visionkit] report.html not written: {type(exc).__name__}: {exc}; "
              f"retry with: visionkit report {run.uri} --debug", flush=True)


def _terminal() -> bool:
    import sys

    return sys.stdout.isatty()


def final_summary(run, seconds: float) -> str:
    rows = parse_metrics(run.read_bytes(METRICS_FILE).decode()) if run.exists(METRICS_FILE) else []
    lines = [f"[visionkit] finished {len(rows)} epoch(s) in {seconds:.0f}s"]
    if run.exists("eval_best.json"):
        best = json.loads(run.read_bytes("eval_best.json"))
        key = best["primary"]
        lines.append(f"[visionkit] best: {key} {best[key]:.4f} at epoch {best['epoch'] + 1} (eval_best.json)")
    lines.append(f"[visionkit] files: {run.uri}/ (config.yaml, metrics.jsonl, workers.json, tensorboard/, plots/, "
                 "checkpoints/best.pt, checkpoints/last.pt)")
    return "\n".join(lines)


def find_checkpoint(target: str) -> Path:
    if is_remote(target):
        raise UserError(f"{target}: evaluate a local copy: download RUN/checkpoints/best.pt from the store first "
                        "(e.g. aws s3 cp ... best.pt) and give that file")
    path = Path(target)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise UserError(f"{path}: no checkpoints/best.pt or checkpoints/last.pt in this directory")
    if not path.exists():
        raise UserError(f"{path}: no such run directory or checkpoint file")
    return path


class _ResultBox:
    """Receives rank 0's evaluation result on the driver's side (an actor: workers may run on
    other nodes, where the driver's paths do not exist)."""

    def __init__(self):
        self.value = None

    def put(self, value):
        self.value = value

    def get(self):
        return self.value


def evaluate(target: str, overrides: list[str], workers: int = 0, output: Optional[str] = None,
             address: Optional[str] = None) -> dict[str, Any]:
    path = find_checkpoint(target).resolve()
    ckpt = checkpoint.load(path)
    source = f"{path} (embedded config{' with overrides' if overrides else ''})"
    plugin = _plugin_for(validate_section(Config, ckpt.config, source), source)
    raw = apply_overrides(checkpoint.upgraded_config(ckpt, plugin), overrides)
    raw.setdefault("ray", {})["num_workers"] = workers
    cfg = validate_section(Config, raw, source)
    sections = task_configs(cfg, plugin, source, base=Path.cwd())
    val = plugin.build_dataset(sections.data, "val")
    checkpoint.check_classes(ckpt, val.classes, f"the validation data ({getattr(sections.data, 'root', '')})")
    del val
    if output:
        out = Path(output).resolve()
    elif path.parent.name == "checkpoints":
        out = path.parent.parent / "eval.json"  # RUN/checkpoints/best.pt -> RUN/eval.json
    else:
        out = path.with_suffix(".eval.json")
    out.unlink(missing_ok=True)  # never report a stale file if the job fails to write it
    job = {"config": resolved_dict(cfg, sections), "source": source, "checkpoint": str(path),
           "output": str(out)}
    from . import loop

    if workers == 0:
        loop.local_eval(job, cfg.ray.use_gpu)
        return json.loads(out.read_text())
    import ray

    started_here = not ray.is_initialized()
    init_ray(address or cfg.ray.address)
    box = ray.remote(num_cpus=0)(_ResultBox).remote()
    job.update(checkpoint_ref=ray.put(path.read_bytes()), result_box=box)
    try:
        with tempfile.TemporaryDirectory(prefix="visionkit-eval-") as storage:
            _fit(loop.ray_eval_entry, job, cfg, LocalRun(Path(storage) / "eval"), address, 0)
        payload = ray.get(box.get.remote())
    finally:
        if started_here:
            ray.shutdown()
    if payload is None:
        raise RuntimeError("evaluation finished without a result from rank 0")
    from ..fileio import atomic_write_text

    atomic_write_text(out, json.dumps(payload, indent=1))
    return payload
