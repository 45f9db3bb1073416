"""The cluster path for real: a two-node Ray cluster on loopback (``ray start --head`` and a
second ``ray start --address``), shared by this module's tests; an S3-compatible store (moto's
server) on loopback. Tiny data and the MLP, a few epochs: each test checks one thing a cluster
user relies on. ``pytest -m cluster`` selects them; they also run in the default suite.
"""

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from loopback import RAY, LoopbackCluster, free_port
from conftest import AWS_ENV, BUCKET, REPO, cls_overrides, run_cli

pytestmark = pytest.mark.cluster

CONFIG = REPO / "configs" / "classification" / "shapes.yaml"
# A client of a cluster whose head has token authentication on (Ray's default) must say so; the
# token itself is read from ~/.ray/auth_token, where `ray start --head` keeps it.
CLIENT = {"RAY_AUTH_MODE": "token"}


@pytest.fixture(scope="module")
def cluster():
    # A dead node is declared so after 3 failed health checks 1 s apart instead of Ray's default
    # of about 15 s (benchmarks/cluster.py measures recovery with the defaults).
    c = LoopbackCluster(head_cpus=2, node_cpus=1, env=AWS_ENV,
                        system_config={"health_check_period_ms": 1000, "health_check_failure_threshold": 3})
    try:
        yield c.start()
    finally:
        c.stop()
    shutil.rmtree(c.tmp, ignore_errors=True)  # kept when the cluster did not start: its logs


def s3_text(client, key: str) -> str:
    try:
        return client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    except client.exceptions.NoSuchKey:
        return ""


def s3_has(client, key: str) -> bool:
    return client.list_objects_v2(Bucket=BUCKET, Prefix=key).get("KeyCount", 0) > 0


def epochs_in(text: str) -> list[int]:
    return [json.loads(line)["epoch"] for line in text.splitlines() if line.strip()]


