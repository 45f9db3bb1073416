"""Experiment tracking in MLflow (tracking.mlflow) against a real `mlflow server` on loopback,
with an SQLite store and artefacts served from a temp dir: one server for the module, one 2-worker
Ray run SIGKILLed mid-run and resumed, the model it exports attached to the same MLflow run."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from visionkit import __version__
from visionkit.errors import UserError
from visionkit.train import launch
from visionkit.train.runlog import read_metrics

from conftest import REPO, cls_overrides, kill_driver_when, start_driver
from loopback import free_port

CONFIG = str(REPO / "configs" / "classification" / "shapes.yaml")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 (free port), SQLite backend, artefacts proxied to a temp dir."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--serve-artifacts",
         "--artifacts-destination", str(root / "artifacts")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.time() < deadline, (root / "server.log").read_text()[-3000:]
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        log.close()


def client_of(url):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url)


def test_a_killed_run_resumes_into_the_same_mlflow_run_with_every_epoch_and_its_artefacts(
        ray_cluster, shapes_cls, tmp_path, mlflow_server):
    """As users run it: 2 Ray workers, the driver SIGKILLed once MLflow has an epoch, then
    --resume with one more epoch: still one MLflow run, every epoch's metrics once at its step, equal to
    metrics.jsonl; params, tags, plots/ and report.html; `visionkit export` attaches the model."""
    client = client_of(mlflow_server)
    tracking = {"tracking.mlflow.uri": mlflow_server, "tracking.mlflow.experiment": "killed-and-resumed"}
    args = cls_overrides(shapes_cls, tmp_path, "tracked", **{"train.epochs": 4, "train.batch_size": 8, **tracking})
    run = tmp_path / "tracked"

    def an_epoch_in_mlflow() -> bool:  # logged after its checkpoint: kill the driver now
        if not (run / "mlflow.json").exists():
            return False
        return bool(client.get_metric_history(json.loads((run / "mlflow.json").read_text())["run_id"], "train/loss"))

    kill_driver_when(start_driver("train", CONFIG, *args, "--address", ray_cluster), an_epoch_in_mlflow, timeout=300)
    run_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    done_before = len(read_metrics(run))
    assert 1 <= done_before < 4
    assert client.get_run(run_id).info.status == "RUNNING"  # killed: nobody closed it

    launch.train(None, ["train.epochs=5"], resume=str(run), address=ray_cluster)  # ... and extended

    assert json.loads((run / "mlflow.json").read_text())["run_id"] == run_id
    experiment = client.get_experiment_by_name("killed-and-resumed")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # the resume continued it: exactly one run
    tracked = client.get_run(run_id)
    assert tracked.info.status == "FINISHED"
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4]
    for key in ("train/loss", "val/top1", "lr"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(r["epoch"], r[key]) for r in rows], key  # each epoch once, at its step
    params = tracked.data.params
    assert params["train.epochs"] == "4" and params["model.hidden"] == "[64]" and params["ray.num_workers"] == "2"
    assert tracked.data.tags["visionkit.resumed.train.epochs"] == "5"  # a param never changes: the new value is a tag
    assert params["tracking.mlflow.uri"] == mlflow_server and params["data.root"] == str(shapes_cls)
    tags = tracked.data.tags
    assert tags["visionkit.task"] == "classification" and tags["visionkit.model"] == "mlp"
    assert tags["visionkit.version"] == __version__ and tags["visionkit.run_dir"] == str(run)
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "config.yaml", "plots"} <= top
    assert "plots/curves.png" in {a.path for a in client.list_artifacts(run_id, "plots")}
    got = client.download_artifacts(run_id, "report.html", str(tmp_path))
    assert open(got, "rb").read() == (run / "report.html").read_bytes()  # the final page, after the resume

    from visionkit.export.exporter import export

    export(str(run), check_images=4)  # a tracked run: attached without being asked
    assert {a.path for a in client.list_artifacts(run_id, "export")} == {"export/model.onnx", "export/model.report.json"}


def test_an_unreachable_tracking_uri_is_one_line_before_anything_starts(shapes_cls, tmp_path):
    port = free_port()  # nothing listens there
    args = cls_overrides(shapes_cls, tmp_path, "nowhere", **{"tracking.mlflow.uri": f"http://127.0.0.1:{port}"})
    with pytest.raises(UserError) as err:
        launch.train(CONFIG, args)
    text = str(err.value)
    assert "\n" not in text
    assert f"tracking.mlflow.uri http://127.0.0.1:{port}: no MLflow tracking server answers there" in text, text
    assert "Connection refused" in text, text
    assert not (tmp_path / "nowhere").exists()  # refused before the run directory, let alone Ray workers


def test_tracking_without_mlflow_installed_is_refused_in_one_line(shapes_cls, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    args = cls_overrides(shapes_cls, tmp_path, "no-mlflow", **{"tracking.mlflow.uri": str(tmp_path / "store")})
    with pytest.raises(UserError) as err:
        launch.train(CONFIG, args)
    assert "\n" not in str(err.value)
    assert str(err.value).endswith('tracking.mlflow needs MLflow, which is not installed here: '
                                   'pip install "visionkit[mlflow]"'), str(err.value)
    assert not (tmp_path / "no-mlflow").exists()


def test_tracking_config_mistakes_are_one_line():
    from visionkit.config import Config, validate_section
    from visionkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"c.yaml: tracking.mlflow.urii: unknown key \(did you mean 'uri'\?\)"):
        validate_section(Config, {"task": "classification", "tracking": {"mlflow": {"urii": "http://x:5000"}}}, "c.yaml")
    with pytest.raises(ConfigError, match=r"tracking.mlflow.uri: .*postgresql:// is not a tracking uri visionkit takes"):
        validate_section(Config, {"task": "classification", "tracking": {"mlflow": {"uri": "postgresql://db/x"}}}, "c.yaml")
    cfg = validate_section(Config, {"task": "classification"}, "c.yaml")
    assert cfg.tracking is None  # off by default


def test_long_config_values_fit_mlflow_params(mlflow_server):
    """A config value past MLflow's param length (a long transform list) is cut, not refused."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    from visionkit.tracking.mlflow import _log_params, flatten

    config = {"data": {"train_transforms": [{"name": "Affine", "rotate": [i, i + 1]} for i in range(800)],
                       "root": "/d"}, "model": {"hidden": [64], "weights": None}}
    params = dict(flatten(config))
    assert params["model.hidden"] == "[64]" and params["model.weights"] == "null" and params["data.root"] == "/d"
    assert len(params["data.train_transforms"]) <= MAX_PARAM_VAL_LENGTH
    client = client_of(mlflow_server)
    run = client.create_run(client.create_experiment("long-params"))
    _log_params(client, run.info.run_id, params)
    assert client.get_run(run.info.run_id).data.params == params


