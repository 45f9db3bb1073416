"""The torch-free runtime's pieces: decoding, pre-processing, metadata, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visionkit.errors import DataError
from visionkit.runtime import Metadata, Model, ModelError, mask_png
from visionkit.runtime.preprocess import decode, list_images, prepare, resize


def test_decoding_matches_training(tmp_path):
    from visionkit.data.images import load_rgb

    rng = np.random.default_rng(0)
    for mode, name in (("RGB", "a.png"), ("L", "b.png"), ("RGBA", "c.png"), ("P", "d.png"), ("RGB", "e.jpg")):
        img = Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)).convert(mode)
        img.save(tmp_path / name)
        assert np.array_equal(decode(tmp_path / name), load_rgb(tmp_path / name)), name
        assert np.array_equal(decode((tmp_path / name).read_bytes()), load_rgb(tmp_path / name))


def test_arrays_of_every_accepted_layout():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert decode(grey).shape == (3, 4, 3) and np.array_equal(decode(grey)[..., 1], grey)
    assert np.array_equal(decode(grey[..., None]), decode(grey))
    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    assert decode(rgba).shape == (3, 4, 3)


@pytest.mark.parametrize("array,message", [
    (np.zeros((4, 4, 2), dtype=np.uint8), "shape (4, 4, 2)"),
    (np.zeros((4, 4, 5), dtype=np.uint8), "shape (4, 4, 5)"),
    (np.zeros((2, 4, 4, 3, 1), dtype=np.uint8), "shape"),
    (np.zeros((4, 4, 3), dtype=np.float32), "dtype float32"),
])
def test_wrong_arrays_are_one_line_errors(array, message):
    with pytest.raises(DataError, match="image 0: ") as err:
        decode(array)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_undecodable_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=f"{bad}: cannot decode image"):
        decode(bad)
    with pytest.raises(DataError, match="no such image file"):
        decode(tmp_path / "missing.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images in this folder"):
        list_images([tmp_path / "empty"])


def test_resize_and_grey_are_the_training_pipeline():
    """albumentations' Resize + the classification dataset's grey conversion, value for value."""
    import albumentations as A

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    for h, w in ((32, 32), (90, 17), (45, 61)):
        assert np.array_equal(resize(image, h, w), A.Resize(h, w)(image=image)["image"])
    grey = np.asarray(image.mean(axis=2, keepdims=True), dtype=np.uint8)
    steps = [{"op": "resize", "height": 20, "width": 30}]
    expected = A.Resize(20, 30)(image=grey)["image"].transpose(2, 0, 1) / np.float32(255)
    assert np.array_equal(prepare(image, steps, channels=1), expected.astype(np.float32))


def test_metadata_round_trip_and_errors():
    meta = Metadata(task="detection", classes=["a", "b"], input_size=[64, 64], category_ids=[3, 7],
                    preprocess=[{"op": "resize", "height": 64, "width": 64, "interpolation": 1}],
                    normalization={"mean": [0.5] * 3, "std": [0.2] * 3, "in_graph": True})
    props = meta.to_props()
    assert all(k.startswith("visionkit.") and isinstance(v, str) for k, v in props.items())
    assert Metadata.from_props(props, "m.onnx") == meta
    with pytest.raises(ModelError, match="m.onnx: no visionkit metadata"):
        Metadata.from_props({"other": "1"}, "m.onnx")
    with pytest.raises(ModelError, match="newer than this visionkit"):
        Metadata.from_props({**props, "visionkit.format": "99"}, "m.onnx")
    with pytest.raises(ModelError, match="visionkit.classes"):
        Metadata.from_props({**props, "visionkit.classes": "[]"}, "m.onnx")
    with pytest.raises(ModelError, match="not valid JSON"):
        Metadata.from_props({**props, "visionkit.classes": "[oops"}, "m.onnx")
    for key, value in [("postprocess", "null"), ("preprocess", "null"), ("normalization", "[]"),
                       ("category_ids", "[3]"), ("channels", "true"), ("input_size", "[64]")]:
        with pytest.raises(ModelError, match=f"m.onnx: metadata 'visionkit.{key}': expected"):
            Metadata.from_props({**props, f"visionkit.{key}": value}, "m.onnx")


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"\x08\x07garbage protobuf\xff\xff"])
def test_a_file_that_is_not_onnx(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=f"{path}: not a usable ONNX model") as err:
        Model.load(path)
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="no such model file"):
        Model.load(tmp_path / "missing.onnx")


def test_mask_png_keeps_class_indices(tmp_path):
    mask = (np.arange(60).reshape(6, 10) % 5).astype(np.uint8)
    mask[0, 0] = 255
    (tmp_path / "m.png").write_bytes(mask_png(mask))
    with Image.open(tmp_path / "m.png") as img:
        assert img.mode == "P"
        assert np.array_equal(np.asarray(img), mask)


def test_a_fixed_batch_graph_takes_any_number_of_images(tmp_path):
    """A graph exported for batch 4 gets 5 images: the last group is padded, the padding dropped."""
    from servehelp import tiny_classifier

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    fixed = Model.load(tiny_classifier(tmp_path / "fixed.onnx", batch=4))
    dynamic = Model.load(tiny_classifier(tmp_path / "dynamic.onnx"))
    assert fixed.fixed_batch == 4
    got, want = fixed.predict(images, batch_size=8), dynamic.predict(images, batch_size=8)
    assert len(got) == 5 and [r["index"] for r in got] == [r["index"] for r in want]
    with pytest.raises(ModelError, match=r"fixed.onnx: onnxruntime could not run the graph on a batch of shape \(4, 2, 8, 8\)"):
        fixed.run(np.zeros((4, 2, 8, 8), dtype=np.float32))


def test_a_foreign_segmenter_with_half_resolution_scores(tmp_path):
    """Scores C x H/2 x W/2: the class map is brought to the image's size like any resized one."""
    import onnx
    from onnx import TensorProto, helper

    from visionkit.runtime import foreign_metadata

    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["images"], ["scores"], kernel_shape=[2, 2], strides=[2, 2])], "half",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 3, "h2", "w2"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "half.onnx"))
    meta = foreign_metadata("segmentation", ["r", "g", "b"], mean=[0.0] * 3, std=[1.0] * 3)
    image = np.zeros((16, 20, 3), dtype=np.uint8)
    image[:, 10:, 2] = 255  # right half blue
    mask = Model.load(tmp_path / "half.onnx", metadata=meta).predict(image)[0]["mask"]
    assert mask.shape == (16, 20) and (mask[:, 10:] == 2).all() and (mask[:, :10] == 0).all()
