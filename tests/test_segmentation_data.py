"""Segmentation data: mask folders, VOC layout, COCO rendering, and one-line errors for bad data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionkit.config import Config, load_config, resolved_dict, task_configs
from visionkit.data import synth
from visionkit.errors import ConfigError, DataError
from visionkit_plugins.segmentation import SegmentationPlugin
from visionkit_plugins.segmentation.data import IGNORE_INDEX, DataConfig, build_dataset, collate, load_mask

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["background", *synth.CLASSES]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return synth.scenes(tmp_path_factory.mktemp("scenes") / "shapes", num_train=6, num_val=3, size=64, seed=0)


@pytest.fixture
def copy(scenes, tmp_path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(scenes, tmp_path / "shapes"))


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_mask_folder_dataset(scenes):
    ds = build_dataset(DataConfig(root=scenes), "train")
    assert ds.classes == CLASSES  # from classes.txt
    assert len(ds) == 6
    image, mask = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert mask.shape == (64, 64) and mask.dtype == torch.int64
    expected = np.asarray(Image.open(scenes / "masks" / "train" / "train_00000.png"))
    assert np.array_equal(mask.numpy(), expected)
    assert len(build_dataset(DataConfig(root=scenes), "val")) == 3


def test_coco_rendering_equals_generator_masks(scenes):
    """COCO JSON (RLE) rendered with annToMask gives the generator's own semantic masks."""
    for split in ("train", "val"):
        from_masks = build_dataset(DataConfig(root=scenes), split)
        from_coco = build_dataset(DataConfig(root=scenes, format="coco"), split)
        assert from_coco.classes == CLASSES
        assert len(from_coco) == len(from_masks)
        for i in range(len(from_coco)):
            assert from_coco.source.images[i] == from_masks.source.images[i]
            assert np.array_equal(from_coco.raw(i)[1], from_masks.raw(i)[1]), from_coco.source.name(i)


def test_coco_class_subset_and_crowd(scenes, tmp_path):
    """Listed classes take their position in ``classes``; unlisted categories become background;
    crowd regions become ignore."""
    from pycocotools import mask as mask_utils

    data = json.loads((scenes / "annotations" / "instances_train.json").read_text())
    ann = data["annotations"][0]
    ann["iscrowd"] = 1
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps(data))
    shutil.copytree(scenes / "images", tmp_path / "images")
    ds = build_dataset(DataConfig(root=tmp_path, format="coco", classes=["bg", "star", "circle"]), "train")
    assert ds.classes == ["bg", "star", "circle"]
    index = next(i for i, r in enumerate(ds.source.records) if r["id"] == ann["image_id"])
    mask = ds.raw(index)[1]
    crowd = mask_utils.decode(ann["segmentation"]).astype(bool)
    assert crowd.any() and (mask[crowd] == IGNORE_INDEX).all()
    generator = np.asarray(Image.open(scenes / "masks" / "train" / ds.source.records[index]["file_name"]))
    expected = np.select([generator == 4, generator == 1], [1, 2], 0)  # star -> 1, circle -> 2, others -> 0
    assert np.array_equal(mask[~crowd], expected[~crowd])


def test_coco_size_mismatch(scenes, tmp_path):
    data = json.loads((scenes / "annotations" / "instances_val.json").read_text())
    data["images"][1]["width"] = 70
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(data))
    shutil.copytree(scenes / "images", tmp_path / "images")
    with pytest.raises(DataError) as exc:
        build_dataset(DataConfig(root=tmp_path, format="coco"), "val")
    text = one_line(exc)
    assert "instances_val.json" in text and "70x64" in text and str(tmp_path / "images" / "val" / "val_00001.png") in text


def test_palette_png_read_by_index(tmp_path):
    index = np.array([[0, 1, 2], [3, 255, 1]], dtype=np.uint8)
    img = Image.fromarray(index, mode="P")
    colours = [0, 0, 0, 220, 20, 60, 0, 255, 0, 10, 10, 250] + [0] * (3 * 251) + [224, 224, 192]
    img.putpalette(colours)
    img.save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == "P"
    assert np.array_equal(load_mask(tmp_path / "m.png"), index)


