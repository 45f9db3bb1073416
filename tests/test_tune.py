"""visionkit tune on the session's Ray (2 CPUs): MLP trials of one Ray worker each, two at a time,
each a whole run with its own directory. Three searches: an ASHA one run in this process (one
trial diverges); one whose trial loses its worker and whose driver is SIGKILLed and resumed; an
Optuna/ASHA one in S3, interrupted with Ctrl-C and resumed from the store. And the abort of a
stopped trial, in an actor. (The two-node search is in test_cluster.py.)"""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from visionkit.train import launch
from visionkit.train.runlog import read_metrics
from visionkit.tune.search import tune

from conftest import AWS_ENV, BUCKET, REPO, cls_overrides, run_cli

CONFIG = str(REPO / "configs" / "classification" / "shapes.yaml")


def search_overrides(root: Path, runs: Path, name: str, space: dict, scheduler: str, epochs: int, **extra):
    """A grid search (a fixed set of trials, in order) on the fast MLP config, one trial per value."""
    space = yaml.safe_dump(space, default_flow_style=True).strip()
    return cls_overrides(root, runs, name, **{"ray.num_workers": 1, "train.epochs": epochs, "tune.space": space,
                                              "tune.scheduler": scheduler, "tune.num_samples": 1,
                                              "tune.max_concurrent_trials": 2, **extra})


