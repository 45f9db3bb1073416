"""Run files: atomic writes (a crash mid-write leaves the previous file intact, never a torn
one) and the one safe reader of PyTorch files."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Callable


def _create_temp(directory: Path, name: str) -> tuple[int, Path]:
    """A new hidden file beside the target, created with mode 0666 so that the kernel applies the
    umask (and a directory's default ACL) as for any ``open()``: reading the umask would mean
    setting it, which races with every other thread creating files; mkstemp's 0600 would make
    run files private to one user."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{directory}: no free temporary name for {name}")


def _fsync_dir(directory: Path) -> None:
    """Makes a rename in ``directory`` durable: without it a power loss can bring the old file back.
    Skipped where directories cannot be opened or synced (Windows, some network filesystems)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic(path: Path, write: Callable[[Any], None], mode: str) -> None:
    """Writes beside ``path``, then renames over it: a crash or an exception mid-write leaves the
    previous file; the file's fsync, then its directory's, make the new one survive a power loss."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda fh: fh.write(text), "w")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda fh: fh.write(data), "wb")


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    _atomic(path, lambda fh: torch.save(obj, fh), "wb")


def torch_load(path: Path) -> Any:
    """Loads tensors and plain containers only (``weights_only``): a file can never run code.

    Raises ValueError with a one-line reason: torch's own message for a refused file is a page
    of advice about ``weights_only`` that would bury the file name.
    """
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            # A plain pickle (not torch.save's zip) gets a protocol warning before it is refused.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError("not a PyTorch file of tensors and plain containers; a weights-only load refused it") from None
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        raise ValueError(f"{type(exc).__name__}: {lines[0] if lines else 'unreadable'}") from None