def test_colour_mask_is_an_error(copy):
    path = copy / "masks" / "train" / "train_00001.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(DataError) as exc:
        build_dataset(DataConfig(root=copy), "train")
    assert str(path) in one_line(exc) and "RGB" in str(exc.value)


def test_mask_size_mismatch(copy):
    path = copy / "masks" / "train" / "train_00002.png"
    Image.open(path).resize((60, 64), Image.NEAREST).save(path)
    with pytest.raises(DataError) as exc:
        build_dataset(DataConfig(root=copy), "train")
    text = one_line(exc)
    assert str(path) in text and "60x64" in text and "64x64" in text and "train_00002.png" in text


def test_values_outside_the_classes(copy):
    path = copy / "masks" / "train" / "train_00003.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[0, 0], mask[0, 1], mask[0, 2] = 7, 9, IGNORE_INDEX  # 255 is allowed: ignore
    Image.fromarray(mask).save(path)
    with pytest.raises(DataError) as exc:
        build_dataset(DataConfig(root=copy), "train")
    text = one_line(exc)
    assert str(path) in text and "7, 9" in text and "255" in text.split("(")[-1]


def test_bad_values_found_on_read_when_not_verified(copy):
    path = copy / "masks" / "train" / "train_00000.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[5, 5] = 5
    Image.fromarray(mask).save(path)
    ds = build_dataset(DataConfig(root=copy, verify=False), "train")
    with pytest.raises(DataError, match=r"train_00000\.png: mask values 5 are outside the 5 classes"):
        ds[ds.source.masks.index(path)]


def test_image_without_mask(copy):
    (copy / "masks" / "train" / "train_00004.png").unlink()
    with pytest.raises(DataError) as exc:
        build_dataset(DataConfig(root=copy), "train")
    text = one_line(exc)
    assert str(copy / "images" / "train" / "train_00004.png") in text and "no mask" in text


def test_missing_and_empty_folders(copy, tmp_path):
    with pytest.raises(DataError, match="data.root folder not found"):
        build_dataset(DataConfig(root=tmp_path / "nowhere"), "train")
    shutil.rmtree(copy / "masks" / "val")
    with pytest.raises(DataError) as exc:
        build_dataset(DataConfig(root=copy), "val")
    assert str(copy / "masks" / "val") in one_line(exc)
    for f in (copy / "images" / "val").iterdir():
        f.unlink()
    with pytest.raises(DataError) as exc:
        build_dataset(DataConfig(root=copy), "val")
    assert str(copy / "images" / "val") in one_line(exc) and "no image files" in str(exc.value)


def test_missing_classes_file(copy):
    (copy / "classes.txt").unlink()
    with pytest.raises(ConfigError, match="classes.txt does not exist"):
        build_dataset(DataConfig(root=copy), "train")
    assert build_dataset(DataConfig(root=copy, classes=CLASSES), "train").classes == CLASSES


