"""Shared fixtures: one small Ray instance for the whole session, an S3 store on loopback,
generated data sets."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a cluster admin gives every node (and the user the driver) for an object store.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true"}
BUCKET = "vk-runs"


@pytest.fixture(scope="session")
def ray_cluster():
    """One embedded Ray for every test that needs it (starting one costs seconds)."""
    import logging

    import ray

    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, object_store_memory=200 * 1024**2,
             logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on a free loopback port with one bucket: ``(endpoint URL, boto3 client)``."""
    from loopback import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        deadline = time.time() + 30
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        yield endpoint, client
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="session")
def shapes_cls(tmp_path_factory) -> Path:
    """Small 32-px classification shapes set, shared read-only by the tests."""
    from visionkit.data import synth

    return synth.classification(tmp_path_factory.mktemp("shapes_cls"), num_train=160, num_val=60, size=32, seed=3)


def cls_overrides(root: Path, run_root: Path, name: str, **extra) -> list[str]:
    """A fast classification config: the MLP on 32-px shapes."""
    base = {
        "data.root": str(root), "data.image_size": 32, "data.cache_images": True,
        "data.train_transforms": "[]", "model.name": "mlp", "model.hidden": "[64]",
        "train.epochs": 3, "train.batch_size": 16, "train.optimizer.name": "adam",
        "train.optimizer.lr": 0.003, "train.scheduler.name": "constant", "train.progress": False,
        "output.storage_path": str(run_root), "output.name": name,
        # Through Ray, two workers: these runs are the ones that prove DDP (the demo uses auto).
        "ray.num_workers": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@contextlib.contextmanager
def crashing_after_epoch(monkeypatch, epoch: int):
    """Inside: the training process dies (KeyboardInterrupt, as the driver's Ctrl-C or kill) right
    after the checkpoint of ``epoch`` (0-based) is written; the block must end that way."""
    from visionkit.train import loop

    real_save = loop.save_checkpoint

    def save_then_crash(*args, **kwargs):
        path = real_save(*args, **kwargs)
        if args[6] == epoch:
            raise KeyboardInterrupt("killed")
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(loop, "save_checkpoint", real_save)


def start_driver(command: str, *args: str) -> subprocess.Popen:
    """``visionkit COMMAND ARGS`` as a user starts it, in its own process group, output captured."""
    return subprocess.Popen([sys.executable, "-m", "visionkit.cli", command, *args], cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def kill_driver_when(driver: subprocess.Popen, ready, timeout: float = 240) -> None:
    """SIGKILLs the driver's whole process group once ``ready()`` holds; fails if the driver
    ended first (its output in the message)."""
    deadline = time.time() + timeout
    try:
        while driver.poll() is None and time.time() < deadline and not ready():
            time.sleep(0.2)
        assert driver.poll() is None, driver.stdout.read()
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(30)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "visionkit.cli", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args], check=True,
                   capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def toy_plugin(tmp_path_factory):
    """The third-party plugin in tests/fixtures/toyplugin, built in a temp dir and pip-installed,
    as a user would; uninstalled at the end."""
    import shutil

    src = tmp_path_factory.mktemp("toyplugin") / "toyplugin"
    shutil.copytree(REPO / "tests" / "fixtures" / "toyplugin", src)
    pip("install", "--no-deps", "--no-build-isolation", str(src))
    yield "toy"
    pip("uninstall", "-y", "vk-toy-plugin")


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine, OpenMP threads that wait on each other run
    several times slower than one thread, and small models gain nothing from a second."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test: nothing may download at run time."""
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("a model tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
