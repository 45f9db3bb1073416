"""Classification data: ImageFolder and MNIST IDX readers, and bad input named precisely."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from visionkit.errors import ConfigError, DataError
from visionkit_plugins.classification.data import DataConfig, build_dataset, write_idx

from conftest import REPO, run_cli


def folder_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(root=root, image_size=32, mean=[0.5] * 3, std=[0.25] * 3, **kw)


@pytest.fixture
def shapes_copy(shapes_cls, tmp_path) -> Path:
    dst = tmp_path / "shapes"
    shutil.copytree(shapes_cls, dst)
    return dst


def test_imagefolder_reads_classes_and_tensors(shapes_cls):
    ds = build_dataset(folder_cfg(shapes_cls), "train")
    assert ds.classes == ["circle", "square", "star", "triangle"]
    image, label = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= label < 4
    assert len(ds) == 160 and len(build_dataset(folder_cfg(shapes_cls), "val")) == 60


def test_missing_and_empty_folders(tmp_path, shapes_copy):
    with pytest.raises(DataError, match=r"nope/train: data folder not found"):
        build_dataset(folder_cfg(tmp_path / "nope"), "train")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty/train: no class folders"):
        build_dataset(folder_cfg(tmp_path / "empty"), "train")
    for f in (shapes_copy / "train" / "star").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"train/star: class folder has no images"):
        build_dataset(folder_cfg(shapes_copy), "train")


def test_corrupt_image_fails_with_its_path_or_is_skipped(shapes_copy):
    bad = shapes_copy / "train" / "circle" / "train_00000.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    ds = build_dataset(folder_cfg(shapes_copy), "train")
    index = next(i for i, (p, _) in enumerate(ds.samples) if p == bad)
    with pytest.raises(DataError, match=f"{bad}: cannot decode image"):
        ds[index]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        skipped = build_dataset(folder_cfg(shapes_copy, on_corrupt="skip"), "train")
    assert len(skipped) == len(ds) - 1
    assert any("skipped 1 corrupt image(s)" in str(w.message) and str(bad) in str(w.message) for w in caught)


def test_bad_transform_name_is_a_config_error(shapes_cls):
    with pytest.raises(ConfigError, match=r"data.train_transforms\[0\].name: 'HorizontalFlp'.*did you mean 'HorizontalFlip'"):
        build_dataset(folder_cfg(shapes_cls, train_transforms=[{"name": "HorizontalFlp"}]), "train")
    with pytest.raises(ConfigError, match=r"'__import__' is not an albumentations transform"):
        build_dataset(folder_cfg(shapes_cls, train_transforms=[{"name": "__import__"}]), "train")


def write_mnist(root: Path, n_train=50, n_val=20, gz=True):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", rng.integers(0, 10, n))


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_reader(tmp_path, gz):
    write_mnist(tmp_path / "mnist", gz=gz)
    cfg = DataConfig(format="mnist", root=tmp_path / "mnist", channels=1, mean=[0.1307], std=[0.3081])
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (len(train), len(val)) == (50, 20) and train.classes[3] == "3"
    image, label = train[0]
    assert image.shape == (1, 28, 28) and label.dtype == torch.int64
    aug = build_dataset(cfg.model_copy(update={"channels": 3, "image_size": 32}), "train")
    assert aug[0][0].shape == (3, 32, 32)


def test_mnist_missing_or_corrupt_file(tmp_path):
    write_mnist(tmp_path / "mnist")
    cfg = DataConfig(format="mnist", root=tmp_path / "mnist", channels=1)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[.gz\]: MNIST IDX file not found"):
        build_dataset(cfg, "val")
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: not a valid IDX file"):
        build_dataset(cfg, "train")


def test_cli_data_errors_exit_nonzero_in_one_line(tmp_path, shapes_copy):
    (shapes_copy / "train" / "square" / "train_00001.png").write_bytes(b"junk")
    config = REPO / "configs" / "classification" / "shapes.yaml"
    args = [f"data.root={shapes_copy}", "ray.num_workers=0", "model.name=mlp", "data.image_size=32",
            "train.epochs=1", f"output.storage_path={tmp_path}/runs"]
    proc = run_cli("train", str(config), *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{shapes_copy}/train/square/train_00001.png: cannot decode image" in proc.stderr
    proc = run_cli("train", str(REPO / "configs" / "classification" / "mnist_mlp.yaml"), f"data.root={tmp_path}/none")
    assert proc.returncode == 2 and "MNIST IDX file not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("--debug", "train", str(REPO / "configs" / "classification" / "mnist_mlp.yaml"), f"data.root={tmp_path}/none")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
