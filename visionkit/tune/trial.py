"""One Tune trial: a whole visionkit training run, on Ray Train workers of its own.

The pattern the Ray documentation gives for Train V2 inside Tune: the trial function is the
Train *driver* (it asks for no CPU itself) and runs ``TorchTrainer.fit()`` through
:func:`visionkit.train.launch.train`, exactly as ``visionkit train`` does. The workers report to
Ray Train; :class:`ReportToTrial`, a callback inside the run's controller, hands each evaluated
epoch to the trial function, which reports it to Tune with ``ray.tune.report``.

Stopping: when Tune's scheduler stops a trial it calls the trial actor's ``stop()`` and then lets
the actor go, and with it the Train controller the actor owns. Killed that way, the controller
would leave its workers' placement group (their CPUs) behind unless Ray's state API is there
for Ray Train's cleaner. So :func:`trainable`'s ``cleanup`` (run by ``stop()``) first aborts the
Train run the way Ray Train's own Ctrl-C handler does (``controller.abort``: workers shut down,
placement group removed; :func:`_abort` keeps the controller's loop free meanwhile): the run
stops at once and the next trial gets its CPUs.

A trial writes a normal run directory, ``TUNE_DIR/trials/<trial id>``. Its failures are Ray
Train's: workers that fail restart from the run's checkpoint, per ``ray.max_failures``; a user
mistake on a worker (:class:`visionkit.train.callbacks.UserErrorsEndTheRun`, as in every run)
and anything else end the trial as errored (Tune retries nothing). A trial started again by ``visionkit tune --resume`` continues its run from
``last.pt``, and one whose run had already finished only reports its last result again.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import yaml
from ray.train import UserCallback

EPOCHS = "epochs"  # the result key ASHA counts in: epochs done


class ReportToTrial(UserCallback):
    """Runs in the Train controller: hands rank 0's evaluated epochs, with the controller's own
    handle (to abort the run if Tune stops the trial), to the trial function. Epochs without an
    evaluation (``train.eval_every``) have nothing for the scheduler."""

    def __init__(self, queue, primary: str):
        self.queue, self.primary = queue, primary

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        import ray

        result = tune_result(metrics[0], self.primary)  # every rank reports the same merged values
        if result is not None:
            # Blocks while the trial has not taken the previous one: Tune sees every epoch.
            self.queue.put((result, ray.get_runtime_context().current_actor))


def tune_result(row: dict[str, Any], primary: str) -> Optional[dict[str, Any]]:
    """What a trial reports to Tune for one epoch's row (of ``metrics.jsonl`` or of the report)."""
    key = f"val/{primary}"
    if key not in row:
        return None
    return {EPOCHS: int(row["epoch"]) + 1, primary: float(row[key]), "train_loss": float(row["train/loss"])}


# The running Train run of this process (one trial per actor: reuse_actors is off).
_ACTIVE: dict[str, Any] = {}


def trainable(job: dict[str, Any]) -> type:
    """The Tune trainable: :func:`run_trial` with ``job``, as Tune's function trainable class,
    whose ``cleanup`` aborts a Train run still going when Tune stops the trial."""
    from ray.tune.trainable.function_trainable import wrap_function

    def visionkit_trial(config: dict[str, Any]) -> None:
        run_trial(config, job)

    class VisionkitTrial(wrap_function(visionkit_trial)):
        def cleanup(self) -> None:
            abort_active_run()
            super().cleanup()

    return VisionkitTrial


def abort_active_run() -> None:
    """Aborts this process's Train run if it is still going (module-level, so that the pickled
    trainable above reaches this module's ``_ACTIVE``, not a copy of it)."""
    thread, controller = _ACTIVE.get("thread"), _ACTIVE.get("controller")
    if controller is not None and thread is not None and thread.is_alive():
        _abort(controller, _ACTIVE["results"])