def results(tune_dir: Path) -> list[dict]:
    with open(tune_dir / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_an_asha_search_stops_trials_early_and_its_best_config_trains_the_same(ray_cluster, shapes_cls, tmp_path,
                                                                              capsys):
    """4 trials of 8 epochs, ASHA rungs at epochs 1, 2 and 4. After one epoch the two tiny learning
    rates are at top-1 0.23 and 0.27, the other two at 0.33 and 0.37, and they start only once
    those two have reported it: ASHA stops them at its first rung, and their Train runs end
    there (within the seconds a result takes to reach Tune: an epoch here lasts about one).
    A fifth learning rate overflows the weights in the first epoch: with ray.max_failures 1 that
    trial still ends at once, errored with the one line of TrainingDiverged (the same values
    would diverge again), and the others go on."""
    import ray

    lrs = [0.002, 0.003, 1e-6, 1e-5, 1e20]
    tune_dir = tune(CONFIG, search_overrides(shapes_cls, tmp_path, "search", {"train.optimizer.lr": {"grid": lrs}},
                                             "{name: asha, grace_period: 1, reduction_factor: 2}", epochs=8,
                                             **{"ray.max_failures": 1}))
    out = capsys.readouterr().out
    rows = results(tune_dir)
    assert sorted(float(r["train.optimizer.lr"]) for r in rows) == sorted(lrs)  # one trial per value
    for row in rows:
        run = Path(row["run_dir"])
        assert run.parent == tune_dir / "trials" and row["trial"] == run.name
        # A normal run directory, trained with its own value (not all trials the same run).
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["train"]["optimizer"]["lr"] == float(row["train.optimizer.lr"])
        assert [m["epoch"] for m in read_metrics(run)] == list(range(int(row["epochs"])))
    diverged = next(r for r in rows if float(r["train.optimizer.lr"]) == 1e20)
    assert diverged["status"] == "error" and diverged["epochs"] == "0", diverged
    line = "training loss is nan at epoch 1: lower train.optimizer.lr or set train.grad_clip_norm"
    assert diverged["error"] == line
    assert len(json.loads((Path(diverged["run_dir"]) / "workers.json").read_text())["attempts"]) == 1  # not retried
    assert f"[visionkit] trial {diverged['trial']}: {line}\n" in out
    rows = [r for r in rows if r is not diverged]
    for row in rows:
        run = Path(row["run_dir"])
        assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    stopped = [r for r in rows if r["status"] == "stopped by asha"]
    assert {float(r["train.optimizer.lr"]) for r in stopped} >= {1e-6, 1e-5}, rows
    assert all(int(r["epochs"]) < 8 for r in stopped)
    assert {r["status"] for r in rows} - {"stopped by asha"} == {"finished"}, rows
    # The stopped trials' Train runs are over (aborted, not left running), and their CPUs free.
    counts = {r["trial"]: len(read_metrics(Path(r["run_dir"]))) for r in stopped}
    deadline = time.time() + 60
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"], ray.available_resources()
    assert counts == {r["trial"]: len(read_metrics(Path(r["run_dir"]))) for r in stopped}
    assert (tune_dir / "plots" / "trials.png").stat().st_size > 1000

    # The live table, as the console showed it last: every trial with its value, epoch, metric, status.
    header = ["trial", "status", "train.optimizer.lr", "epoch", "top1", "best"]
    tables = out.split("[visionkit] tune: ")
    last = next(t for t in reversed(tables) if t.splitlines()[1:2] and t.splitlines()[1].split() == header)
    live = {cells[0]: cells for cells in (line.split() for line in last.splitlines()[2:7])}
    assert set(live) == {r["trial"] for r in [*rows, diverged]}, last
    assert live[diverged["trial"]][1:4] == ["ERROR", "1e+20", "0/8"], last
    for row in rows:
        cells, metrics = live[row["trial"]], read_metrics(Path(row["run_dir"]))
        status = "TERMINATED" if row["status"] == "finished" else "STOPPED"
        assert cells[1:3] == [status, f"{float(row['train.optimizer.lr']):.4g}"], last
        seen = int(cells[3].removesuffix("/8"))  # the last epoch Tune had (a stopped run may have done one more)
        assert (seen == 8) == (row["status"] == "finished") and 1 <= seen <= len(metrics), last
        assert cells[4:6] == [f"{metrics[seen - 1]['val/top1']:.4f}",
                              f"{max(m['val/top1'] for m in metrics[:seen]):.4f}"], last

    # results.csv is best first; best.yaml is that trial's config, trained again as a new run.
    best = rows[0]
    assert best["best_top1"] == str(max(float(r["best_top1"]) for r in rows))
    assert (f"[visionkit] best: trial {best['trial']}, top1 {float(best['best_top1']):.4f} at epoch "
            f"{best['best_epoch']} (train.optimizer.lr={float(best['train.optimizer.lr']):.4g}); "
            f"run directory {best['run_dir']}\n") in out
    text = (tune_dir / "best.yaml").read_text()
    assert f"best trial of {tune_dir}: {best['trial']}" in text
    run = launch.train(str(tune_dir / "best.yaml"), [])
    assert run.parent == tmp_path and run.name.startswith("best-")
    epoch = int(best["best_epoch"]) - 1
    again, trial = read_metrics(run)[epoch], read_metrics(Path(best["run_dir"]))[epoch]
    assert again["val/top1"] == float(best["best_top1"]) == trial["val/top1"]
    assert again["train/loss"] == trial["train/loss"]


def test_a_killed_search_resumes_without_running_finished_trials_again(ray_cluster, shapes_cls, tmp_path):
    """Two trials side by side, of 1 and 10 epochs, ray.max_failures 1. Once Ray Train has committed
    a checkpoint of the long one (its controller polls every 2 s; a worker lost before that starts
    again from scratch, by Ray's rule) the trial's worker process is SIGKILLed: Ray Train restarts
    it from that checkpoint, within the same trial. The tune driver is SIGKILLed once the short
    trial has finished (its report.html written) and the restarted worker has saved a checkpoint
    of its own; --resume continues the long one from it, and does not touch the finished one."""
    args = search_overrides(shapes_cls, tmp_path, "killed", {"train.epochs": {"grid": [1, 10]}}, "fifo", epochs=10,
                            **{"ray.max_failures": 1})
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "visionkit.cli", "tune", CONFIG, *args,
                                   "--address", ray_cluster], cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    tune_dir = tmp_path / "killed"

    def trial(epochs: int) -> Path | None:
        for config in tune_dir.glob("trials/*/config.yaml"):
            if yaml.safe_load(config.read_text())["train"]["epochs"] == epochs:
                return config.parent
        return None

    def attempts(run: Path | None) -> list[dict]:
        try:
            return json.loads((run / "workers.json").read_text())["attempts"]
        except (TypeError, OSError, ValueError):
            return []

    def committed(run: Path | None) -> bool:
        try:
            return json.loads((run / "checkpoint_manager_snapshot.json").read_text())["latest_checkpoint_result"] is not None
        except (TypeError, OSError, ValueError):
            return False

    def wait_for(predicate) -> None:
        deadline = time.time() + 400
        while not predicate() and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert driver.poll() is None and predicate(), log.read_text()[-5000:]

    try:
        wait_for(lambda: attempts(trial(10)) and committed(trial(10)))
        long = trial(10)
        [worker] = attempts(long)[0]["workers"]
        os.kill(worker["pid"], signal.SIGKILL)  # the trial's one Ray Train worker

        def short_done_long_restarted() -> bool:
            short, tries = trial(1), attempts(long)
            return bool(short and (short / "report.html").exists() and len(tries) == 2
                        and (long / "checkpoints" / "last.pt").stat().st_mtime > tries[1]["started_unix"])

        wait_for(short_done_long_restarted)
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(30)
    short = trial(1)
    done_before = len(read_metrics(long))
    assert done_before < 10, "the long trial finished before the kill"
    before = ((short / "metrics.jsonl").read_bytes(), (short / "workers.json").read_bytes(),
              (short / "report.html").stat().st_mtime_ns)

    proc = run_cli("tune", "--resume", str(tune_dir), "--address", ray_cluster, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming" in proc.stdout
    rows = {r["trial"]: r for r in results(tune_dir)}
    assert {r["status"] for r in rows.values()} == {"finished"}, (rows, proc.stdout[-6000:])
    assert [m["epoch"] for m in read_metrics(long)] == list(range(10))  # every epoch once
    tries = attempts(long)
    # Restarted by Ray Train from its checkpoint (not from scratch), then resumed from a later one.
    assert len(tries) == 3 and 1 <= tries[1]["start_epoch"] < tries[2]["start_epoch"], tries
    assert tries[1]["workers"][0]["pid"] != worker["pid"]
    assert ((short / "metrics.jsonl").read_bytes(), (short / "workers.json").read_bytes(),
            (short / "report.html").stat().st_mtime_ns) == before


def test_an_interrupted_search_in_an_object_store_says_which_trials_did_not_finish_and_its_resume_command_finishes_them(
        ray_cluster, s3, shapes_cls, tmp_path):
    """The tune directory in S3 (moto on loopback), its endpoint given in the config; Optuna's TPE
    proposes two learning rates. Ctrl-C (SIGINT to the driver's process group, as a terminal sends
    it) once both trials of this ASHA search have trained an epoch, long before its first rung
    (epoch 8): Ray Tune ends the search, and the summary marks both trials incomplete (not stopped
    by ASHA, which stopped none), prints the command that continues the search, endpoint included
    (tune.yaml lies behind it), and the command exits 130. That printed command, with no endpoint
    in the environment, finishes the search, each trial from its own checkpoint with the value
    Optuna gave it (no trial is proposed again)."""
    endpoint, client = s3
    prefix = f"tune-{tmp_path.name}"

    def text_at(key: str) -> str:
        try:
            return client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
        except client.exceptions.NoSuchKey:
            return ""

    def rows_at(key: str) -> list[dict]:
        return [json.loads(line) for line in text_at(key).splitlines() if line.strip()]

    def trained() -> list[int]:
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/interrupted/trials/")
                .get("Contents", []) if o["Key"].endswith("/metrics.jsonl")]
        return [len(rows_at(key)) for key in keys]

    low, high = 1e-3, 1e-2
    args = search_overrides(shapes_cls, tmp_path, "interrupted", {"train.optimizer.lr": {"loguniform": [low, high]}},
                            "{name: asha, grace_period: 8, reduction_factor: 2}", epochs=12,
                            **{"tune.num_samples": 2, "tune.search": "optuna", "output.storage_path": f"s3://{BUCKET}/{prefix}",
                               "output.s3_endpoint": endpoint})
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "visionkit.cli", "tune", CONFIG, *args,
                                   "--address", ray_cluster], cwd=REPO, env={**env, **AWS_ENV, "PYTHONUNBUFFERED": "1"},
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 400
        while not (len(trained()) == 2 and min(trained()) >= 1) and time.time() < deadline and driver.poll() is None:
            time.sleep(0.5)
        assert driver.poll() is None and max(trained()) < 8, log.read_text()[-5000:]
        os.killpg(driver.pid, signal.SIGINT)
        assert driver.wait(120) == 130, log.read_text()[-5000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(30)
    text = log.read_text()
    assert "optuna search" in text
    uri = f"s3://{BUCKET}/{prefix}/interrupted"
    rows = list(csv.DictReader(io.StringIO(text_at(f"{prefix}/interrupted/results.csv"))))
    assert len(rows) == 2 and {r["status"] for r in rows} == {"incomplete"}, (rows, text[-5000:])
    proposed = {r["trial"]: float(r["train.optimizer.lr"]) for r in rows}
    assert len(set(proposed.values())) == 2 and all(low <= v < high for v in proposed.values()), proposed
    assert all(1 <= int(r["epochs"]) < 12 for r in rows), rows
    command = f"visionkit tune --resume {uri} output.s3_endpoint={endpoint}"
    assert f"[visionkit] 2 trial(s) did not finish; continue the search with: {command}\n" in text
    assert "\nvisionkit: interrupted\n" in text

    proc = subprocess.run([sys.executable, "-m", "visionkit.cli", *command.split()[1:], "--address", ray_cluster],
                          cwd=REPO, env={**env, **AWS_ENV}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(text_at(f"{prefix}/interrupted/results.csv"))))
    statuses = [r["status"] for r in rows]
    assert "finished" in statuses and set(statuses) <= {"finished", "stopped by asha"}, (rows, proc.stdout[-6000:])
    assert {r["trial"]: float(r["train.optimizer.lr"]) for r in rows} == proposed
    for row in rows:
        key = f"{prefix}/interrupted/trials/{row['trial']}"
        assert row["run_dir"] == f"s3://{BUCKET}/{key}"
        assert yaml.safe_load(text_at(f"{key}/config.yaml"))["train"]["optimizer"]["lr"] == proposed[row["trial"]]
        assert [m["epoch"] for m in rows_at(f"{key}/metrics.jsonl")] == list(range(int(row["epochs"])))  # each once
        tries = json.loads(text_at(f"{key}/workers.json"))["attempts"]
        assert len(tries) == 2 and tries[1]["start_epoch"] >= 1, tries  # from its checkpoint
    assert yaml.safe_load(text_at(f"{prefix}/interrupted/best.yaml"))["output"]["s3_endpoint"] == endpoint
    assert not (tmp_path / "interrupted").exists()  # nothing of the search on the driver's disk