def driver(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """`visionkit train ...` in its own process group, output captured."""
    return subprocess.Popen([sys.executable, "-m", "visionkit.cli", "train", *args], cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **CLIENT, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting (driver exit {proc.poll()}):\n{proc.stdout.read() if proc.poll() is not None else ''}")


def test_ray_job_spreads_workers_over_both_nodes(cluster, shapes_cls, tmp_path):
    """`ray job submit` with the config in the working dir; the job's driver runs on the head."""
    cluster.start_node()
    work = tmp_path / "job"
    work.mkdir()
    shutil.copy(CONFIG, work / "shapes.yaml")
    runs = tmp_path / "runs"  # absolute: every node sees it (one machine); on a real cluster, NFS or s3://
    entry = [sys.executable, "-m", "visionkit.cli", "train", "shapes.yaml",
             *cls_overrides(shapes_cls, runs, "job", **{"train.epochs": 2, "ray.placement_strategy": "SPREAD"})]
    proc = subprocess.run([RAY, "job", "submit", "--address", cluster.dashboard, "--working-dir", str(work),
                           "--submission-id", "vk-job-1", "--", *entry],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **CLIENT})
    # `ray job submit` follows the job's logs until it ends, then prints the job's final status.
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs
    assert "Job 'vk-job-1' succeeded" in logs, logs  # status SUCCEEDED
    assert "[visionkit] best: top1" in logs and "finished 2 epoch(s)" in logs, logs
    rows = [json.loads(line) for line in (runs / "job" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and rows[-1]["val/top1"] > 0.25
    workers = json.loads((runs / "job" / "workers.json").read_text())["attempts"][-1]["workers"]
    assert {w["node_id"] for w in workers} == {cluster.head_id, cluster.node_id}, workers


def test_object_store_run_killed_then_resumed_from_the_store(cluster, s3, shapes_cls, tmp_path):
    """Checkpoints and run files in S3 (moto on loopback); the driver is killed mid-run and
    `--resume s3://...` continues: every epoch exactly once, workers restoring from the store."""
    cluster.start_node()
    endpoint, client = s3
    uri = f"s3://{BUCKET}/runs/killed"
    args = [str(CONFIG), *cls_overrides(shapes_cls, tmp_path, "killed", **{
        "train.epochs": 3, "train.batch_size": 8, "ray.placement_strategy": "SPREAD",
        "output.storage_path": f"s3://{BUCKET}/runs", "output.s3_endpoint": endpoint}), "--address", cluster.address]
    proc = driver(args, AWS_ENV)
    try:
        # Rank 0 pushes an epoch's checkpoint after its log rows: once it is there, the epoch is resumable.
        wait_for(lambda: s3_has(client, "runs/killed/checkpoints/last.pt"), proc)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    done_before = epochs_in(s3_text(client, "runs/killed/metrics.jsonl"))
    assert 1 <= len(done_before) < 3, done_before
    assert not (tmp_path / "killed").exists()  # nothing of the run on the driver's disk

    # The endpoint from the standard variable this time (the first run had output.s3_endpoint).
    resumed = run_cli("train", "--resume", uri, "--address", cluster.address, timeout=300,
                      env={**AWS_ENV, **CLIENT, "AWS_ENDPOINT_URL": endpoint})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming at epoch" in resumed.stdout and f"files: {uri}/" in resumed.stdout
    assert epochs_in(s3_text(client, "runs/killed/metrics.jsonl")) == [0, 1, 2]
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="runs/killed/")["Contents"]}
    for name in ("config.yaml", "workers.json", "eval_best.json", "plots/curves.png", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert f"runs/killed/{name}" in keys, sorted(keys)
    assert any(k.startswith("runs/killed/checkpoint_") for k in keys)  # Ray Train's recovery checkpoint
    assert any(k.startswith("runs/killed/tensorboard/events.out.tfevents") for k in keys)
    attempts = json.loads(s3_text(client, "runs/killed/workers.json"))["attempts"]
    # Ray commits a checkpoint after the store has the epoch's rows: the resume starts at the
    # last row's epoch + 1, or redoes that epoch when its checkpoint was not committed yet.
    assert len(attempts) == 2 and attempts[1]["start_epoch"] in (len(done_before) - 1, len(done_before))


def test_losing_a_node_restarts_on_the_remaining_one(cluster, shapes_cls, tmp_path):
    """The second node's raylet is SIGKILLed mid-run; FailureConfig restarts both workers on the
    head (it has the CPUs) from the last checkpoint (Ray's, or the run's last.pt where rank 0
    wrote it before Ray committed it); every epoch appears once."""
    cluster.start_node()
    run = tmp_path / "lost"
    epochs = 5  # the workers on a killed raylet take a second or two to go: the kill lands in the run
    args = [str(CONFIG), *cls_overrides(shapes_cls, tmp_path, "lost", **{
        "train.epochs": epochs, "train.batch_size": 8, "ray.placement_strategy": "SPREAD", "ray.max_failures": 1}),
        "--address", cluster.address]
    proc = driver(args)
    try:
        wait_for(lambda: (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip(), proc)
        placed = {w["node_id"] for w in json.loads((run / "workers.json").read_text())["attempts"][0]["workers"]}
        assert placed == {cluster.head_id, cluster.node_id}
        killed_at = cluster.kill_node()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 0, out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(epochs)), out
    attempts = json.loads((run / "workers.json").read_text())["attempts"]
    assert len(attempts) == 2, attempts
    assert {w["node_id"] for w in attempts[1]["workers"]} == {cluster.head_id}
    assert 1 <= attempts[1]["start_epoch"] <= epochs, attempts  # from a checkpoint, not from scratch
    resumed = next((r for r in rows if r["epoch"] == attempts[1]["start_epoch"]), None)
    if resumed is not None:
        print(f"\nnode loss: first step again {resumed['first_step_unix'] - killed_at:.1f}s after the raylet was killed")


def test_a_search_runs_trials_on_both_nodes_with_its_tune_directory_in_an_object_store(cluster, s3, shapes_cls, tmp_path):
    """visionkit tune on the cluster: three trials of one 1-CPU worker, all three at once (the head
    has 2 CPUs, the other node 1), so Ray Tune's trials run on both nodes; the tune directory,
    every trial's run included, is in S3."""
    endpoint, client = s3
    cluster.start_node()
    args = [str(CONFIG), *cls_overrides(shapes_cls, tmp_path, "search", **{
        "ray.num_workers": 1, "train.epochs": 2, "tune.space": "{train.optimizer.lr: {grid: [0.002, 0.003, 0.005]}}",
        "tune.num_samples": 1, "output.storage_path": f"s3://{BUCKET}/tune", "output.s3_endpoint": endpoint}),
        "--address", cluster.address]
    proc = run_cli("tune", *args, timeout=600, env={**AWS_ENV, **CLIENT})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "up to 3 at a time (3 fit the cluster)" in proc.stdout
    rows = list(csv.DictReader(io.StringIO(s3_text(client, "tune/search/results.csv"))))
    assert len(rows) == 3 and {r["status"] for r in rows} == {"finished"}, rows
    nodes = set()
    for row in rows:
        prefix = f"tune/search/trials/{row['trial']}"
        assert row["run_dir"] == f"s3://{BUCKET}/{prefix}"
        assert epochs_in(s3_text(client, f"{prefix}/metrics.jsonl")) == [0, 1]
        assert s3_has(client, f"{prefix}/checkpoints/best.pt") and s3_has(client, f"{prefix}/config.yaml")
        nodes |= {w["node_id"] for w in json.loads(s3_text(client, f"{prefix}/workers.json"))["attempts"][-1]["workers"]}
    assert nodes == {cluster.head_id, cluster.node_id}
    for name in ("tune.yaml", "best.yaml", "plots/trials.png", "ray_tune/tuner.pkl"):
        assert s3_has(client, f"tune/search/{name}"), name
    assert not (tmp_path / "search").exists()  # nothing of the search on the driver's disk


def test_no_room_for_the_workers_ends_with_one_line_not_a_hang(cluster, shapes_cls, tmp_path):
    proc = run_cli("train", str(CONFIG), *cls_overrides(shapes_cls, tmp_path, "big", **{
        "ray.num_workers": 8, "ray.placement_timeout_s": 3}), "--address", cluster.address, timeout=120, env=CLIENT)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]  # Ray's own log lines come before it
    assert line.startswith("visionkit: error: the cluster has no room for 8 worker(s)"), proc.stderr
    assert "placement_timeout_s" in line and "run it again" in line  # no epoch finished: nothing to resume


def test_a_wrong_address_fails_at_once_in_one_line():
    from visionkit.errors import UserError
    from visionkit.train.launch import _check_reachable

    tic = time.time()
    with pytest.raises(UserError, match=r"--address 127.0.0.1:\d+: no Ray cluster answers there"):
        _check_reachable(f"127.0.0.1:{free_port()}")
    with pytest.raises(UserError, match="that is the dashboard / Ray Jobs address"):
        _check_reachable("http://127.0.0.1:8265")
    with pytest.raises(UserError, match="expected HOST:PORT"):
        _check_reachable("head")
    assert time.time() - tic < 10


def test_a_lost_node_without_restarts_left_is_named_with_the_resume_command(tmp_path, monkeypatch):
    """The message for `ray.max_failures` exhausted by a node loss (the run above recovers
    instead), from the errors Ray Train raises: rank 1's worker unreachable, its node dead."""
    import ray
    from ray.exceptions import ActorUnavailableError
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    from visionkit.config import Config
    from visionkit.errors import ClusterError
    from visionkit.storage import LocalRun
    from visionkit.train import launch
    from visionkit.train.layout import resolve

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    (run / "workers.json").write_text(json.dumps({"attempts": [{"workers": [
        {"rank": 0, "node_id": "aa" * 28, "node_ip": "10.0.0.1"},
        {"rank": 1, "node_id": "bb" * 28, "node_ip": "10.0.0.2"}]}]}))
    monkeypatch.setattr(ray, "nodes", lambda: [{"NodeID": "aa" * 28, "Alive": True}, {"NodeID": "bb" * 28, "Alive": False}])
    unreachable = WorkerHealthCheckFailedError("A worker health check failed.", ActorUnavailableError("gone", None))
    error = WorkerGroupError("rank 0: gloo reset; rank 1: gone", {0: RuntimeError("Connection reset by peer"), 1: unreachable})
    with pytest.raises(ClusterError) as caught:
        cfg = Config(task="classification", ray={"num_workers": 2})
        launch._raise_worker_failure(error, LocalRun(run), cfg, resolve(cfg.ray, [{"CPU": 1.0}, {"CPU": 1.0}]))
    assert str(caught.value) == (f"lost node bbbbbbbb (10.0.0.2) running rank 1 and ray.max_failures (0) allows no more "
                                 f"restarts; resume with: visionkit train --resume {run}")
