"""The driver of ``visionkit tune``: check the search, lay out the tune directory, run Ray Tune.

Everything a user can get wrong (the space, the scheduler, Optuna missing, the data) is checked
before Ray starts. The search itself is Ray Tune's: its searchers (random/grid, Optuna's TPE),
its schedulers (FIFO, ASHA), its experiment state (``Tuner.restore`` for ``--resume``).

A tune directory::

    TUNE_DIR/tune.yaml          the search as given (resolved config with its tune: section)
    TUNE_DIR/trials/<trial id>/ one normal visionkit run per trial (config.yaml, metrics.jsonl, checkpoints/)
    TUNE_DIR/ray_tune/          Ray Tune's experiment state (what --resume restores)
    TUNE_DIR/results.csv, best.yaml, plots/trials.png   written when the search ends
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from .. import tracking
from ..config import Config, apply_overrides, read_yaml, resolved_dict, task_configs, validate_section
from ..errors import ConfigError, UserError
from ..storage import LocalRun, RunStore, default_endpoint, is_remote, split_run_uri
from .space import check_optuna_installed, parse_space

TUNE_FILE = "tune.yaml"
STATE_DIR = "ray_tune"  # Ray Tune's experiment directory inside the tune directory
TRIAL_DRIVER_MEMORY = 512 * 1024**2  # bytes a trial's own process (the Train driver) reserves


def _validator(plugin, check_devices):
    """Validates a whole trial config the way ``visionkit train`` would, message without a source."""
    def validate(raw: dict[str, Any]) -> None:
        try:
            cfg = validate_section(Config, raw, "\0")
            task_configs(cfg, plugin, "\0")
            check_devices(cfg, "\0")
        except ConfigError as exc:
            raise ConfigError(str(exc).removeprefix("\0: ")) from None
    return validate


def _section_models(plugin) -> dict[str, type]:
    """The model of each top-level section of a trial's config (the core's and the task's)."""
    from .space import section_model

    models = {name: section_model(field.annotation) for name, field in Config.model_fields.items()}
    models.update(data=plugin.DataConfig, model=plugin.ModelConfig, loss=plugin.LossConfig)
    return {name: model for name, model in models.items() if model is not None}


class Search:
    """A checked search: its config, task plugin, parameters and tune directory."""

    def __init__(self, raw: dict[str, Any], source: str, base_dir: Path):
        from ..train import launch

        cfg = validate_section(Config, raw, source)
        if cfg.tune is None:
            raise ConfigError(f"{source}: no tune: section; add tune.space (a config key mapped to a distribution, "
                              "e.g. train.optimizer.lr: {loguniform: [1e-4, 1e-2]}): see README, Search hyperparameters")
        if cfg.ray.num_workers == 0:
            raise ConfigError(f"{source}: ray.num_workers: 0 trains in one process; each trial of a search runs on Ray "
                              "workers of its own: set a count or auto")
        t = cfg.tune
        if t.scheduler.name == "asha" and t.scheduler.grace_period >= cfg.train.epochs:
            raise ConfigError(f"{source}: tune.scheduler.grace_period ({t.scheduler.grace_period}) must be < "
                              f"train.epochs ({cfg.train.epochs}): every trial runs that many epochs before ASHA may "
                              "stop it, and a stop at the last epoch saves nothing")
        if t.search == "optuna":
            missing = check_optuna_installed()
            if missing:
                raise UserError(f"{source}: {missing}")
        self.plugin = launch._plugin_for(cfg, source)
        sections = task_configs(cfg, self.plugin, source, base=base_dir)
        launch._check_devices(cfg, source)
        # MLflow there and answering, once for the search (each trial's driver opens its own run);
        # a relative directory URI becomes absolute here, not inside a trial's working directory.
        tracking.driver(cfg, source)
        self.cfg, self.source, self.sections = cfg, source, sections
        self.resolved = resolved_dict(cfg, sections)
        self.base = {k: v for k, v in self.resolved.items() if k != "tune"}
        try:
            self.params = parse_space(t.space, self.base, _validator(self.plugin, launch._check_devices),
                                      asha=t.scheduler.name == "asha", optuna=t.search == "optuna",
                                      sections=_section_models(self.plugin))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        metric = self.plugin.MetricClass
        self.primary, self.higher_is_better = metric.primary, metric.higher_is_better

    @property
    def mode(self) -> str:
        return "max" if self.higher_is_better else "min"


