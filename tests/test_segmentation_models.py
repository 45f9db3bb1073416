"""Segmentation models, loss, prediction and visuals; nothing is ever downloaded."""

from __future__ import annotations


import pytest
import torch

from visionkit.config import validate_section
from visionkit.errors import ConfigError
from visionkit_plugins.segmentation import SegmentationPlugin
from visionkit_plugins.segmentation.data import IGNORE_INDEX
from visionkit_plugins.segmentation.loss import LossConfig, build_loss, dice_loss, presence_loss
from visionkit_plugins.segmentation.metric import SegmentationMetric
from visionkit_plugins.segmentation.models import ModelConfig, UNet, build_model

CLASSES = ["background", "a", "b"]


@pytest.mark.parametrize("name,aux", [
    ("deeplabv3_mobilenet_v3_large", True), ("deeplabv3_resnet50", False), ("deeplabv3_resnet101", False),
    ("fcn_resnet50", True), ("lraspp_mobilenet_v3_large", False), ("unet", False)])
def test_models_by_name(name, aux):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, aux_loss=aux), len(CLASSES)).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 48, 64))
    assert out["out"].shape == (1, 3, 48, 64)
    assert ("aux" in out) == aux
    if aux:
        assert out["aux"].shape == (1, 3, 48, 64)


def test_unet_takes_any_size():
    net = UNet(num_classes=4, width=8, blocks=(0, 1, 1)).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 37, 50))["out"].shape == (2, 4, 37, 50)