def test_a_stopped_trial_aborts_its_train_run_while_the_controller_waits_to_hand_it_a_result(ray_cluster):
    """Ray Train's controller, an async actor, runs ReportToTrial.after_report on its event loop.
    Once Tune has stopped a trial nothing takes its results, so the next put on the full queue
    holds that loop, and the controller's abort (a method of the same actor) cannot run until the
    trial's abort frees it. Here the real callback and queue in an actor shaped like the controller:
    one result waiting, the next one's put blocking the loop when the abort is asked for."""
    import ray
    from ray.util.queue import Queue

    from visionkit.tune.trial import ReportToTrial, _abort

    @ray.remote(num_cpus=0)
    class Controller:
        def __init__(self):
            self.aborted = False

        async def report(self, callback, epoch: int) -> None:
            callback.after_report(None, [{"epoch": epoch, "val/top1": 0.5, "train/loss": 1.0}], None)

        async def abort(self) -> None:
            self.aborted = True

        async def was_aborted(self) -> bool:
            return self.aborted

    results = Queue(maxsize=1, actor_options={"num_cpus": 0})
    controller = Controller.remote()
    callback = ReportToTrial(results, "top1")
    ray.get(controller.report.remote(callback, 0))  # taken by nobody: the trial is stopping
    blocked = controller.report.remote(callback, 1)
    assert not ray.wait([blocked], timeout=2)[0]  # the loop is held by the put
    _abort(controller, results)
    assert ray.get(controller.was_aborted.remote(), timeout=120)
    ray.get(blocked, timeout=120)
    ray.kill(controller)
    results.shutdown()