def _open_dir(storage_path: str, name: str, endpoint: Optional[str]):
    if is_remote(storage_path):
        return RunStore(storage_path, name, endpoint)
    return LocalRun(Path(storage_path).resolve() / name)


def resume_command(tune_dir) -> str:
    """The command that continues a search. An object store's endpoint cannot be read from the
    tune.yaml that lies behind it: unless the environment gives it (AWS_ENDPOINT_URL_S3, ...),
    the command carries it, so that it works as printed."""
    command = f"visionkit tune --resume {tune_dir.uri}"
    endpoint = getattr(tune_dir, "s3_endpoint", None)
    if endpoint and endpoint != default_endpoint():
        command += f" output.s3_endpoint={endpoint}"
    return command


def _new_tune_dir(search: Search, config_path: str):
    out = search.cfg.output
    name = out.name or f"{Path(config_path).stem}-tune-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ConfigError(f"{search.source}: output.name: {name!r} must be one folder name (put parent folders in "
                          "output.storage_path)")
    endpoint = (out.s3_endpoint or default_endpoint()) if is_remote(out.storage_path) else None
    tune_dir = _open_dir(out.storage_path, name, endpoint)
    # A directory whose search never started (a wrong address, a cluster without room) is reused.
    if tune_dir.exists(f"{STATE_DIR}/tuner.pkl"):
        raise UserError(f"{tune_dir.uri}: tune directory exists; continue it with {resume_command(tune_dir)}, "
                        "or set output.name")
    # Saved with the search: every trial (and a resume) uses the same store and endpoint.
    for config in (search.resolved, search.base):
        config["output"].update(storage_path=tune_dir.storage_path, name=name, s3_endpoint=endpoint)
    return tune_dir


def _open_resumed(target: str, overrides: list[str]):
    from ..train.launch import _override

    unknown = [o for o in overrides if not o.startswith("output.s3_endpoint=")]
    if unknown:
        raise UserError(f"tune --resume: the search continues as saved in {TUNE_FILE}; it takes no overrides "
                        f"(only output.s3_endpoint=URL), got {unknown[0]!r}")
    if is_remote(target):
        storage_path, name = split_run_uri(target)
        tune_dir = RunStore(storage_path, name, _override(overrides, "output.s3_endpoint") or default_endpoint())
    else:
        tune_dir = LocalRun(Path(target).resolve())
    if not tune_dir.exists(TUNE_FILE) or not tune_dir.exists(f"{STATE_DIR}/tuner.pkl"):
        raise UserError(f"{tune_dir.uri}: not a visionkit tune directory (no {TUNE_FILE} and {STATE_DIR}/tuner.pkl); "
                        "give the directory visionkit tune printed")
    return tune_dir


def trials_that_fit(layout, nodes: list[dict[str, float]]) -> int:
    """How many trials of ``layout`` (workers x resources_per_worker) the cluster runs at once."""
    need = {k: v for k, v in layout.resources_per_worker.items() if v > 0}
    if not need:
        return 1
    slots = [min(int(node.get(k, 0) // v) for k, v in need.items()) for node in nodes]
    if layout.placement_strategy == "STRICT_PACK":
        return max(1, sum(s // layout.num_workers for s in slots))
    return max(1, sum(slots) // layout.num_workers)


def tune(config_path: Optional[str], overrides: list[str], resume: Optional[str] = None,
         address: Optional[str] = None):
    """Runs (or continues) a search; returns the tune directory (a URI for an object store)."""
    if resume:
        tune_dir = _open_resumed(resume, list(overrides))
        label = f"{tune_dir.uri}/{TUNE_FILE}"
        with tempfile.TemporaryDirectory(prefix="visionkit-") as tmp:
            saved = Path(tmp) / TUNE_FILE
            saved.write_bytes(tune_dir.read_bytes(TUNE_FILE))
            raw = read_yaml(saved, label)
        search = Search(raw, label, Path.cwd())
        # The endpoint that reached the store (tune.yaml's may be out of date): for every trial and best.yaml.
        for config in (search.resolved, search.base):
            config["output"]["s3_endpoint"] = getattr(tune_dir, "s3_endpoint", None)
    else:
        raw = apply_overrides(read_yaml(Path(config_path)), list(overrides))
        search = Search(raw, config_path + (" (with command-line overrides)" if overrides else ""), Path.cwd())
        from ..train.launch import _preflight

        _preflight(search.plugin, search.sections, source=search.source)  # bad data fails here, not in every trial
        from ..pretrained import check_section

        check_section(search.sections.model, search.source)  # model.pretrained's file cached and intact, likewise
        tune_dir = _new_tune_dir(search, config_path)
        tune_dir.write_bytes(TUNE_FILE, yaml.safe_dump(search.resolved, sort_keys=False).encode())
    results = _run(search, tune_dir, restore=bool(resume), address=address or search.cfg.ray.address)
    from .results import summarize

    trials = summarize(search, tune_dir, results)
    if any(t.status == "incomplete" for t in trials):
        raise KeyboardInterrupt  # Tune ended the search early on Ctrl-C: the command did not finish it
    return tune_dir.uri if tune_dir.remote else tune_dir.local


def _trial_name(trial) -> str:
    return trial.trial_id


def _run(search: Search, tune_dir, restore: bool, address: Optional[str]):
    from ray import tune as ray_tune

    from ..train.launch import init_ray
    from ..train.layout import cluster_nodes, resolve
    from .results import TrialTable
    from .trial import trainable

    cfg, t = search.cfg, search.cfg.tune
    init_ray(address, dashboard=True)
    tune_log = logging.getLogger("ray.tune.execution.tune_controller")
    if not any(isinstance(f, _UserErrorsInOneLine) for f in tune_log.filters):
        tune_log.addFilter(_UserErrorsInOneLine())
    if t.scheduler.name != "fifo":
        _note_state_api(address)
    nodes = cluster_nodes()
    layout = resolve(cfg.ray, nodes, search.source)
    fit = trials_that_fit(layout, nodes)
    concurrent = t.max_concurrent_trials or fit
    job = {"base": search.base, "trials": f"{tune_dir.uri}/trials", "primary": search.primary,
           "s3_endpoint": search.base["output"].get("s3_endpoint")}
    # The trial is only the Train driver: no CPU (its Train workers ask for theirs), so trials
    # fit side by side as workers x resources_per_worker allow. Tune refuses an empty request:
    # the driver asks for the memory it holds (torch and the task plugin imported).
    trial = ray_tune.with_resources(trainable(job), {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY})
    root, filesystem = tune_dir.ray_storage()
    tune_path = f"{root}/{tune_dir.name}"  # inside ``filesystem`` for an object store
    trials = t.num_samples * math.prod(len(p.args) for p in search.params if p.kind == "grid")
    print(f"[visionkit] tune: {trials} trial(s) of {cfg.task}, {t.search} search, {t.scheduler.name} scheduler, "
          f"metric {search.primary} ({'higher' if search.higher_is_better else 'lower'} is better); each trial "
          f"{layout.describe()}, up to {concurrent} at a time ({fit} fit the cluster); tune directory {tune_dir.uri}",
          flush=True)
    if concurrent > fit:
        print(f"[visionkit] tune.max_concurrent_trials {concurrent} > the {fit} trial(s) that fit: the others wait "
              "for room (up to ray.placement_timeout_s each)", flush=True)
    if restore:
        print(f"[visionkit] tune: resuming {tune_dir.uri}: finished trials are kept, the others continue "
              "from their last checkpoint", flush=True)
        tuner = ray_tune.Tuner.restore(f"{tune_path}/{STATE_DIR}", trainable=trial, resume_unfinished=True,
                                       resume_errored=True, storage_filesystem=filesystem)
        return tuner.fit()
    tuner = ray_tune.Tuner(
        trial,
        param_space={p.key: p.domain() for p in search.params},
        tune_config=ray_tune.TuneConfig(
            metric=search.primary, mode=search.mode, num_samples=t.num_samples,
            # Tune applies max_concurrent_trials to a Searcher (Optuna) only; the random/grid
            # generator takes its own limit (_searcher).
            max_concurrent_trials=concurrent if t.search == "optuna" else None,
            search_alg=_searcher(search, concurrent), scheduler=_scheduler(search), reuse_actors=False,
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=ray_tune.RunConfig(
            name=STATE_DIR, storage_path=tune_path, storage_filesystem=filesystem, verbose=0,
            # Failures have one owner: Ray Train restarts a trial's workers from the trial's
            # checkpoint, per ray.max_failures. Tune does not retry on top (that would multiply
            # the restarts); a trial whose own process died is errored, and --resume continues it.
            failure_config=ray_tune.FailureConfig(max_failures=0),
            callbacks=[TrialTable([p.key for p in search.params], search.primary, search.higher_is_better,
                                  cfg.train.epochs)]))
    return tuner.fit()


class _UserErrorsInOneLine(logging.Filter):
    """Tune logs a failed trial with its traceback; a user mistake in a trial (training diverged,
    a value the task refuses) is its one line, as the summary shows it."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ..train.launch import _user_error_in

        found = _user_error_in(record.exc_info[1]) if record.exc_info else None
        if found is not None:
            record.msg, record.args = f"{record.getMessage()}: {found}", ()
            record.exc_info = record.exc_text = None
        return True


def _note_state_api(address: Optional[str]) -> None:
    """A trial the scheduler stops aborts its Train run itself (trial.py); should the trial's
    process go first, Ray Train's detached cleaner frees the run's placement group, and it asks
    Ray's state API (served by the dashboard) whether the run's controller is gone. Without
    one, say so: such a run's CPUs would stay taken."""
    from ray.util.state import list_actors

    try:
        list_actors(limit=1, timeout=30, raise_on_missing_output=False)
    except Exception as exc:  # noqa: BLE001  (ConnectionError, RayStateApiException, ...)
        print(f"[visionkit] tune: the Ray cluster{' at ' + address if address else ''} has no state API (no dashboard: "
              f"{type(exc).__name__}); a stopped trial whose Train run cannot be aborted in time keeps its CPUs. "
              "Start the head with its dashboard (ray start --head --include-dashboard=true)", flush=True)


def _scheduler(search: Search):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from .trial import EPOCHS

    s = search.cfg.tune.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    # Rungs in epochs (the trial's "epochs" result), up to train.epochs.
    # Rungs at grace_period x reduction_factor^k epochs, before the last epoch: a stop there would
    # save nothing and only cut the finished run's wrap-up (report.html). stop_last_trials=False:
    # a trial past its last rung is left to end by itself.
    return ASHAScheduler(time_attr=EPOCHS, max_t=search.cfg.train.epochs - 1, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor, stop_last_trials=False)


def _searcher(search: Search, concurrent: int):
    t = search.cfg.tune
    if t.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=t.seed)  # TPE, Optuna's default sampler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=t.seed, max_concurrent=concurrent)