def run_trial(config: dict[str, Any], job: dict[str, Any]) -> None:
    """The Tune trainable. ``config``: the trial's sampled values by dotted key; ``job``: what
    every trial shares (the base config, where trial runs go, the primary metric)."""
    from ray import tune
    from ray.util.queue import Empty, Queue

    from ..storage import open_run

    trial_id = tune.get_context().get_trial_id()
    run = open_run(job["trials"], trial_id, job.get("s3_endpoint"))
    resume = run.exists("checkpoints/last.pt")
    if resume and _finished(run):
        _report_last(run, job["primary"])
        return
    results = Queue(maxsize=1, actor_options={"num_cpus": 0})
    callbacks = [ReportToTrial(results, job["primary"])]
    outcome: dict[str, BaseException] = {}

    def train() -> None:
        try:
            _train(run, resume, config, job, trial_id, callbacks)
        except BaseException as exc:  # noqa: BLE001  (raised again in the trial's own thread)
            outcome["error"] = exc

    thread = threading.Thread(target=train, name=f"visionkit-trial-{trial_id}", daemon=True)
    _ACTIVE.update(thread=thread, controller=None, results=results)
    thread.start()
    while True:
        try:
            result, _ACTIVE["controller"] = results.get(timeout=1)
        except Empty:
            if not thread.is_alive() and results.empty():
                break
            continue
        tune.report(result)  # does not return once Tune has stopped the trial
    thread.join()
    if "error" in outcome:
        raise outcome["error"]


def _train(run, resume: bool, config: dict[str, Any], job: dict[str, Any], trial_id: str, callbacks) -> None:
    from ..train import launch
    from .space import trial_config

    if resume:
        # The store's endpoint as the search has it (the trial's config.yaml lies behind it).
        endpoint = job.get("s3_endpoint")
        launch.train(None, [f"output.s3_endpoint={endpoint}"] if run.remote and endpoint else [], resume=run.uri,
                     callbacks=callbacks)
        return
    raw = trial_config(job["base"], config)
    raw["output"].update(storage_path=job["trials"], name=trial_id)
    with tempfile.TemporaryDirectory(prefix="visionkit-trial-") as tmp:
        path = Path(tmp) / f"{trial_id}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        launch.train(str(path), [], callbacks=callbacks)


def _abort(controller, results, timeout_s: float = 60) -> None:
    """Ray Train's graceful abort (what its Ctrl-C handler calls): workers and placement group go.

    The controller hands results over in :meth:`ReportToTrial.after_report`, on its event loop.
    A stopped trial takes no more of them (its ``tune.report`` does not return), so a put on the
    full queue would hold that loop, and ``abort`` (a method of the same actor) would never run:
    the queue is emptied while the abort is waited for."""
    import ray
    from ray.util.queue import Empty

    done = controller.abort.remote()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            while True:
                results.get_nowait()
        except Empty:
            pass
        except Exception:  # noqa: BLE001  (the queue's actor gone: nothing left to hold the loop)
            pass
        finished, _ = ray.wait([done], timeout=1)
        if finished:
            break
    try:
        ray.get(done, timeout=0)
    except Exception:  # noqa: BLE001  (the controller exits as it aborts; a dead one is as good)
        pass


def _finished(run) -> bool:
    """The run trained its last epoch, or early stopping ended it."""
    from ..train.launch import _read_resumed

    ckpt = _read_resumed(run)
    train = ckpt.config.get("train") or {}
    stopping = train.get("early_stopping")
    stopped = bool(stopping and ckpt.early_stopping and ckpt.early_stopping.get("bad", 0) >= stopping["patience"])
    return ckpt.epoch + 1 >= int(train.get("epochs", 0)) or stopped


def _report_last(run, primary: str) -> None:
    from ray import tune

    results = [r for r in (tune_result(row, primary) for row in read_rows(run)) if r is not None]
    if results:
        tune.report(results[-1])


def read_rows(run) -> list[dict[str, Any]]:
    """A run's metrics.jsonl rows (local or in an object store)."""
    from ..train.runlog import METRICS_FILE, parse_metrics

    return parse_metrics(run.read_bytes(METRICS_FILE).decode()) if run.exists(METRICS_FILE) else []
