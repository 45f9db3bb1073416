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


def _objects(client, prefix: str) -> list[str]:
    """The keys under ``prefix``, less the empty ``dir/`` markers pyarrow writes for directories."""
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in listed if not o["Key"].endswith("/"))


class _Interrupting:
    """A source file whose read() raises ``error`` once ``after`` bytes have been read."""

    def __init__(self, fh, after: int, error: BaseException):
        self.fh, self.after, self.error, self.done = fh, after, error, 0

    def read(self, size=-1):
        if self.done >= self.after:
            raise self.error
        data = self.fh.read(size if 0 < size <= self.after - self.done else self.after - self.done)
        self.done += len(data)
        return data

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


@pytest.mark.parametrize("size, after, error, raised", [
    (3 << 20, 1 << 20, KeyboardInterrupt(), KeyboardInterrupt),  # one PUT on close
    (14 << 20, 9 << 20, KeyboardInterrupt(), KeyboardInterrupt),  # a multipart upload under way
    (14 << 20, 9 << 20, OSError(5, "Input/output error"), UserError),
], ids=["ctrl-c-small", "ctrl-c-multipart", "read-error"])
def test_an_interrupted_push_leaves_the_previous_checkpoint_intact(aws, tmp_path, monkeypatch, size, after, error,
                                                                   raised):
    import builtins
    import os

    from visionkit import storage

    endpoint, client = aws
    name = f"torn-{size}-{type(error).__name__}"
    store = RunStore(f"s3://{BUCKET}/unit", name, endpoint)
    local = tmp_path / "stage"
    (local / "checkpoints").mkdir(parents=True)
    good, new = os.urandom(size), os.urandom(size)
    (local / "checkpoints" / "last.pt").write_bytes(good)
    assert store.push(local) == 1
    (local / "checkpoints" / "last.pt").write_bytes(new)

    def interrupting_open(path, mode="r", *args, **kwargs):
        fh = builtins.open(path, mode, *args, **kwargs)
        return _Interrupting(fh, after, error) if str(path).endswith("last.pt") and "r" in mode else fh

    monkeypatch.setattr(storage, "open", interrupting_open, raising=False)
    with pytest.raises(raised):
        store.push(local)
    key = f"unit/{name}/checkpoints/last.pt"
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == good
    assert _objects(client, f"unit/{name}/") == [key]  # no partial upload left behind

    monkeypatch.delattr(storage, "open")
    assert store.push(local) == 1  # the interrupted file was not counted as sent
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == new


def test_a_file_too_big_to_copy_in_the_store_is_uploaded_in_place(aws, tmp_path, monkeypatch):
    """Over S3's 5 GiB CopyObject limit the upload goes straight to its key (one C++ call)."""
    from visionkit import storage

    endpoint, client = aws
    monkeypatch.setattr(storage, "S3_MAX_COPY", 1 << 20)
    store = RunStore(f"s3://{BUCKET}/unit", "big", endpoint)
    local = tmp_path / "stage"
    (local / "checkpoints").mkdir(parents=True)
    data = bytes(range(256)) * (12 << 12)  # 12 MiB: multipart
    (local / "checkpoints" / "last.pt").write_bytes(data)
    (local / "metrics.jsonl").write_text("{}\n")
    assert store.push(local) == 2
    assert client.get_object(Bucket=BUCKET, Key="unit/big/checkpoints/last.pt")["Body"].read() == data
    assert _objects(client, "unit/big/") == ["unit/big/checkpoints/last.pt", "unit/big/metrics.jsonl"]


def test_pull_skips_what_an_interrupted_upload_left(aws, tmp_path):
    endpoint, client = aws
    client.put_object(Bucket=BUCKET, Key="unit/left/plots/curves.png", Body=b"png")
    client.put_object(Bucket=BUCKET, Key="unit/left/plots/.curves.png.0a1b2c3d.part", Body=b"p")
    store = RunStore(f"s3://{BUCKET}/unit", "left", endpoint)
    store.pull(tmp_path / "stage")
    assert [p.name for p in (tmp_path / "stage" / "plots").iterdir()] == ["curves.png"]