def voc_layout(scenes: Path, root: Path) -> Path:
    """The shapes data rearranged as Pascal VOC: JPEGs, palette PNG masks, split lists."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for split in ("train", "val"):
        ids = []
        for path in sorted((scenes / "images" / split).glob("*.png")):
            Image.open(path).convert("RGB").save(root / "JPEGImages" / f"{path.stem}.jpg", quality=95)
            mask = Image.fromarray(np.asarray(Image.open(scenes / "masks" / split / path.name)), mode="P")
            mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128])
            mask.save(root / "SegmentationClass" / path.name)
            ids.append(path.stem)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids[:-1]) + "\n")
    return root


def test_voc_layout_with_split_lists(scenes, tmp_path):
    root = voc_layout(scenes, tmp_path / "VOC2012")
    cfg = DataConfig(root=root, images="JPEGImages", masks="SegmentationClass",
                     split_list="ImageSets/Segmentation/{split}.txt", classes=CLASSES)
    train = build_dataset(cfg, "train")
    assert len(train) == 5  # the list leaves the last image out
    assert [p.name for p in train.source.images] == [f"train_{i:05d}.jpg" for i in range(5)]
    expected = np.asarray(Image.open(scenes / "masks" / "train" / "train_00000.png"))
    assert np.array_equal(train.raw(0)[1], expected)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("val_00000\nnot_there\n")
    with pytest.raises(DataError) as exc:
        build_dataset(cfg, "val")
    assert "val.txt: line 2: no image 'not_there'" in one_line(exc)


def test_augmentation_moves_mask_with_image(scenes):
    plain = build_dataset(DataConfig(root=scenes), "train")
    flipped = build_dataset(DataConfig(root=scenes, train_transforms=[{"name": "HorizontalFlip", "p": 1.0}]), "train")
    image, mask = plain[1]
    image_f, mask_f = flipped[1]
    assert torch.equal(image_f, image.flip(-1)) and torch.equal(mask_f, mask.flip(-1))


def test_augmentation_repeats_under_the_same_torch_seed(scenes):
    specs = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "VerticalFlip", "p": 0.5}, {"name": "RandomRotate90", "p": 0.5}]
    ds = build_dataset(DataConfig(root=scenes, train_transforms=specs), "train")
    draws = []
    for _ in range(2):
        torch.manual_seed(123)
        draws.append([ds[i][1] for i in range(len(ds))])
    assert all(torch.equal(a, b) for a, b in zip(*draws))


def test_only_albumentations_transforms(scenes):
    with pytest.raises(ConfigError, match="'os.system' is not an albumentations transform"):
        build_dataset(DataConfig(root=scenes, train_transforms=[{"name": "os.system"}]), "train")
    with pytest.raises(ConfigError, match="did you mean 'HorizontalFlip'"):
        build_dataset(DataConfig(root=scenes, train_transforms=[{"name": "HorizontalFlp"}]), "train")


def test_collate_pads_with_ignore():
    a = (torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.long))
    b = (torch.ones(3, 6, 3), torch.ones(6, 3, dtype=torch.long))
    images, masks = collate([a, b])
    assert images.shape == (2, 3, 6, 5) and masks.shape == (2, 6, 5)
    assert (masks[0, 4:] == IGNORE_INDEX).all() and (masks[1, :, 3:] == IGNORE_INDEX).all()
    assert (images[0, :, 4:] == 0).all() and (masks[0, :4] == 0).all()


@pytest.mark.parametrize("name", ["shapes.yaml", "voc2012.yaml"])
def test_configs_validate(name):
    path = REPO / "configs" / "segmentation" / name
    cfg, _ = load_config(path)
    sections = task_configs(cfg, SegmentationPlugin(), str(path), base=REPO)
    assert cfg.task == "segmentation" and sections.data.root.is_absolute()
    # What the workers get: the resolved config, every field written out, validates again.
    resolved = Config.model_validate(resolved_dict(cfg, sections))
    assert task_configs(resolved, SegmentationPlugin(), "resolved") == sections


def test_on_corrupt_skip_drops_bad_images_and_masks_in_one_pass(copy, monkeypatch):
    """Each sample is checked once, however many are bad and wherever they are."""
    from visionkit_plugins.segmentation import data as segdata

    (copy / "images" / "train" / "train_00004.png").write_bytes(b"not a png")
    (copy / "masks" / "train" / "train_00001.png").write_bytes(b"")
    checked = []
    real = segdata.is_decodable
    monkeypatch.setattr(segdata, "is_decodable", lambda p: checked.append(p) or real(p))
    with pytest.warns(UserWarning, match=r"skipped 2 sample\(s\).* of 6 \(first: .*train_00001.png\)"):
        ds = build_dataset(DataConfig(root=copy, on_corrupt="skip"), "train")
    assert len(ds) == 4 and len(checked) == 6
    assert all(img.name not in ("train_00001.png", "train_00004.png") for img in ds.source.images)
