"""Detection data: COCO reading, bad-annotation errors, crowd/empty handling, augmentation."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionkit.data import synth
from visionkit.errors import ConfigError, DataError
from visionkit_plugins.detection import DataConfig, DetectionPlugin

TRAIN_JSON = "annotations/instances_train.json"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return synth.scenes(tmp_path_factory.mktemp("scenes"), num_train=8, num_val=4, size=64, seed=3)


@pytest.fixture
def copy(scenes, tmp_path) -> Path:
    """A private copy to corrupt."""
    return Path(shutil.copytree(scenes, tmp_path / "data"))


def edit_json(root: Path, edit, name: str = TRAIN_JSON) -> Path:
    path = root / name
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))
    return path


def build(root: Path, split: str = "train", **kw):
    return DetectionPlugin().build_dataset(DataConfig(root=root, **kw), split)


def test_dataset_targets(scenes):
    train, val = build(scenes), build(scenes, "val")
    assert train.classes == synth.CLASSES and len(train) == 8 and len(val) == 4
    coco = json.loads((scenes / TRAIN_JSON).read_text())
    n_boxes = 0
    for i in range(len(train)):
        image, target = train[i]
        assert image.shape == (3, 64, 64) and 0 <= float(image.min()) and float(image.max()) <= 1
        assert target["boxes"].shape[1] == 4 and len(target["boxes"]) == len(target["labels"])
        assert int(target["labels"].min()) >= 1 and int(target["labels"].max()) <= 4  # 0 = background
        n_boxes += len(target["boxes"])
    assert n_boxes == len(coco["annotations"])
    _, target = val[0]
    assert target["orig_size"] == (64, 64) and Path(target["file"]).is_file() and target["gt"]
    images, targets = DetectionPlugin().collate([train[0], train[1]])
    assert len(images) == 2 and len(targets) == 2 and DetectionPlugin().batch_size_of((images, targets)) == 2


def test_labels_are_category_ids_in_sorted_order(copy):
    """Non-contiguous ids map to 0..K-1 by id; the model sees 1..K."""
    new_id = {1: 10, 2: 30, 3: 20, 4: 40}

    def remap(coco):
        for c in coco["categories"]:
            c["id"] = new_id[c["id"]]
        for a in coco["annotations"]:
            a["category_id"] = new_id[a["category_id"]]

    edit_json(copy, remap)
    edit_json(copy, remap, "annotations/instances_val.json")
    ds = build(copy)
    assert ds.category_ids == [10, 20, 30, 40]
    assert ds.classes == ["circle", "triangle", "square", "star"]
    coco = json.loads((copy / TRAIN_JSON).read_text())
    first = [a for a in coco["annotations"] if a["image_id"] == ds.split.records[0].id]
    expected = sorted(ds.category_ids.index(a["category_id"]) + 1 for a in first)
    assert sorted(ds[0][1]["labels"].tolist()) == expected


@pytest.mark.parametrize("case, field", [
    ("missing_image", "'file_name'"),
    ("bbox_length", "'bbox'"),
    ("unknown_category", "'category_id'"),
    ("unknown_image", "'image_id'"),
])
def test_bad_annotation_names_file_annotation_and_field(copy, case, field):
    coco = json.loads((copy / TRAIN_JSON).read_text())
    ann = coco["annotations"][2]
    if case == "missing_image":
        image = next(i for i in coco["images"] if i["id"] == ann["image_id"])
        first = next(a for a in coco["annotations"] if a["image_id"] == image["id"])
        ann = first  # the error names the image's first annotation
        (copy / "images" / "train" / image["file_name"]).unlink()
    else:
        def corrupt(c):
            a = next(x for x in c["annotations"] if x["id"] == ann["id"])
            if case == "bbox_length":
                a["bbox"] = a["bbox"][:3]
            elif case == "unknown_category":
                a["category_id"] = 99
            else:
                a["image_id"] = 12345
        edit_json(copy, corrupt)
    with pytest.raises(DataError) as err:
        build(copy)
    message = str(err.value)
    assert "\n" not in message
    assert str(copy / TRAIN_JSON) in message
    assert f"annotation id {ann['id']}" in message
    assert field in message


def test_categories_must_match_between_splits(copy):
    edit_json(copy, lambda c: c["categories"].pop(), "annotations/instances_val.json")
    with pytest.raises(DataError, match="instances_val.json: field 'categories'"):
        build(copy, "val")


def test_crowd_left_out_of_training_but_kept_for_evaluation(copy):
    coco = json.loads((copy / TRAIN_JSON).read_text())
    crowd = coco["annotations"][0]
    edit_json(copy, lambda c: c["annotations"][0].update(iscrowd=1))
    ds = build(copy)
    assert ds.split.counts.crowd == 1
    index = next(i for i, r in enumerate(ds.split.records) if r.id == crowd["image_id"])
    rec = ds.split.records[index]
    assert len(rec.boxes) == len(rec.gt) - 1
    assert [g["iscrowd"] for g in rec.gt if g["id"] == crowd["id"]] == [1]


def test_images_without_boxes_kept_or_dropped(copy):
    coco = json.loads((copy / TRAIN_JSON).read_text())
    emptied = coco["images"][0]["id"]
    edit_json(copy, lambda c: c.update(annotations=[a for a in c["annotations"] if a["image_id"] != emptied]))
    kept = build(copy)
    assert len(kept) == 8
    _, target = kept[[r.id for r in kept.split.records].index(emptied)]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    dropped = build(copy, keep_empty_images=False)
    assert len(dropped) == 7 and dropped.split.counts.empty_images_dropped == 1
    # validation always keeps every image, as COCO evaluation does
    edit_json(copy, lambda c: c.update(annotations=[]), "annotations/instances_val.json")
    assert len(build(copy, "val", keep_empty_images=False)) == 4


def test_out_of_image_and_degenerate_boxes_clipped_or_dropped_and_counted(copy, caplog):
    def boxes(c):
        a = c["annotations"]
        a[0]["bbox"] = [-10.0, 50.0, 30.0, 40.0]  # sticks out left and bottom: clipped
        a[1]["bbox"] = [70.0, 70.0, 10.0, 10.0]  # entirely outside the 64x64 image: dropped
        a[2]["bbox"] = [10.0, 10.0, 0.0, 5.0]  # zero width: dropped
    edit_json(copy, boxes)
    with caplog.at_level(logging.WARNING, logger="visionkit.detection"):
        ds = build(copy)
    counts = ds.split.counts
    assert (counts.clipped, counts.outside, counts.degenerate) == (1, 1, 1)
    assert "1 clipped to the image" in caplog.text and "1 outside the image dropped" in caplog.text
    all_boxes = np.concatenate([r.boxes for r in ds.split.records])
    assert all_boxes.min() >= 0 and all_boxes.max() <= 64
    assert [0.0, 50.0, 20.0, 64.0] in all_boxes.tolist()


def write_one_image_set(root: Path, boxes: list[list[float]]) -> Path:
    """A 64x64 image with the given xywh boxes, as train and val."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(root / "images" / split / "a.png")
        anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                for i, b in enumerate(boxes)]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps({
            "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
            "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    return root


def test_boxes_that_vanish_under_augmentation_are_dropped(tmp_path):
    root = write_one_image_set(tmp_path, [[2.0, 2.0, 20.0, 20.0], [40.0, 40.0, 20.0, 20.0], [20.0, 2.0, 20.0, 20.0]])
    crop = [{"name": "Crop", "x_min": 0, "y_min": 0, "x_max": 32, "y_max": 32}]
    ds = build(root, train_transforms=crop, min_visibility=0.5)
    image, target = ds[0]
    assert image.shape == (3, 32, 32)
    # box 1 fully inside, box 2 outside (vanishes), box 3 is 60% visible (kept, clipped)
    assert target["boxes"].tolist() == [[2.0, 2.0, 22.0, 22.0], [20.0, 2.0, 32.0, 22.0]]
    assert target["labels"].tolist() == [1, 1]
    assert build(root, train_transforms=crop, min_visibility=0.7)[0][1]["boxes"].shape == (1, 4)


def test_transforms_are_albumentations_classes_only(scenes):
    with pytest.raises(ConfigError, match=r"data.train_transforms\[0\].name: 'os.system' is not an albumentations"):
        build(scenes, train_transforms=[{"name": "os.system"}])
    with pytest.raises(ConfigError, match=r"data.val_transforms\[0\].name: 'HorizontalFlip' moves boxes"):
        build(scenes, "val", val_transforms=[{"name": "HorizontalFlip"}])
    build(scenes, "val", val_transforms=[{"name": "RandomBrightnessContrast"}, {"name": "Resize", "height": 96, "width": 96}])


def test_val_resize_is_undone_for_evaluation(scenes):
    """Predictions on a resized val image come back in the original image's pixels."""
    import torch

    plugin = DetectionPlugin()
    ds = build(scenes, "val", val_transforms=[{"name": "Resize", "height": 96, "width": 128}])
    image, target = ds[0]
    assert image.shape == (3, 96, 128) and target["orig_size"] == (64, 64)

    class Echo(torch.nn.Module):  # predicts exactly the (resized) target boxes
        def forward(self, images):
            return [{"boxes": target["boxes"].clone(), "scores": torch.ones(len(target["boxes"])),
                     "labels": target["labels"]}]
    out = plugin.predict(Echo(), ([image], [target]))
    original = torch.tensor([[g["bbox"][0], g["bbox"][1], g["bbox"][0] + g["bbox"][2], g["bbox"][1] + g["bbox"][3]]
                             for g in target["gt"]])
    assert torch.allclose(out[0]["boxes"], original, atol=1e-3)
