"""``data.on_corrupt: skip``: bad files are dropped and named, in time linear in the file count."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionkit.data import images


def test_corrupt_files_are_dropped_and_the_first_is_named(tmp_path):
    files = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        if i in (2, 4):
            path.write_bytes(b"not an image")
        else:
            Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(path)
        files.append(path)
    with pytest.warns(UserWarning) as caught:
        kept = images.drop_corrupt(files, "data/train/cat")
    assert kept == [files[i] for i in (0, 1, 3, 5)]
    assert len(caught) == 1
    assert str(caught[0].message) == f"data/train/cat: skipped 2 corrupt image(s) of 6 (first: {files[2]})"


def test_no_warning_when_every_file_decodes(tmp_path):
    files = [tmp_path / f"{i}.png" for i in range(3)]
    for path in files:
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert images.drop_corrupt(iter(files), "x") == files


class CountedPath(type(Path())):
    """A path that counts the comparisons and hashes made of it: the work done per file."""

    operations = 0

    def __hash__(self):
        CountedPath.operations += 1
        return super().__hash__()

    def __eq__(self, other):
        CountedPath.operations += 1
        return super().__eq__(other)


@pytest.mark.parametrize("bad_at", ["start", "end"])
def test_skipping_is_linear_in_the_number_of_files(monkeypatch, bad_at):
    n = 3000
    paths = [CountedPath(f"/data/{i:05d}.png") for i in range(n)]
    bad = paths[0] if bad_at == "start" else paths[-1]
    opened = []
    monkeypatch.setattr(images, "is_decodable", lambda p: opened.append(p) or p is not bad)
    CountedPath.operations = 0
    with pytest.warns(UserWarning, match=re.escape(f"skipped 1 corrupt image(s) of {n} (first: {bad})")):
        kept = images.drop_corrupt(paths, "x")
    operations = CountedPath.operations
    assert len(opened) == n  # each file decoded once
    assert len(kept) == n - 1 and all(p is not bad for p in kept)
    # Work per file must stay bounded: a set of the kept files rebuilt for each file before the
    # first bad one costs ~n² hashes when the bad file comes last.
    assert operations <= 4 * n, operations