def test_unet_group_norm():
    model = build_model(ModelConfig(norm="group", width=8, blocks=[0, 1, 1]), 4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model(torch.rand(1, 3, 32, 32))["out"].shape == (1, 4, 32, 32)  # batch of one: fine with GroupNorm


def test_unet_aux_head_in_training_only():
    model = build_model(ModelConfig(aux_loss=True, width=8, blocks=[0, 1, 1]), 4)
    out = model(torch.rand(2, 3, 40, 40))
    assert out["aux"].shape == out["out"].shape == (2, 4, 40, 40)
    with torch.no_grad():
        assert set(model.eval()(torch.rand(1, 3, 40, 40))) == {"out"}


@pytest.mark.parametrize("raw,message", [
    ({"name": "lraspp_mobilenet_v3_large", "aux_loss": True}, "has no auxiliary head"),
    ({"name": "fcn_resnet50", "width": 8}, "width only apply to name: unet"),
    ({"name": "deeplabv3_resnet5"}, "model.name"),
])
def test_model_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        validate_section(ModelConfig, raw, "x.yaml", prefix="model")


def test_resolved_config_validates_again():
    """Workers validate the resolved config, which lists every field with its value."""
    cfg = validate_section(ModelConfig, {"name": "fcn_resnet50", "aux_loss": True}, "x.yaml", prefix="model")
    again = validate_section(ModelConfig, cfg.model_dump(mode="json"), "x.yaml", prefix="model")
    assert again == cfg


def test_local_weights_file(tmp_path):
    torch.manual_seed(1)
    trained = build_model(ModelConfig(width=8, blocks=[0, 1]), 3)
    torch.save({"model": trained.state_dict()}, tmp_path / "ckpt.pt")  # a visionkit checkpoint
    loaded = build_model(ModelConfig(width=8, blocks=[0, 1], weights=tmp_path / "ckpt.pt", weights_strict=True), 3)
    for (k, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    # Another class count: the head is skipped unless strict.
    five = build_model(ModelConfig(width=8, blocks=[0, 1], weights=tmp_path / "ckpt.pt"), 5)
    assert torch.equal(five.net.encoder[0][0][0].weight, trained.net.encoder[0][0][0].weight)
    with pytest.raises(ConfigError, match="of another shape"):
        build_model(ModelConfig(width=8, blocks=[0, 1], weights=tmp_path / "ckpt.pt", weights_strict=True), 5)
    with pytest.raises(ConfigError, match="not found"):
        build_model(ModelConfig(weights=tmp_path / "none.pt"), 3)


def test_backbone_weights_from_a_classifier_file(tmp_path):
    from torchvision.models import mobilenet_v3_large

    torch.manual_seed(2)
    classifier = mobilenet_v3_large(weights=None)
    torch.save(classifier.state_dict(), tmp_path / "mnv3.pth")
    model = build_model(ModelConfig(name="lraspp_mobilenet_v3_large", weights_backbone=tmp_path / "mnv3.pth"), 3)
    assert torch.equal(model.net.backbone["0"][0].weight, classifier.features[0][0].weight)


def batch(size=32):
    torch.manual_seed(0)
    images = torch.rand(2, 3, size, size)
    target = torch.zeros(2, size, size, dtype=torch.long)
    target[:, 8:20, 8:20] = 1
    target[1, 20:, 20:] = 2
    target[:, 0, :] = IGNORE_INDEX
    return images, target


def test_loss_parts_and_ignore():
    model = build_model(ModelConfig(name="deeplabv3_mobilenet_v3_large", aux_loss=True), 3)
    out = build_loss(LossConfig(dice_weight=0.5), CLASSES)(model, batch())
    assert set(out.parts) == {"ce", "aux", "dice"}
    expected = out.parts["ce"] + 0.5 * out.parts["aux"] + 0.5 * out.parts["dice"]
    assert torch.allclose(out.total, expected)
    out.total.backward()
    # A batch of ignore pixels only: a zero loss, not NaN.
    images, target = batch()
    out = build_loss(LossConfig(dice_weight=1.0), CLASSES)(model, (images, torch.full_like(target, IGNORE_INDEX)))
    assert torch.isfinite(out.total) and float(out.parts["ce"].detach()) == 0.0


def test_presence_loss_targets_the_classes_in_each_image():
    _, target = batch()  # image 0 holds classes 0 and 1; image 1 also 2; row 0 is ignore
    confident = torch.tensor([[9.0, 9.0, -9.0], [9.0, 9.0, 9.0]])
    assert float(presence_loss(confident, target)) < 1e-3
    assert float(presence_loss(-confident, target)) > 5
    model = build_model(ModelConfig(width=8, blocks=[0, 1], presence_loss=True), 3)
    out = build_loss(LossConfig(presence_weight=0.2), CLASSES)(model, batch())
    assert set(out.parts) == {"ce", "presence"}
    assert torch.allclose(out.total, out.parts["ce"] + 0.2 * out.parts["presence"])


def test_dice_is_zero_for_a_perfect_prediction():
    _, target = batch()
    logits = torch.nn.functional.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 50
    assert float(dice_loss(logits, target, smooth=1.0)) < 1e-3


def test_class_weights_must_match_classes():
    with pytest.raises(ConfigError, match="2 values for 3 classes"):
        build_loss(LossConfig(class_weights=[1.0, 2.0]), CLASSES)
    out = build_loss(LossConfig(class_weights=[0.5, 1.0, 2.0]), CLASSES)(build_model(ModelConfig(width=8, blocks=[0, 1]), 3), batch())
    assert torch.isfinite(out.total)


def test_a_few_steps_learn():
    """The U-Net fits one batch: the loss falls and the metric follows."""
    plugin = SegmentationPlugin()
    torch.manual_seed(0)
    model = plugin.build_model(ModelConfig(width=8, blocks=[0, 1]), CLASSES)
    loss_fn = plugin.build_loss(LossConfig(dice_weight=0.5), CLASSES)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = batch()
    first = None
    for _ in range(30):
        out = loss_fn(model, data)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        first = first if first is not None else float(out.total.detach())
    assert float(out.total.detach()) < 0.5 * first
    model.eval()
    metric = plugin.build_metric(CLASSES)
    metric.update(plugin.predict(model, data), data)
    assert metric.compute()["mIoU"] > 0.5


def test_write_visuals(tmp_path):
    plugin = SegmentationPlugin()
    model = plugin.build_model(ModelConfig(width=8, blocks=[0, 1]), CLASSES).eval()
    metric = SegmentationMetric(CLASSES)
    data = batch()
    metric.update(plugin.predict(model, data), data)
    paths = plugin.write_visuals(metric.compute(), CLASSES, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["confusion_matrix.png", "per_class_iou.png", "val_samples.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_export_graph_gives_a_class_map_and_logits_on_request():
    from visionkit.plugin import ExportOptions
    from visionkit_plugins.segmentation.export import SegmenterGraph

    model = SegmentationPlugin().build_model(ModelConfig(width=8, blocks=[0, 1]), CLASSES).eval()
    images = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        class_map, logits = SegmenterGraph(model, logits=True)(images)
        assert class_map.shape == (2, 32, 48) and class_map.dtype == torch.uint8
        assert logits.shape == (2, 3, 32, 48)
        assert torch.equal(class_map, logits.argmax(1).to(torch.uint8))
        assert SegmenterGraph(model)(images).shape == (2, 32, 48)
    assert ExportOptions().logits is False


@pytest.fixture(autouse=True)
def _fast_and_offline(one_thread, no_downloads):
    """Every test here: one torch thread, and no weight downloads."""
