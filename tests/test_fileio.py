"""Atomic run-file writes: permissions from the umask without touching it, the previous file kept
when a write fails, the rename made durable."""

import errno
import os
import stat

import pytest

from visionkit import fileio
from visionkit.fileio import atomic_write_bytes, atomic_write_text


@pytest.fixture
def umask():
    """Sets the process umask for one test and puts the previous one back."""
    before = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(before)


@pytest.mark.parametrize("mask, mode", [(0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_new_file_gets_0666_less_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write_text(tmp_path / "run" / "config.yaml", "a: 1\n")
    assert stat.S_IMODE((tmp_path / "run" / "config.yaml").stat().st_mode) == mode


def test_the_umask_is_never_changed_during_a_write(tmp_path, umask, monkeypatch):
    """Setting the umask to read it races with every thread creating a file meanwhile: a file made
    in that window gets mode 0666 (or 0777 for a directory)."""
    umask(0o027)
    calls = []
    real = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(oct(mask)) or real(mask))
    atomic_write_bytes(tmp_path / "last.pt", b"weights")
    atomic_write_text(tmp_path / "metrics.jsonl", "{}\n")
    assert calls == []
    assert stat.S_IMODE((tmp_path / "last.pt").stat().st_mode) == 0o640


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_previous_file_and_no_temp_file(tmp_path, error):
    target = tmp_path / "metrics.jsonl"
    atomic_write_text(target, '{"epoch": 0}\n')

    def half_then_fail(fh):
        fh.write('{"epoch": 0}\n{"ep')
        fh.flush()
        raise error

    with pytest.raises(type(error)):
        fileio._atomic(target, half_then_fail, "w")
    assert target.read_text() == '{"epoch": 0}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_the_directory_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    """Without it, a power loss after the rename can bring back the previous file (or none)."""
    target = tmp_path / "checkpoints" / "last.pt"
    atomic_write_bytes(target, b"old")
    directory = os.stat(target.parent)
    synced = []
    real = os.fsync

    def record(fd):
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (directory.st_dev, directory.st_ino):
            synced.append(target.read_bytes())  # what the directory holds when it is synced
        return real(fd)

    monkeypatch.setattr(os, "fsync", record)
    atomic_write_bytes(target, b"new")
    assert synced == [b"new"]


def test_a_directory_that_cannot_be_fsynced_is_no_error(tmp_path, monkeypatch):
    """Some filesystems refuse fsync on a directory (EINVAL); the file is written all the same."""
    real = os.fsync

    def refuse_dirs(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd)

    monkeypatch.setattr(os, "fsync", refuse_dirs)
    atomic_write_text(tmp_path / "eval.json", "{}")
    assert (tmp_path / "eval.json").read_text() == "{}"
