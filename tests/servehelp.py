"""Helpers for the serving tests: a tiny hand-made ONNX model, a server in a torch-free
subprocess, HTTP calls with the standard library."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from conftest import REPO

#: top-level modules of visionkit's dependencies that the slim inference image leaves out
#: (deploy/requirements-inference.txt): the server must run without any of them
NOT_IN_SLIM_IMAGE = {
    "ray[train]": "ray", "torch": "torch", "torchvision": "torchvision", "albumentations": "albumentations",
    "pycocotools": "pycocotools", "onnx": "onnx", "pyyaml": "yaml", "pydantic": "pydantic", "tqdm": "tqdm",
    "matplotlib": "matplotlib", "tensorboard": "tensorboard",
}

_BLOCKING_MAIN = """
import importlib.abc, sys
BLOCKED = set(sys.argv.pop(1).split(","))
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"{name}: blocked, the inference image does not have it")
sys.meta_path.insert(0, Blocked())
from visionkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def tiny_classifier(path: Path, size: int = 32, batch: int | str = "batch") -> Path:
    """A 3-class "which colour dominates" classifier with visionkit metadata: channel means ->
    a 3x3 linear layer -> softmax. Real ONNX, run by the real runtime, built in milliseconds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from visionkit.runtime import Metadata

    weight = numpy_helper.from_array((np.eye(3) * 8.0).astype(np.float32), "weight")
    bias = numpy_helper.from_array(np.array([0.1, 0.0, -0.1], dtype=np.float32), "bias")
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["means"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["means", "weight"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, "height", "width"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 3])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = Metadata(task="classification", classes=["red", "green", "blue"], input_size=[size, size],
                    preprocess=[{"op": "resize", "height": size, "width": size, "interpolation": 1}],
                    normalization={"mean": [0.0] * 3, "std": [1.0] * 3, "in_graph": True},
                    outputs=["probabilities"], opset=17, version="test",
                    source={"run": "/somewhere/private", "epoch": 3}, data={"root": "/data/private"})
    onnx.helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def png(rgb: tuple[int, int, int] | np.ndarray, size: tuple[int, int] = (24, 40), fmt: str = "PNG") -> bytes:
    import io

    from PIL import Image

    array = rgb if isinstance(rgb, np.ndarray) else np.full((*size, 3), rgb, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


class Server:
    def __init__(self, process: subprocess.Popen, url: str):
        self.process = process
        self.url = url
        self.output: list[str] = []

    def memory_kib(self, field: str = "VmHWM") -> int:
        """The server process's ``/proc/<pid>/status`` field in KiB: VmHWM is its peak resident memory."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.process.pid}/status")

    def call(self, method: str, path: str, body: Optional[bytes] = None, headers: Optional[dict] = None,
             timeout: float = 30) -> tuple[int, dict, dict]:
        """(status, JSON body, headers); error statuses are answers too, not exceptions."""
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read()), dict(err.headers)


def multipart(files: list[tuple[str, str, bytes, str]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """(body, content type) for [(field, filename, data, content type)]."""
    boundary = "visionkit-test-boundary-7d1c"
    out = b""
    for name, value in (fields or {}).items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").encode()
    for field, filename, data, ctype in files:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
                f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


@contextmanager
def running_server(model: Path, *args: str, block: bool = True, startup_s: float = 60) -> Iterator[Server]:
    """``visionkit serve MODEL --port 0 ARGS`` in a subprocess (with the packages the slim image
    lacks made unimportable, unless ``block`` is False); stopped on exit."""
    blocked = ",".join(sorted(NOT_IN_SLIM_IMAGE.values())) if block else "none-blocked"
    cmd = [sys.executable, "-c", _BLOCKING_MAIN, blocked, "serve", str(model), "--port", "0", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    found: dict[str, str] = {}

    def reader() -> None:
        for line in proc.stdout:
            lines.append(line)
            match = re.search(r"on (http://[\d.]+:\d+)", line)
            if match and "url" not in found:
                found["url"] = match.group(1)

    threading.Thread(target=reader, daemon=True).start()
    try:
        deadline = time.monotonic() + startup_s
        while "url" not in found:
            if proc.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)
                raise AssertionError(f"server did not start (exit {proc.poll()}):\n{''.join(lines)}")
            time.sleep(0.05)
        server = Server(proc, found["url"])
        server.output = lines
        while True:
            try:
                if server.call("GET", "/health", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server never healthy (exit {proc.poll()}):\n{''.join(lines)}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
