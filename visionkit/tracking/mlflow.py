"""Tracking a run in MLflow (``tracking.mlflow``), through MLflow's client API (``MlflowClient``).

Who does what:

- the **driver**, before anything is written or any Ray worker starts, checks that MLflow is
  installed and that the tracking URI answers (:meth:`DriverTracker.preflight`: one line
  otherwise). Once the run directory exists it opens the MLflow run, or reopens the one named in
  the run directory's ``mlflow.json`` when the run is resumed, logs the resolved config as
  params and the tags, and writes ``mlflow.json`` (through the run's storage, so it is in the
  object store with the rest). At the end it logs ``plots/``, ``report.html``, ``config.yaml``
  and ``eval_best.json`` as artefacts and marks the run FINISHED (FAILED or KILLED when the
  training raised or was interrupted).
- **rank 0** logs each finished epoch's metrics with ``step = epoch``, after the epoch's
  checkpoint is written (:class:`EpochLogger`). When it starts, it first logs the epochs of
  ``metrics.jsonl`` that MLflow does not have yet (a run that crashed between its checkpoint
  and the log call, a run that turns tracking on when resumed), and it never logs an epoch
  MLflow already has: a resumed run replays an epoch bit for bit, so each step has one value.

A tracking server that fails in the middle of a run does not stop the training: the epoch is
reported as not logged, and a resume logs what is missing.

MLflow 3 keeps its file store (``./mlruns``) in maintenance mode and refuses to open it by
default, so a local directory as ``uri`` holds an SQLite store (``DIR/mlflow.db``) and the
artefacts beside it (``DIR/artifacts/``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from ..errors import ConfigError, UserError
from . import RUN_FILE

# MLflow 3 sends usage telemetry unless told not to; visionkit reaches no network unasked.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# The client prints "View run ... at ..." on every set_terminated; visionkit prints its own line.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

INSTALL = 'pip install "visionkit[mlflow]"'
PARAM_LIMIT = 6000  # MLflow's MAX_PARAM_VAL_LENGTH (3.x); read from MLflow when it has it
TAG_LIMIT = 8000


def _require(source: str):
    try:
        import mlflow  # noqa: F401
        from mlflow import MlflowClient
    except ImportError:
        raise ConfigError(f"{source}: tracking.mlflow needs MLflow, which is not installed here: {INSTALL}") from None
    for name in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
        import logging

        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient


@contextlib.contextmanager
def _requests(retries: int, timeout: int) -> Iterator[None]:
    """MLflow's HTTP client retries 7 times with back-off (minutes) by default: bounded here."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout),
             "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    before = {k: os.environ.get(k) for k in names}
    os.environ.update({k: v for k, v in names.items() if before[k] is None})  # a user's own setting wins
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)


def why(exc: BaseException) -> str:
    """One short line from an MLflow client error (whose text is a long requests traceback)."""
    text = str(exc).strip()
    found = re.search(r"\[Errno -?\d+\][^'\"\)]*", text)
    if found:
        return found.group(0).strip()
    if "Read timed out" in text or "timed out" in text:
        return "the request timed out"
    status = re.search(r"status code (\d{3})", text) or re.search(r"\b(40[13])\b", text)
    if status and status.group(1) in ("401", "403"):
        return (f"the server refused the request (HTTP {status.group(1)}): set MLFLOW_TRACKING_TOKEN, or "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    first = (text.splitlines() or [type(exc).__name__])[0]
    return first if len(first) <= 300 else first[:300] + "..."


def store_of(uri: str, source: str) -> tuple[str, Optional[Path], str]:
    """``(tracking URI, local artefact root or None, how to show it)`` for ``tracking.mlflow.uri``.
    Relative paths are made absolute here, on the driver: workers may run elsewhere."""
    if uri.startswith(("http://", "https://")):
        uri = uri.rstrip("/")
        return uri, None, uri
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):]).expanduser()
        kind = "sqlite"
    else:
        folder = Path(uri[len("file://"):] if uri.startswith("file://") else
                      uri[len("file:"):] if uri.startswith("file:") else uri).expanduser().resolve()
        if (folder / "0" / "meta.yaml").exists() or (folder / "meta.yaml").exists():
            raise ConfigError(f"{source}: tracking.mlflow.uri {uri}: an MLflow file store (MLflow 3 opens it no more): "
                              f"migrate it with `mlflow migrate-filestore`, or give sqlite:///FILE or another directory")
        db = folder / "mlflow.db"
        kind = "dir"
    db = db.resolve()
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{source}: tracking.mlflow.uri {uri}: cannot create {db.parent} "
                          f"({exc.strerror or exc})") from None
    if kind == "dir" and db.parent.is_file():
        raise ConfigError(f"{source}: tracking.mlflow.uri {uri}: {db.parent} is a file, not a directory")
    return f"sqlite:///{db}", db.parent / "artifacts", f"sqlite:///{db}"


