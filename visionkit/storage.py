"""Where a run lives: a local or shared directory, or a prefix in an object store (``s3://``...).

A multi-node run needs storage every node can reach. A shared directory (NFS) needs nothing
special: rank 0 writes the run there. For an object store, rank 0 writes the run's own files
into a local staging directory and uploads what changed after every epoch, *before* Ray Train
commits that epoch's checkpoint; a resumed run (on any node) downloads them again. So the store
always holds at least the files of the last committed epoch, and the rows past it are dropped
on resume exactly as for a local run. Ray Train keeps its recovery checkpoints beside them.

Credentials come from the standard AWS chain on each node (environment, ``~/.aws``, instance
or pod role); the endpoint of an S3-compatible store (MinIO, Ceph, moto) from
``output.s3_endpoint``, which travels in the config so every worker uses the same one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from .errors import UserError

# The run files the project writes; everything else in a run directory belongs to Ray Train.
RUN_FILES = ("config.yaml", "metrics.jsonl", "eval_last.json", "eval_best.json", "workers.json")
RUN_DIRS = ("tensorboard", "plots")
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# S3 copies an object in one request (CopyObject) up to 5 GiB; pyarrow has no multipart copy.
S3_MAX_COPY = 5 * 1024**3


def is_remote(path: str) -> bool:
    """``scheme://...`` (other than ``file://``) is an object store or remote filesystem."""
    return "://" in str(path) and not str(path).startswith("file://")


def default_endpoint() -> Optional[str]:
    """The standard AWS variables, so that MinIO users need not repeat themselves in the config."""
    return next((os.environ[k] for k in ENDPOINT_ENV if os.environ.get(k)), None)


def filesystem(uri: str, s3_endpoint: Optional[str] = None):
    """``(pyarrow filesystem, path inside it)`` for a remote URI."""
    import pyarrow.fs

    try:
        if uri.startswith("s3://") and s3_endpoint:
            scheme, _, host = s3_endpoint.rpartition("://")
            # An S3-compatible store ignores regions: skip the AWS region lookup.
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            fs = pyarrow.fs.S3FileSystem(endpoint_override=host.rstrip("/"), scheme=scheme or "https",
                                         region=region, connect_timeout=10)
            return fs, uri[len("s3://"):].rstrip("/")
        # AWS itself (the bucket's region is looked up), gs://, hdfs://, ...
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/")
    except (pyarrow.ArrowInvalid, OSError, ValueError) as exc:
        raise UserError(f"{uri}: not a storage location pyarrow can open ({exc})") from None


def split_run_uri(target: str) -> tuple[str, str]:
    """``s3://bucket/runs/name`` -> ``("s3://bucket/runs", "name")``."""
    parent, _, name = target.rstrip("/").rpartition("/")
    if not name or parent.endswith(":/"):
        raise UserError(f"{target}: expected STORAGE/RUN_NAME, e.g. s3://bucket/runs/shapes-20261126-101500")
    return parent, name


class LocalRun:
    """A run directory on a local or shared filesystem: rank 0 writes into it directly."""

    remote = False

    def __init__(self, path: Path):
        self.local = Path(path)
        self.uri = str(self.local)
        self.storage_path, self.name = str(self.local.parent), self.local.name

    def ray_storage(self) -> tuple[str, None]:
        return self.storage_path, None

    def exists(self, rel: str) -> bool:
        return (self.local / rel).exists()

    def read_bytes(self, rel: str) -> bytes:
        return (self.local / rel).read_bytes()

    def write_bytes(self, rel: str, data: bytes) -> None:
        from .fileio import atomic_write_bytes

        atomic_write_bytes(self.local / rel, data)


def open_run(storage_path: str, name: str, s3_endpoint: Optional[str] = None):
    """A :class:`LocalRun` or a :class:`RunStore`, by the look of ``storage_path``."""
    if is_remote(storage_path):
        return RunStore(storage_path, name, s3_endpoint)
    return LocalRun(Path(storage_path) / name)


def download(uri: str, s3_endpoint: Optional[str], local: Path) -> Path:
    """One object to a local file (a checkpoint to resume from, to evaluate)."""
    parent, name = split_run_uri(uri)
    return RunStore(parent, name, s3_endpoint).fetch("", local)


