"""Detection's three formats: COCO, YOLO txt (Ultralytics layout) and Pascal VOC XML read into the
same records; each format's broken inputs end in one line naming the file, line/object and field;
a short training run reads YOLO data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from visionkit.cli import main
from visionkit.data import synth
from visionkit.errors import ConfigError, DataError
from visionkit_plugins.detection import DataConfig, DetectionPlugin


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    """The same scenes (seed 5) in each format, written by the synthesiser."""
    base = tmp_path_factory.mktemp("formats")
    return {f: synth.scenes(base / f, num_train=6, num_val=3, size=48, seed=5, format=f)
            for f in ("coco", "yolo", "voc")}


@pytest.fixture
def copy(sets, tmp_path, request):
    def make(fmt: str) -> Path:
        return Path(shutil.copytree(sets[fmt], tmp_path / fmt))
    return make


def build(root: Path, split: str = "train", **kw):
    return DetectionPlugin().build_dataset(DataConfig(root=root, **kw), split)


def boxes_by_file(ds) -> dict[str, list]:
    return {r.file.name: sorted(zip(r.labels.tolist(), np.round(r.boxes, 2).tolist())) for r in ds.split.records}


@pytest.mark.parametrize("fmt", ["yolo", "voc"])
def test_every_format_reads_the_same_boxes_as_coco(sets, fmt):
    for split in ("train", "val"):
        coco = build(sets["coco"], split)
        other = build(sets[fmt], split, format=fmt)
        assert len(other) == len(coco) and other.split.format == fmt
        # VOC's classes are the sorted names found in train; map both to names to compare
        named = lambda ds: {f: sorted((ds.classes[k], b) for k, b in v) for f, v in boxes_by_file(ds).items()}  # noqa: E731
        assert named(other) == named(coco)
        image, target = other[0]
        assert image.shape == (3, 48, 48) and len(target["boxes"]) == len(target["labels"])
    assert build(sets["yolo"], format="yolo").classes == synth.CLASSES
    assert build(sets["voc"], format="voc").classes == sorted(synth.CLASSES)
    assert build(sets["voc"], format="voc", classes=synth.CLASSES).classes == synth.CLASSES


def test_format_auto_finds_each_layout_and_refuses_ambiguity(sets, tmp_path):
    for fmt, root in sets.items():
        assert build(root, format="auto").split.format == fmt
    both = Path(shutil.copytree(sets["yolo"], tmp_path / "both"))
    shutil.copytree(sets["coco"] / "annotations", both / "annotations")
    with pytest.raises(ConfigError, match=r"holds more than one layout: coco .*yolo"):
        build(both, format="auto")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="found no detection dataset here; looked for annotations/instances_train.json"):
        build(tmp_path / "empty", format="auto")


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("line, expected", [
    ("7 0.5 0.5 0.2 0.2", "line 2: class 7 is not in data.yaml names (0-3)"),
    ("1 0.5 0.5", "line 2: expected 5 values (class x_center y_center width height) or a polygon"),
    ("1 0.5 1.5 0.2 0.2", "line 2: y_center 1.5 is outside 0..1"),
    ("1 0.5 abc 0.2 0.2", "line 2: y_center 'abc' is not a number"),
    ("1.5 0.5 0.5 0.2 0.2", "line 2: class 1.5 is not in data.yaml names"),
])
def test_a_bad_yolo_line_names_file_line_and_value(copy, line, expected):
    root = copy("yolo")
    label = root / "labels" / "train" / "train_00003.txt"
    lines = label.read_text().splitlines()
    label.write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
    with pytest.raises(DataError) as err:
        build(root, format="yolo")
    assert f"{label} {expected}" in one_line(err)


def test_yolo_names_dict_polygons_missing_labels_and_yaml_errors(copy):
    root = copy("yolo")
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: {0: circle, 1: square, 2: triangle, 3: star}\n")
    label = root / "labels" / "train" / "train_00000.txt"
    label.write_text("2 0.1 0.1 0.5 0.2 0.3 0.6\n")  # a polygon: its box is its extent
    (root / "labels" / "train" / "train_00001.txt").unlink()  # no label file: an image without objects
    ds = build(root, format="yolo")
    by_name = {r.file.name: r for r in ds.split.records}
    assert by_name["train_00000.png"].labels.tolist() == [2]
    assert np.allclose(by_name["train_00000.png"].boxes, [[0.1 * 48, 0.1 * 48, 0.5 * 48, 0.6 * 48]])
    assert len(by_name["train_00001.png"].boxes) == 0 and ds.classes == synth.CLASSES

    for text, expected in [
        ("train: images/train\nval: images/val\nnames: {0: a, 2: b}\n", "field 'names': indices must be 0..1 without gaps; missing 1"),
        ("train: images/train\nnames: [a, b, c, d]\n", "field 'val': missing"),
        ("train: images/train\nval: images/val\nnames: [a, b]\nnc: 3\n", "field 'nc': 3, but 'names' has 2 entries"),
        ("train: images/nowhere\nval: images/val\nnames: [a, b, c, d]\n", "is neither a folder of images nor a .txt list"),
    ]:
        (root / "data.yaml").write_text(text)
        with pytest.raises(DataError) as err:
            build(root, "val" if "'val'" in expected else "train", format="yolo")
        assert f"{root / 'data.yaml'}: " in one_line(err) and expected in str(err.value)


def test_a_non_utf8_image_list_or_image_set_is_one_line(copy, capsys):
    """A binary or Latin-1 list where UTF-8 text belongs: the file named, not a UnicodeDecodeError."""
    root = copy("yolo")
    listing = root / "train.txt"
    text = "images/train/train_00000.png\nimages/train/caf\xe9.png\n".encode("latin-1")
    listing.write_bytes(text)
    (root / "data.yaml").write_text("train: train.txt\nval: images/val\nnames: [circle, square, triangle, star]\n")
    with pytest.raises(DataError) as err:
        build(root, format="yolo")
    assert one_line(err) == (f"{listing}: not UTF-8 text (byte 0xe9 at offset {text.index(0xe9)}); expected a list of "
                             "image paths, one per line")

    root = copy("voc")
    image_set = root / "ImageSets" / "Main" / "train.txt"
    image_set.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    code = main(["data", "check", "configs/detection/shapes.yaml", f"data.root={root}", "data.format=voc"])
    out = capsys.readouterr()
    assert code == 2 and "Traceback" not in out.out + out.err
    assert f"{image_set}: not UTF-8 text (byte 0x89 at offset 0); expected image ids, one per line" in out.out


def test_voc_classes_given_twice_are_refused(copy, capsys):
    """data.classes: [a, b, a] would give a's objects label 2 and leave label 0 without objects."""
    root = copy("voc")
    code = main(["data", "check", "configs/detection/shapes.yaml", f"data.root={root}", "data.format=voc",
                 "data.classes=[circle,square,circle,star]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "data.classes: value error, 'circle' appears twice; each class once, in label order" in err


def test_a_yolo_box_finding_names_its_line(copy, capsys):
    """Label files skip blank lines: the finding names the line the box is on, not its rank."""
    root = copy("yolo")
    label = root / "labels" / "train" / "train_00002.txt"
    label.write_text("\n" + label.read_text().splitlines()[0] + "\n\n1 0.5 0.5 0.0 0.1\n")  # line 4: no width
    code = main(["data", "check", "configs/detection/shapes.yaml", f"data.root={root}", "data.format=yolo"])
    out = capsys.readouterr().out
    assert code == 0 and "1 degenerate box(es)" in out and f"{label} line 4: [x " in out, out


def test_a_zero_byte_yolo_image_is_named_when_the_split_is_read(copy):
    root = copy("yolo")
    (root / "images" / "val" / "val_00001.png").write_bytes(b"")
    with pytest.raises(DataError) as err:
        build(root, "val", format="yolo")
    assert one_line(err) == f"{root / 'images' / 'val' / 'val_00001.png'}: empty file (0 bytes), not an image"


def edit_xml(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def test_bad_voc_files_name_the_file_object_and_field(copy):
    root = copy("voc")
    xml = root / "Annotations" / "train_00002.xml"
    original = xml.read_text()
    objects = original.split("<object>")
    assert len(objects) >= 3, "the fixture's image needs two objects"
    second = objects[2]
    xmin = second.split("<xmin>")[1].split("<")[0]
    bad = second.replace(f"<xmax>{second.split('<xmax>')[1].split('<')[0]}</xmax>", f"<xmax>{int(xmin) - 5}</xmax>")
    xml.write_text(original.replace(second, bad))
    with pytest.raises(DataError) as err:
        build(root, format="voc")
    assert one_line(err) == f"{xml} object 2: bndbox xmax {int(xmin) - 5} < xmin {xmin}"

    for broken, expected in [
        (original.replace("<name>", "<name>zebra_", 1), "object 1: class 'zebra_"),
        (original.replace("<ymin>", "<ymin>x", 1), "object 1: field 'bndbox ymin': 'x"),
        (original.replace("<xmax>", "<other>", 1).replace("</xmax>", "</other>", 1), "object 1: field 'bndbox xmax' missing"),
        (original.replace("<difficult>0", "<difficult>2", 1), "object 1: field 'difficult': expected 0 or 1"),
        (original[:-20], "not valid XML"),
    ]:
        xml.write_text(broken)
        with pytest.raises(DataError) as err:
            build(root, format="voc", classes=synth.CLASSES)
        assert one_line(err).startswith(f"{xml}") and expected in str(err.value)
    xml.write_text(original)

    (root / "Annotations" / "val_00001.xml").unlink()
    with pytest.raises(DataError, match="val_00001.xml: annotation file not found"):
        build(root, "val", format="voc")
    (root / "JPEGImages" / "train_00004.png").unlink()
    with pytest.raises(DataError, match=r"train_00004.xml field 'filename': image file .*train_00004.png not found"):
        build(root, format="voc")


def test_voc_val_class_unknown_to_train_and_difficult_objects(copy):
    root = copy("voc")
    val_xml = root / "Annotations" / "val_00000.xml"
    edit_xml(val_xml, "<name>", "<name>zebra", 1)
    with pytest.raises(DataError) as err:
        build(root, "val", format="voc")
    assert "object 1: class 'zebra" in one_line(err) and "list every class in data.classes" in str(err.value)

    train_xml = root / "Annotations" / "train_00000.xml"
    edit_xml(train_xml, "<difficult>0", "<difficult>1", 1)
    rec = next(r for r in build(root, format="voc").split.records if r.file.name == "train_00000.png")
    assert len(rec.boxes) == len(rec.gt)  # trained on ...
    assert [g["iscrowd"] for g in rec.gt][0] == 1  # ... and an ignore region in evaluation


def test_coco_without_annotations_is_an_error_not_zero_boxes(copy):
    root = copy("coco")
    path = root / "annotations" / "instances_train.json"
    coco = json.loads(path.read_text())
    del coco["annotations"]
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError) as err:
        build(root)
    assert one_line(err).startswith(f"{path}: field 'annotations': missing")
    coco["annotations"] = []  # said explicitly: a set without objects
    path.write_text(json.dumps(coco))
    assert sum(len(r.boxes) for r in build(root).split.records) == 0


def test_synth_cli_writes_each_layout(tmp_path):
    for fmt, marker in (("yolo", "data.yaml"), ("voc", "ImageSets/Main/val.txt"), ("coco", "annotations/instances_val.json")):
        assert main(["data", "synth", "scenes", str(tmp_path / fmt), "--format", fmt, "--num-train", "2",
                     "--num-val", "1", "--size", "32"]) == 0
        assert (tmp_path / fmt / marker).is_file()
    assert not (tmp_path / "yolo" / "masks").exists() and (tmp_path / "coco" / "masks").is_dir()
    assert main(["data", "synth", "classification", str(tmp_path / "c"), "--format", "yolo"]) == 2


def test_a_short_training_run_reads_yolo_data(tmp_path, one_thread):
    """The reader feeds the loop: two epochs in this process on YOLO files, evaluated with the
    COCO metric on the val split's files."""
    import math

    from visionkit.train import launch

    root = synth.scenes(tmp_path / "yolo", num_train=8, num_val=4, size=64, seed=2, format="yolo")
    run = launch.train("configs/detection/shapes.yaml", [
        f"data.root={root}", "data.format=auto", "ray.num_workers=0", "train.epochs=2", "train.batch_size=4",
        "model.min_size=64", "model.max_size=64", "train.progress=false", "train.scheduler.warmup_epochs=0",
        f"output.storage_path={tmp_path / 'runs'}", "output.name=yolo"])
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["train/loss"]) and r["train/loss"] > 0 for r in rows)
    assert 0 <= rows[-1]["val/mAP50"] <= 1 and 0 <= rows[-1]["val/AR100"] <= 1