def test_tracking_switched_on_at_resume_logs_the_earlier_epochs_to_a_local_store(shapes_cls, tmp_path, monkeypatch):
    """A directory as uri (an SQLite store in it, the path made absolute), in this process: a run
    trained without tracking and resumed with it gets one MLflow run holding both epochs."""
    monkeypatch.chdir(tmp_path)
    args = cls_overrides(shapes_cls, tmp_path, "late", **{"ray.num_workers": 0, "train.epochs": 1})
    run = launch.train(CONFIG, args)
    assert not (run / "mlflow.json").exists()
    resumed = ["train.epochs=2", "tracking.mlflow.uri=store", "tracking.mlflow.experiment=late"]
    # The store answers the pre-flight but the run cannot be opened (a server gone in between):
    # one line, and the resumed run's config.yaml is as it was.
    from visionkit.tracking.mlflow import DriverTracker

    saved = (run / "config.yaml").read_bytes()
    with monkeypatch.context() as m:
        m.setattr(DriverTracker, "_experiment_id", lambda self: (_ for _ in ()).throw(OSError("connection refused")))
        with pytest.raises(UserError, match=r"tracking.mlflow.uri sqlite:.*mlflow.db: connection refused"):
            launch.train(None, resumed, resume=str(run))
    assert (run / "config.yaml").read_bytes() == saved and not (run / "mlflow.json").exists()
    launch.train(None, resumed, resume=str(run))
    info = json.loads((run / "mlflow.json").read_text())
    assert info["tracking_uri"] == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    client = client_of(info["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("late").experiment_id])
    assert [r.info.run_id for r in runs] == [info["run_id"]] and runs[0].info.status == "FINISHED"
    history = sorted((m.step, m.value) for m in client.get_metric_history(info["run_id"], "train/loss"))
    assert history == [(r["epoch"], r["train/loss"]) for r in read_metrics(run)] and len(history) == 2
    assert runs[0].data.params["train.epochs"] == "2"
    assert (tmp_path / "store" / "artifacts" / "late" / info["run_id"] / "artifacts" / "report.html").is_file()


def test_export_attaches_only_to_a_tracked_run_and_a_server_that_is_gone_only_warns(tmp_path, capsys):
    from visionkit.tracking.mlflow import attach_export

    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    attach_export(tmp_path, [model], None)  # an untracked run: nothing to do, nothing said
    assert capsys.readouterr().err == ""
    with pytest.raises(UserError, match=r"--mlflow: .* was not tracked in MLflow \(no mlflow.json\)"):
        attach_export(tmp_path, [model], True)
    (tmp_path / "mlflow.json").write_text(json.dumps({"tracking_uri": f"http://127.0.0.1:{free_port()}", "run_id": "r1"}))
    attach_export(tmp_path, [model], None)  # tracked, server gone: the export stands, one warning line
    err = capsys.readouterr().err
    assert err.startswith("[visionkit] warning: model.onnx not attached to MLflow run r1: ") and err.count("\n") == 1, err
    with pytest.raises(UserError, match="the model itself is written; --no-mlflow skips this"):
        attach_export(tmp_path, [model], True)