class RunStore:
    """One run directory in an object store, and a local staging copy of the project's files."""

    remote = True

    def __init__(self, storage_path: str, name: str, s3_endpoint: Optional[str] = None):
        self.storage_path, self.name, self.s3_endpoint = storage_path.rstrip("/"), name, s3_endpoint
        self.uri = f"{self.storage_path}/{name}"
        self.fs, self.root = filesystem(self.storage_path, s3_endpoint)
        self.path = f"{self.root}/{name}"
        self._synced: dict[str, tuple[int, int]] = {}

    def ray_storage(self):
        """``RunConfig(storage_path, storage_filesystem)``: the path without its scheme."""
        return self.root, self.fs

    @classmethod
    def from_output(cls, output) -> "RunStore":
        return cls(output.storage_path, output.name, output.s3_endpoint)

    # --- single objects -------------------------------------------------------------------
    def _key(self, rel: str) -> str:
        return f"{self.path}/{rel}" if rel else self.path

    def _guard(self, rel: str, fn):
        import pyarrow

        try:
            return fn()
        except (OSError, pyarrow.ArrowException) as exc:
            hint = (f" (output.s3_endpoint: {self.s3_endpoint})" if self.s3_endpoint else
                    " (AWS S3: for MinIO or another store give output.s3_endpoint=URL or AWS_ENDPOINT_URL)")
            where = f"{self.uri}/{rel}" if rel else self.uri
            raise UserError(f"{where}: object store error{hint}: {str(exc).splitlines()[0]}") from None

    def exists(self, rel: str) -> bool:
        import pyarrow.fs

        info = self._guard(rel, lambda: self.fs.get_file_info(self._key(rel)))
        return info.type != pyarrow.fs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        def read():
            with self.fs.open_input_stream(self._key(rel)) as fh:
                return fh.read()

        return self._guard(rel, read)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """One PUT: readers see the old object or the new one, never a torn one."""
        def write():
            with self.fs.open_output_stream(self._key(rel)) as fh:
                fh.write(data)

        self._guard(rel, write)

    def fetch(self, rel: str, local: Path) -> Path:
        local.parent.mkdir(parents=True, exist_ok=True)

        def copy():
            with self.fs.open_input_stream(self._key(rel)) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)

        self._guard(rel, copy)
        return local

    # --- the staging directory ------------------------------------------------------------
    def staging_dir(self) -> Path:
        import hashlib

        digest = hashlib.sha1(self.uri.encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / "visionkit-runs" / f"{self.name}-{digest}"

    def pull(self, local: Path) -> None:
        """Downloads the project's run files (not checkpoints: Ray Train restores those)."""
        import pyarrow.fs

        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        selector = pyarrow.fs.FileSelector(self.path, recursive=True, allow_not_found=True)
        for info in self._guard("", lambda: self.fs.get_file_info(selector)):
            rel = info.path[len(self.path) + 1:]
            if any(part.startswith(".") for part in rel.split("/")):
                continue  # an upload cut short (see _put_file)
            if info.type == pyarrow.fs.FileType.File and (rel in RUN_FILES or rel.split("/")[0] in RUN_DIRS):
                target = self.fetch(rel, local / rel)
                self._synced[rel] = _signature(target)

    def push(self, local: Path) -> int:
        """Uploads every file that changed since the last push or pull; returns how many."""
        sent = 0
        # Checkpoints last: a push cut short never leaves a checkpoint ahead of the log.
        for path in sorted(local.rglob("*"), key=lambda p: (p.relative_to(local).parts[0] == "checkpoints", str(p))):
            rel = path.relative_to(local).as_posix()
            if not path.is_file() or any(part.startswith(".") for part in rel.split("/")):
                continue  # atomic writes' temp files
            signature = _signature(path)
            if self._synced.get(rel) == signature:
                continue
            self._guard(rel, lambda: self._put_file(path, rel))
            self._synced[rel] = signature
            sent += 1
        return sent

    def _put_file(self, path: Path, rel: str) -> None:
        """Replaces the object only with a complete upload, whatever interrupts it (Ctrl-C included).

        pyarrow's output streams complete the upload on close, also when the copy raised, and
        pyarrow (26) exposes no abort: written straight to ``rel``, a push cut short would
        replace a good ``checkpoints/last.pt`` by a torn one. So the bytes go to a hidden key
        beside it that takes the object's place only once whole: on S3 one CopyObject, which
        readers see all at once (a rename elsewhere). A hidden key left by a kill is never pulled.
        """
        import pyarrow.fs

        key = f"{self.path}/{rel}"
        if self.fs.type_name == "s3" and path.stat().st_size > S3_MAX_COPY:
            # Too big for one CopyObject: uploaded in place by one C++ call, which Ctrl-C (handled
            # when it returns) cannot cut short and a kill leaves unfinished (the old object
            # stays); only a local read error part-way would still complete a torn object.
            pyarrow.fs.copy_files(str(path), key, source_filesystem=pyarrow.fs.LocalFileSystem(),
                                  destination_filesystem=self.fs, chunk_size=1 << 22)
            return
        parent, _, name = key.rpartition("/")
        partial = f"{parent}/.{name}.{secrets.token_hex(4)}.part"
        try:
            with open(path, "rb") as src, self.fs.open_output_stream(partial) as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            self.fs.move(partial, key)
        except BaseException:
            try:
                self.fs.delete_file(partial)
            except Exception:
                pass  # the original error matters; a hidden leftover does not
            raise


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns
