"""``visionkit data check`` on each broken case, and its fast form as the pre-flight of
``visionkit train``: bad data and an unknown model fail in the driver, in one line, before Ray."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from visionkit.cli import main
from visionkit.data import synth
from visionkit.datacheck import spread

DET = "configs/detection/shapes.yaml"
CLS = "configs/classification/shapes.yaml"
SEG = "configs/segmentation/shapes.yaml"
TRAIN_JSON = "annotations/instances_train.json"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return synth.scenes(tmp_path_factory.mktemp("check"), num_train=8, num_val=4, size=32, seed=4)


@pytest.fixture
def data(scenes, tmp_path) -> Path:
    return Path(shutil.copytree(scenes, tmp_path / "data"))


def check(capsys, root: Path, *extra: str, config: str = DET) -> tuple[int, str]:
    code = main(["data", "check", config, f"data.root={root}", *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def edit(root: Path, fn, name: str = TRAIN_JSON) -> dict:
    coco = json.loads((root / name).read_text())
    fn(coco)
    (root / name).write_text(json.dumps(coco))
    return coco


def test_clean_data_passes_with_a_table_and_a_histogram(capsys, scenes):
    code, out = check(capsys, scenes)
    assert code == 0, out
    coco = json.loads((scenes / TRAIN_JSON).read_text())
    table = out.splitlines()
    train_row = next(line for line in table if line.startswith("train "))
    assert train_row.split() == ["train", "8", "8", str(len(coco["annotations"])), "0"]
    for k, name in enumerate(synth.CLASSES, start=1):
        row = next(line for line in table if line.startswith(f"{name} "))
        assert int(row.split()[1]) == sum(a["category_id"] == k for a in coco["annotations"])
    assert "no problems found" in out


@pytest.mark.parametrize("content", [b"", b"not an image at all"])
def test_a_corrupt_or_empty_image_is_an_error(capsys, data, content):
    bad = data / "images" / "val" / "val_00002.png"
    bad.write_bytes(content)
    code, out = check(capsys, data)
    assert code == 2
    errors = [line for line in out.splitlines() if str(bad) in line]
    assert len(errors) == 1 and ("empty file (0 bytes)" if not content else "cannot decode image") in errors[0]


def truncated(root: Path, fmt: str) -> Path:
    """Train image 6 as a real encoder writes it (synth's PNG, or PIL's JPEG of its pixels, the
    annotation renamed to it), then cut inside its pixel data: its header still opens."""
    from PIL import Image

    png = root / "images" / "train" / "train_00006.png"
    if fmt == "jpeg":
        path = png.with_suffix(".jpg")
        Image.open(png).convert("RGB").save(path, "JPEG", quality=90)
        png.unlink()
        edit(root, lambda c: next(i for i in c["images"] if i["file_name"] == png.name).update(file_name=path.name))
    else:
        path = png
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) * 2 // 3])
    with Image.open(path) as img:
        assert img.size == (32, 32)  # the header-only read passes it: the case the tail read is for
    return path


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_a_truncated_image_is_an_error(capsys, data, fmt):
    bad = truncated(data, fmt)
    code, out = check(capsys, data)
    assert code == 2
    errors = [line for line in out.splitlines() if str(bad) in line]
    assert len(errors) == 1 and f"{bad}: truncated image: the {fmt.upper()} file" in errors[0], out


def test_bytes_after_a_jpegs_end_marker_are_not_truncation(capsys, data):
    """Padding or a maker's trailer after FFD9, short (in the tail read) or longer than it (the
    decode decides): PIL decodes both, so both train."""
    from PIL import Image

    png = data / "images" / "train" / "train_00006.png"
    for name, extra in (("short.jpg", b"\0" * 100), ("long.jpg", b"\xff\0trailer" * 1000)):
        path = png.with_name(name)
        Image.open(png).convert("RGB").save(path, "JPEG")
        path.write_bytes(path.read_bytes() + extra)
    json_images = lambda c: c["images"][5:7]  # noqa: E731
    edit(data, lambda c: [img.update(file_name=n) for img, n in zip(json_images(c), ("short.jpg", "long.jpg"))])
    code, out = check(capsys, data)
    assert code == 0 and "no problems found" in out, out


def test_a_size_unlike_the_annotation_is_an_error(capsys, data):
    edit(data, lambda c: c["images"][1].update(width=40))
    code, out = check(capsys, data)
    assert code == 2
    assert f"{data / TRAIN_JSON}: image id 2: the annotation gives the image as 40x32 pixels but" in out


def test_coco_without_annotations_is_an_error(capsys, data):
    edit(data, lambda c: c.pop("annotations"), "annotations/instances_val.json")
    code, out = check(capsys, data)
    assert code == 2 and "instances_val.json: field 'annotations': missing" in out
    rows = [line.split() for line in out.splitlines()]
    assert ["train", "8", "8"] == next(r for r in rows if r[:1] == ["train"])[:3]  # the other split is still checked
    assert ["val", "not", "built"] == next(r for r in rows if r[:1] == ["val"])[:3]


def test_degenerate_and_outside_boxes_are_warnings_naming_the_image(capsys, data):
    def corrupt(coco):
        coco["annotations"][0]["bbox"] = [5, 5, 0, 4]          # no width
        coco["annotations"][1]["bbox"] = [40, 40, 5, 5]        # right of and below a 32-px image
        coco["annotations"][2]["bbox"] = [-4, 2, 10, 10]       # partly outside: clipped
    coco = edit(data, corrupt)
    code, out = check(capsys, data)
    assert code == 0, out
    file_of = {img["id"]: img["file_name"] for img in coco["images"]}
    a = coco["annotations"]
    assert "1 degenerate box(es)" in out and f"{file_of[a[0]['image_id']]} (annotation id {a[0]['id']}" in out
    assert "1 box(es) entirely outside their image" in out and f"(annotation id {a[1]['id']}" in out
    assert "1 box(es) partly outside their image, clipped" in out


def test_empty_images_duplicates_overlap_and_val_only_classes_are_warnings(capsys, data):
    train, val = data / "images" / "train", data / "images" / "val"
    shutil.copy(train / "train_00001.png", train / "train_00005.png")   # a duplicate within train
    shutil.copy(train / "train_00002.png", val / "val_00000.png")       # a val image that is in train
    star = synth.CLASSES.index("star") + 1

    def drop_star_and_image_3(coco):
        coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] != star and a["image_id"] != 3]
    edit(data, drop_star_and_image_3)
    val_coco = json.loads((data / "annotations" / "instances_val.json").read_text())
    assert any(a["category_id"] == star for a in val_coco["annotations"]), "the fixture's val split needs a star"
    code, out = check(capsys, data)
    assert code == 0, out
    assert "warnings" in out and "error" not in out.split("warnings")[0]
    assert f"train: 1 exact duplicate image(s) in 1 group(s) (same bytes): {train / 'train_00001.png'} = {train / 'train_00005.png'}" in out
    assert "train/val: 1 val image(s) are byte-identical to train images" in out and str(val / "val_00000.png") in out
    assert "class(es) in val but never in train (the model cannot learn them): star" in out
    assert "images have no objects" in out and "train_00002.png" in out


def test_an_unknown_model_name_is_found_by_data_check(capsys, tmp_path, shapes_cls):
    code, out = check(capsys, shapes_cls, "model.name=resnt18", config=CLS)
    assert code == 2 and (f"config: {CLS} (with command-line overrides): model.name: unknown classification model "
                          "'resnt18' (did you mean 'resnet18'?)") in out


def test_segmentation_and_classification_checks(capsys, scenes, shapes_cls):
    code, out = check(capsys, scenes, config=SEG)
    assert code == 0 and "images containing it per class" in out and "background" in out
    code, out = check(capsys, shapes_cls, config=CLS)
    assert code == 0 and "images per class" in out
    assert next(line for line in out.splitlines() if line.startswith("circle ")).split()[1:] == ["40", "15"]


def test_a_plugin_without_check_data_has_each_sample_loaded_and_named():
    """The default check loads samples through the dataset: whatever its loader raises is a
    finding naming the sample, not a traceback that ends the check."""
    from visionkit.datacheck import check as check_data
    from visionkit.plugin import TaskPlugin

    class Pixels:
        classes = ["a", "b"]

        def __init__(self, split):
            self.split = split

        def __len__(self):
            return 4

        def __getitem__(self, i):
            if self.split == "val" and i == 2:
                raise ValueError("cannot reshape array of size 10 into shape (4,4)\nmore detail")
            return i

    class Plugin:
        build_dataset = staticmethod(lambda data, split: Pixels(split))
        check_data = TaskPlugin.check_data

    report = check_data(Plugin(), data=None)
    assert [f.line() for f in report.errors] == [
        "val: sample 2 (dataset[2]): ValueError: cannot reshape array of size 10 into shape (4,4)"]


def test_large_splits_are_sampled_evenly_and_say_so(capsys, scenes):
    assert spread(10, 3) == [0, 3, 6] and spread(5, 10) == [0, 1, 2, 3, 4] and spread(7, None) == list(range(7))
    code, out = check(capsys, scenes, "--limit", "4")
    assert code == 0 and next(line for line in out.splitlines() if line.startswith("train ")).split()[:4] == \
        ["train", "8", "4", "(every"]


class RayStarted(AssertionError):
    pass


@pytest.fixture
def no_ray(monkeypatch):
    """Any attempt to start or join Ray fails the test."""
    import ray

    from visionkit.train import launch

    def refuse(*args, **kwargs):
        raise RayStarted("Ray was initialised")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(launch, "init_ray", refuse)


def train_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(["train", *args, "ray.num_workers=1", "train.progress=false"])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_train_stops_on_a_zero_byte_image_before_ray_starts(capsys, data, tmp_path, no_ray):
    bad = data / "images" / "train" / "train_00006.png"
    bad.write_bytes(b"")
    code, out = train_cli(capsys, DET, f"data.root={data}", f"output.storage_path={tmp_path / 'runs'}")
    assert code == 2
    assert out.strip().splitlines()[-1] == f"visionkit: error: {bad}: empty file (0 bytes), not an image"
    assert "Traceback" not in out and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_train_stops_on_a_truncated_image_before_ray_starts(capsys, data, tmp_path, no_ray, fmt):
    bad = truncated(data, fmt)
    code, out = train_cli(capsys, DET, f"data.root={data}", f"output.storage_path={tmp_path / 'runs'}")
    assert code == 2
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"visionkit: error: {bad}: truncated image: the {fmt.upper()} file ("), out
    assert "does not decode (image file is truncated" in last
    assert "Traceback" not in out and not (tmp_path / "runs").exists()


def test_train_says_what_its_pre_flight_read(capsys, data, tmp_path, no_ray):
    with pytest.raises(RayStarted):  # the pre-flight passed; the run goes on to start Ray
        main(["train", DET, f"data.root={data}", f"output.storage_path={tmp_path / 'runs'}", "ray.num_workers=1"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[visionkit] data: ")]
    assert len(lines) == 1 and re.fullmatch(r"\[visionkit\] data: 8 train / 4 val samples; headers and ends of 12 "
                                            r"images read \(all\), no problems, \d+\.\d\d s", lines[0]), lines


def test_the_pre_flight_line_names_the_sampling(scenes):
    from visionkit.datacheck import preflight, preflight_line
    from visionkit.registry import get_plugin
    from visionkit_plugins.detection.config import DataConfig

    plugin = get_plugin("detection")
    datasets = {s: plugin.build_dataset(DataConfig(root=scenes), s) for s in ("train", "val")}
    line = preflight_line(preflight(plugin, datasets, limit=4))
    assert line.startswith("data: 8 train / 4 val samples; headers and ends of 8 images read (train every 2nd), "), line


def masks_config(root: Path, tmp_path: Path) -> list[str]:
    """The segmentation demo with data.verify off: masks are not decoded when the dataset is built."""
    return [SEG, f"data.root={root}", "data.verify=false", f"output.storage_path={tmp_path / 'runs'}"]


def test_train_reads_the_sampled_masks_before_ray_starts(capsys, data, tmp_path, no_ray):
    with pytest.raises(RayStarted):
        main(["train", *masks_config(data, tmp_path), "ray.num_workers=1"])
    assert "headers and ends of 12 images and 12 masks read (all), no problems" in capsys.readouterr().out
    mask = data / "masks" / "train" / "train_00003.png"
    whole = mask.read_bytes()
    mask.write_bytes(whole[: len(whole) * 2 // 3])
    code, out = train_cli(capsys, *masks_config(data, tmp_path))
    assert code == 2 and "Traceback" not in out
    assert out.strip().splitlines()[-1].startswith(f"visionkit: error: {mask}: truncated image: the PNG file ("), out
    from PIL import Image

    Image.new("P", (16, 32)).save(mask)
    code, out = train_cli(capsys, *masks_config(data, tmp_path))
    assert code == 2 and out.strip().splitlines()[-1] == (
        f"visionkit: error: {mask}: mask is 16x32 pixels but its image {data / 'images' / 'train' / 'train_00003.png'} "
        "is 32x32"), out


@pytest.mark.parametrize("pretrained", [None, "DEFAULT"])
def test_train_stops_on_an_unknown_model_before_ray_starts(capsys, shapes_cls, tmp_path, no_ray, pretrained):
    """Named with the config file, and a misspelt name is did-you-mean even with model.pretrained
    set (not "has no published weights")."""
    extra = [f"model.pretrained={pretrained}"] if pretrained else []
    code, out = train_cli(capsys, CLS, f"data.root={shapes_cls}", "model.name=resnt18",
                          f"output.storage_path={tmp_path / 'runs'}", *extra)
    assert code == 2 and "Traceback" not in out
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"visionkit: error: {CLS} (with command-line overrides): model.name: "
                           "unknown classification model 'resnt18'"), last
    assert "resnet18" in last, last


def test_voc_and_yolo_sets_are_checked_too(capsys, tmp_path):
    voc = synth.scenes(tmp_path / "voc", num_train=8, num_val=2, size=32, seed=4, format="voc")
    yolo = synth.scenes(tmp_path / "yolo", num_train=8, num_val=2, size=32, seed=4, format="yolo")
    code, out = check(capsys, yolo, "data.format=auto")
    assert code == 0 and "no problems found" in out, out
    xml = voc / "Annotations" / "train_00001.xml"
    xml.write_text(xml.read_text().replace("<width>32</width>", "<width>33</width>"))
    code, out = check(capsys, voc, "data.format=voc")
    assert code == 2
    assert f"train: {xml} <size>: the annotation gives the image as 33x32 pixels but" in out