def flatten(config: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """The resolved config as MLflow params: dotted keys, JSON values (lists, null), cut to the
    length MLflow accepts (the full file is logged as the ``config.yaml`` artefact)."""
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit
    except ImportError:
        limit = PARAM_LIMIT
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from flatten(value, name + ".")
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        if len(text) > limit:
            text = text[:limit - 15] + "...(truncated)"
        yield name, text


def epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    """What a ``metrics.jsonl`` row gives MLflow: its finite numbers, without the epoch and the clock stamps."""
    return {k: float(v) for k, v in row.items()
            if k != "epoch" and not k.endswith("_unix") and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


def _log_metrics(client, run_id: str, rows: list[dict[str, Any]]) -> None:
    from mlflow.entities import Metric

    metrics = [Metric(k, v, int(1000 * row.get("end_unix", time.time())), int(row["epoch"]))
               for row in rows for k, v in epoch_metrics(row).items()]
    for i in range(0, len(metrics), 1000):  # MLflow's MAX_METRICS_PER_BATCH
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MAX_PARAMS_TAGS_PER_BATCH
        client.log_batch(run_id, params=items[i:i + 100])


def _cut(text: str, limit: int = TAG_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit - 15] + "...(truncated)"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{tracking_uri} (view: mlflow ui --backend-store-uri {tracking_uri})"


class DriverTracker:
    """The driver's side: checked before anything starts, opens (or reopens) the run, closes it."""

    def __init__(self, settings, source: str, client, uri: str, artifacts: Optional[Path], experiment):
        self.settings, self.source, self.client, self.uri = settings, source, client, uri
        self.artifacts, self.experiment = artifacts, experiment
        self.run_id: Optional[str] = None
        self.experiment_id: Optional[str] = None

    @classmethod
    def preflight(cls, settings, source: str) -> "DriverTracker":
        MlflowClient = _require(source)
        uri, artifacts, _ = store_of(settings.uri, source)
        if artifacts is not None:  # saved resolved: a relative path means where the run started
            settings.uri = uri
        client = MlflowClient(tracking_uri=uri)
        try:
            with _requests(retries=0, timeout=10):  # one try: an answer or a refusal, in seconds
                experiment = client.get_experiment_by_name(settings.experiment)
        except Exception as exc:  # noqa: BLE001  (connection refused, DNS, HTTP errors, a bad database)
            what = "no MLflow tracking server answers there" if uri.startswith("http") else "cannot open the store"
            raise UserError(f"{source}: tracking.mlflow.uri {settings.uri}: {what} ({why(exc)})") from None
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            raise ConfigError(f"{source}: tracking.mlflow.experiment {settings.experiment!r} is deleted on "
                              f"{uri}: restore it (mlflow experiments restore) or name another one")
        return cls(settings, source, client, uri, artifacts, experiment)

    # --- the run ------------------------------------------------------------------------------
    def _stored(self, run) -> Optional[dict[str, Any]]:
        if not run.exists(RUN_FILE):
            return None
        try:
            return json.loads(run.read_bytes(RUN_FILE))
        except ValueError:
            return None

    def _reopen(self, stored: Optional[dict[str, Any]]):
        """The MLflow run a resumed run continues: the one in mlflow.json, on this same store."""
        if not stored or stored.get("tracking_uri") != self.uri or not stored.get("run_id"):
            if stored and stored.get("run_id"):
                print(f"[visionkit] mlflow: the run was tracked at {stored.get('tracking_uri')}; tracking it now at "
                      f"{self.uri} as a new MLflow run (earlier epochs logged again from metrics.jsonl)", flush=True)
            return None
        try:
            found = self.client.get_run(stored["run_id"])
        except Exception as exc:  # noqa: BLE001
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc) and "not found" not in str(exc).lower():
                raise UserError(f"{self.source}: tracking.mlflow.uri {self.settings.uri}: {why(exc)}") from None
            found = None
        if found is None or found.info.lifecycle_stage == "deleted":
            print(f"[visionkit] mlflow: run {stored['run_id']} of mlflow.json is gone from {self.uri}; "
                  "starting a new MLflow run", flush=True)
            return None
        return found

    def _experiment_id(self) -> str:
        if self.experiment is not None:
            return self.experiment.experiment_id
        location = None
        if self.artifacts is not None:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.settings.experiment).strip("._") or "experiment"
            location = (self.artifacts / slug).as_uri()
        try:
            return self.client.create_experiment(self.settings.experiment, artifact_location=location)
        except Exception:  # noqa: BLE001  (created meanwhile by another run: a Tune trial beside this one)
            found = self.client.get_experiment_by_name(self.settings.experiment)
            if found is None:
                raise
            return found.experiment_id

    def begin(self, run, resolved: dict[str, Any], resumed) -> dict[str, Any]:
        """Opens the MLflow run for ``run`` (a LocalRun or RunStore; called before its config.yaml
        is written) and returns what rank 0 needs to log to it."""
        from .. import __version__

        params = dict(flatten(resolved))
        model = (resolved.get("model") or {}).get("name")
        tags = {"visionkit.task": str(resolved.get("task")), "visionkit.version": __version__,
                "visionkit.run_dir": run.uri}
        if model is not None:
            tags["visionkit.model"] = str(model)
        if run.remote:
            tags["visionkit.storage_uri"] = run.uri
        try:
            with _requests(retries=2, timeout=30):
                found = self._reopen(self._stored(run)) if resumed is not None else None
                if found is not None:
                    self.run_id, self.experiment_id = found.info.run_id, found.info.experiment_id
                    self.client.update_run(self.run_id, status="RUNNING")
                    old = found.data.params
                    _log_params(self.client, self.run_id, {k: v for k, v in params.items() if k not in old})
                    # MLflow params never change: a value changed on resume (train.epochs=30) is a tag.
                    for key in sorted(k for k, v in params.items() if k in old and old[k] != v):
                        tags[f"visionkit.resumed.{key}"[:250]] = _cut(params[key])
                    verb = "continuing"
                else:
                    self.experiment_id = self._experiment_id()
                    created = self.client.create_run(self.experiment_id, run_name=self.settings.run_name or run.name)
                    self.run_id = created.info.run_id
                    _log_params(self.client, self.run_id, params)
                    verb = "new"
                for key, value in tags.items():
                    self.client.set_tag(self.run_id, key, _cut(value))
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{self.source}: tracking.mlflow.uri {self.settings.uri}: {why(exc)}") from None
        info = {"tracking_uri": self.uri, "experiment": self.settings.experiment,
                "experiment_id": self.experiment_id, "run_id": self.run_id}
        run.write_bytes(RUN_FILE, (json.dumps(info, indent=1) + "\n").encode())
        print(f"[visionkit] mlflow: {verb} run {self.run_id} in experiment {self.settings.experiment!r}: "
              f"{run_url(self.uri, self.experiment_id, self.run_id)}", flush=True)
        return info

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Around the training: a run that raises is FAILED in MLflow, an interrupted one KILLED."""
        try:
            yield
        except BaseException as exc:
            if self.run_id is not None:
                status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
                try:
                    with _requests(retries=0, timeout=10):
                        self.client.set_terminated(self.run_id, status)
                except Exception:  # noqa: BLE001  (the training's own error is the one to show)
                    pass
            raise

    def finish(self, run) -> None:
        """The artefacts, and FINISHED. A tracking server that fails now leaves the run's own
        files complete: one line says what is missing, the run does not fail."""
        if self.run_id is None:
            return
        try:
            with _requests(retries=3, timeout=120), tempfile.TemporaryDirectory(prefix="visionkit-mlflow-") as tmp:
                local = self._local_files(run, Path(tmp))
                if (local / "plots").is_dir():
                    self.client.log_artifacts(self.run_id, str(local / "plots"), "plots")
                for name in ("report.html", "config.yaml", "eval_best.json"):
                    if (local / name).is_file():
                        self.client.log_artifact(self.run_id, str(local / name))
                self.client.set_terminated(self.run_id, "FINISHED")
        except Exception as exc:  # noqa: BLE001
            print(f"[visionkit] mlflow: artefacts or status not logged to run {self.run_id}: {why(exc)}", file=sys.stderr,
                  flush=True)
            return
        print(f"[visionkit] mlflow: run {self.run_id} finished: {run_url(self.uri, self.experiment_id, self.run_id)}",
              flush=True)

    @staticmethod
    def _local_files(run, tmp: Path) -> Path:
        if not run.remote:
            return run.local
        local = tmp / run.name
        run.pull(local)  # config.yaml, eval_*.json, plots/ ...
        if run.exists("report.html"):
            run.fetch("report.html", local / "report.html")
        return local


class EpochLogger:
    """Rank 0: each finished epoch's metrics, step = epoch; epochs MLflow lacks are logged first."""

    def __init__(self, info: dict[str, Any], rows: list[dict[str, Any]]):
        MlflowClient = _require("tracking.mlflow")
        self.client = MlflowClient(tracking_uri=info["tracking_uri"])
        self.run_id = info["run_id"]
        self.logged: set[int] = set()
        try:
            with _requests(retries=2, timeout=15):
                self.logged = {m.step for m in self.client.get_metric_history(self.run_id, "train/loss")}
                missing = [r for r in rows if r["epoch"] not in self.logged]
                if missing:
                    _log_metrics(self.client, self.run_id, missing)
                    self.logged.update(r["epoch"] for r in missing)
        except Exception as exc:  # noqa: BLE001
            self._warn("the epochs before this start", exc)

    def epoch(self, row: dict[str, Any]) -> None:
        if row["epoch"] in self.logged:  # replayed after a restart: the same values, already there
            return
        try:
            with _requests(retries=2, timeout=15):
                _log_metrics(self.client, self.run_id, [row])
            self.logged.add(row["epoch"])
        except Exception as exc:  # noqa: BLE001
            self._warn(f"epoch {row['epoch'] + 1}", exc)

    def _warn(self, what: str, exc: BaseException) -> None:
        print(f"[visionkit] mlflow: {what} not logged to run {self.run_id} ({why(exc)}); training goes on, "
              "and a resume logs what is missing", flush=True)


