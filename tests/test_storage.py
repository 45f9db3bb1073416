"""Run storage: a local directory or an object store (moto's S3 server on loopback), without Ray."""

import json

import pytest

from visionkit.errors import UserError
from visionkit.storage import RunStore, default_endpoint, is_remote, split_run_uri
from visionkit.train import launch

from conftest import AWS_ENV, BUCKET, REPO, cls_overrides

CONFIG = str(REPO / "configs" / "classification" / "shapes.yaml")


@pytest.fixture
def aws(monkeypatch, s3):
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    return s3


def test_uris_and_endpoint(monkeypatch):
    assert is_remote("s3://b/runs") and is_remote("gs://b/runs")
    assert not is_remote("runs") and not is_remote("/abs/runs") and not is_remote("file:///abs/runs")
    assert split_run_uri("s3://b/runs/name/") == ("s3://b/runs", "name")
    with pytest.raises(UserError, match="expected STORAGE/RUN_NAME"):
        split_run_uri("s3://b")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    assert default_endpoint() == "http://minio:9000"


def test_push_sends_what_changed_and_pull_leaves_checkpoints_to_ray(aws, tmp_path):
    endpoint, client = aws
    store = RunStore(f"s3://{BUCKET}/unit", "r1", endpoint)
    local = tmp_path / "stage"
    (local / "plots").mkdir(parents=True)
    (local / "checkpoints").mkdir()
    (local / "metrics.jsonl").write_text('{"epoch": 0}\n')
    (local / "plots" / "curves.png").write_bytes(b"png")
    (local / "checkpoints" / "last.pt").write_bytes(b"weights")
    (local / ".metrics.jsonl.x.tmp").write_text("half-written")
    assert store.push(local) == 3
    assert store.push(local) == 0  # nothing changed
    with open(local / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 1}\n')
    assert store.push(local) == 1
    assert store.read_bytes("metrics.jsonl").decode().count("epoch") == 2
    assert not store.exists(".metrics.jsonl.x.tmp")

    again = RunStore(f"s3://{BUCKET}/unit", "r1", endpoint)
    there = tmp_path / "elsewhere"
    again.pull(there)
    assert (there / "metrics.jsonl").read_text() == (local / "metrics.jsonl").read_text()
    assert (there / "plots" / "curves.png").exists() and not (there / "checkpoints").exists()
    assert again.push(there) == 0  # what was pulled is not sent back


def test_unreachable_store_is_one_line(aws):
    with pytest.raises(UserError, match=r"s3://nobucket/runs/x/config.yaml: object store error"):
        RunStore("s3://nobucket/runs", "x", aws[0]).read_bytes("config.yaml")


def test_in_process_run_in_the_store_resumes_from_it(aws, shapes_cls, tmp_path):
    """No Ray: the same staging and upload; `--resume s3://...` fetches the checkpoint itself."""
    endpoint, client = aws
    uri = launch.train(CONFIG, cls_overrides(shapes_cls, tmp_path, "inproc", **{
        "ray.num_workers": 0, "train.epochs": 2, "output.storage_path": f"s3://{BUCKET}/unit",
        "output.s3_endpoint": endpoint}))
    assert uri == f"s3://{BUCKET}/unit/inproc" and not (tmp_path / "inproc").exists()
    launch.train(None, ["train.epochs=3", f"output.s3_endpoint={endpoint}"], resume=uri)
    rows = client.get_object(Bucket=BUCKET, Key="unit/inproc/metrics.jsonl")["Body"].read().decode().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [0, 1, 2]
    saved = client.get_object(Bucket=BUCKET, Key="unit/inproc/config.yaml")["Body"].read().decode()
    assert f"s3_endpoint: {endpoint}" in saved and "epochs: 3" in saved
    with pytest.raises(UserError, match="run directory exists"):
        launch.train(CONFIG, cls_overrides(shapes_cls, tmp_path, "inproc", **{
            "ray.num_workers": 0, "output.storage_path": f"s3://{BUCKET}/unit", "output.s3_endpoint": endpoint}))
