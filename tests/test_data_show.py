"""``visionkit data show``: a grid of the expected size, with each task's labels drawn where they
are (box outlines on the box edges, mask colours inside the shapes, class captions), as stored or
through the training augmentation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionkit.cli import main
from visionkit.data import synth
from visionkit.datacheck.show import CAPTION, PAD, TILE_MAX

SIZE = 32  # enlarged 8x to 256-px tiles


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return synth.scenes(tmp_path_factory.mktemp("show"), num_train=8, num_val=4, size=SIZE, seed=6)


def show(tmp_path: Path, config: str, root: Path, *flags: str, name: str = "grid.png") -> np.ndarray:
    out = tmp_path / name
    assert main(["data", "show", config, f"data.root={root}", "-o", str(out), *flags]) == 0
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def tile(grid: np.ndarray, k: int, cols: int, side: int = 256) -> np.ndarray:
    x, y = PAD + (k % cols) * (side + PAD), PAD + (k // cols) * (side + CAPTION + PAD) + CAPTION
    return grid[y:y + side, x:x + side]


def enlarged(path: Path) -> np.ndarray:
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return np.kron(image, np.ones((256 // SIZE, 256 // SIZE, 1), dtype=int))


def test_detection_grid_has_boxes_on_their_edges(tmp_path, scenes, capsys):
    grid = show(tmp_path, "configs/detection/shapes.yaml", scenes, "-n", "4", "--split", "val")
    assert grid.shape == (PAD + 2 * (256 + CAPTION + PAD), PAD + 2 * (256 + PAD), 3)  # 2 x 2 tiles
    assert "4 of 4 val samples, as stored" in capsys.readouterr().out
    coco = json.loads((scenes / "annotations" / "instances_val.json").read_text())
    for k, image in enumerate(coco["images"]):
        drawn, raw = tile(grid, k, 2), enlarged(scenes / "images" / "val" / image["file_name"])
        for ann in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
            x, y, w, h = (int(v * 8) for v in ann["bbox"])
            # the left edge of the box, below its caption, is drawn over ...
            assert np.abs(drawn[y + h - 2, x] - raw[y + h - 2, x]).sum() > 0
        # ... and the image is otherwise itself: most pixels untouched
        assert (np.abs(drawn - raw).sum(axis=2) == 0).mean() > 0.6


def test_augmented_tiles_follow_the_training_pipeline_and_seed(tmp_path, scenes):
    config = "configs/detection/shapes.yaml"  # flips and 90-degree turns
    raw = show(tmp_path, config, scenes, "-n", "8", name="raw.png")
    first = show(tmp_path, config, scenes, "-n", "8", "--augmented", name="a.png")
    again = show(tmp_path, config, scenes, "-n", "8", "--augmented", name="b.png")
    other = show(tmp_path, config, scenes, "-n", "8", "--augmented", "train.seed=1", name="c.png")
    assert first.shape == raw.shape == (PAD + 3 * (256 + CAPTION + PAD), PAD + 3 * (256 + PAD), 3)  # 3 x 3 cells
    assert np.array_equal(first, again)  # seeded as training seeds each sample
    assert not np.array_equal(first, other)
    moved = sum(not np.array_equal(tile(first, k, 3), tile(raw, k, 3)) for k in range(8))
    assert moved >= 3  # 1 - 0.5**3 of images are flipped or turned


def test_segmentation_overlay_colours_the_shapes_only(tmp_path, scenes):
    grid = show(tmp_path, "configs/segmentation/shapes.yaml", scenes, "-n", "1")
    assert grid.shape == (PAD + 256 + CAPTION + PAD, PAD + 256 + PAD, 3)
    mask = np.kron(np.asarray(Image.open(scenes / "masks" / "train" / "train_00000.png")), np.ones((8, 8), dtype=np.uint8))
    changed = np.abs(tile(grid, 0, 1) - enlarged(scenes / "images" / "train" / "train_00000.png")).sum(axis=2) > 0
    assert changed[mask > 0].mean() > 0.9 and changed[mask == 0].mean() == 0


def test_classification_tiles_carry_the_class_name(tmp_path, shapes_cls):
    grid = show(tmp_path, "configs/classification/shapes.yaml", shapes_cls, "-n", "2", "--augmented")
    assert grid.shape == (PAD + 256 + CAPTION + PAD, PAD + 2 * (256 + PAD), 3)
    first = tile(grid, 0, 2)
    assert (first[2:20, 2:40] == 0).all(axis=2).mean() > 0.3  # the caption's black box at the top left


def test_a_box_under_a_pixel_wide_is_drawn_as_a_line(tmp_path, scenes):
    """data.min_box_size: 0 keeps a 0.05-px box; enlarged 8x it is under a pixel (PIL refuses a
    rectangle whose right edge is left of its left edge): a 1-px line, and the grid is drawn."""
    root = Path(shutil.copytree(scenes, tmp_path / "data"))
    path = root / "annotations" / "instances_val.json"
    coco = json.loads(path.read_text())
    coco["annotations"].append({"id": 999, "image_id": coco["images"][0]["id"], "category_id": 1,
                                "bbox": [3, 4, 0.05, 0.05], "area": 0.0025, "iscrowd": 0})
    path.write_text(json.dumps(coco))
    grid = show(tmp_path, "configs/detection/shapes.yaml", root, "-n", "1", "--split", "val", "data.min_box_size=0")
    raw = enlarged(root / "images" / "val" / coco["images"][0]["file_name"])
    assert np.abs(tile(grid, 0, 1)[4 * 8, 3 * 8] - raw[4 * 8, 3 * 8]).sum() > 0


def test_large_photos_are_drawn_smaller_with_their_boxes_in_place(tmp_path):
    """16 tiles of 4000-px photos made a 16000-px grid: a tile is at most TILE_MAX on its longest
    side, and the boxes are drawn at the same scale."""
    side = 1100
    big = synth.scenes(tmp_path / "big", num_train=1, num_val=4, size=side, seed=6)
    grid = show(tmp_path, "configs/detection/shapes.yaml", big, "-n", "4", "--split", "val")
    assert grid.shape == (PAD + 2 * (TILE_MAX + CAPTION + PAD), PAD + 2 * (TILE_MAX + PAD), 3)
    coco = json.loads((big / "annotations" / "instances_val.json").read_text())
    scale = TILE_MAX / side
    for k, image in enumerate(coco["images"]):
        drawn = tile(grid, k, 2, TILE_MAX)
        with Image.open(big / "images" / "val" / image["file_name"]) as img:
            raw = np.asarray(img.convert("RGB").resize((TILE_MAX, TILE_MAX), Image.BOX)).astype(int)
        for ann in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
            x, y, w, h = ann["bbox"]
            row, col = round((y + h * 0.75) * scale), round(x * scale)  # the left edge, below the caption
            assert np.abs(drawn[row, col - 1:col + 2] - raw[row, col - 1:col + 2]).sum() > 0