def attach_export(run_dir: Path, files: list[Path], wanted: Optional[bool]) -> None:
    """``visionkit export``: the exported model and its check report as artefacts (``export/``) of
    the MLflow run that trained it (the run directory's mlflow.json). ``wanted``: None attaches
    when the run was tracked and only warns when that fails; True requires it; False skips."""
    if wanted is False:
        return
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        if wanted:
            raise UserError(f"--mlflow: {run_dir} was not tracked in MLflow (no {RUN_FILE}); train with "
                            "tracking.mlflow.uri=... to track a run")
        return
    run_id = "?"
    try:
        info = json.loads(path.read_text())
        run_id = info["run_id"]
        MlflowClient = _require(str(path))
        client = MlflowClient(tracking_uri=info["tracking_uri"])
        with _requests(retries=2, timeout=120):
            for file in files:
                client.log_artifact(run_id, str(file), "export")
    except Exception as exc:  # noqa: BLE001  (UserError: MLflow not installed)
        names = ", ".join(f.name for f in files)
        text = f"{names} not attached to MLflow run {run_id}: {exc if isinstance(exc, UserError) else why(exc)}"
        if wanted:
            raise UserError(f"{text} (the model itself is written; --no-mlflow skips this)") from None
        print(f"[visionkit] warning: {text}", file=sys.stderr, flush=True)
        return
    print(f"[visionkit] mlflow: attached {', '.join(f.name for f in files)} to run {run_id} (artefacts export/)",
          flush=True)
