"""Detection models and loss: built by name without downloads, weighted loss parts, a learning check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from visionkit.config import Config, task_configs
from visionkit.data import synth
from visionkit.errors import ConfigError
from visionkit.registry import get_plugin
from visionkit_plugins.detection import DataConfig, DetectionPlugin, LossConfig, ModelConfig
from visionkit_plugins.detection.models import TORCHVISION_MODELS

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return synth.scenes(tmp_path_factory.mktemp("scenes"), num_train=8, num_val=2, size=64, seed=1)


def test_registered_through_the_entry_point():
    assert isinstance(get_plugin("detection"), DetectionPlugin)


@pytest.mark.parametrize("name", sorted(TORCHVISION_MODELS))
def test_torchvision_detectors_build_with_dataset_classes(name):
    model = DetectionPlugin().build_model(ModelConfig(name=name), CLASSES)
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert heads  # built; the class count is checked on a real forward below for the cheap ones
    if name == "fasterrcnn_mobilenet_v3_large_320_fpn":
        model.eval()
        with torch.no_grad():
            out = model([torch.rand(3, 96, 96)])
        assert set(out[0]) == {"boxes", "scores", "labels"}
        assert model.roi_heads.box_predictor.cls_score.out_features == len(CLASSES) + 1


@pytest.mark.parametrize("levels, channels", [(1, 64), (3, 48)])
def test_fcos_light_trains_and_predicts_with_weighted_loss_parts(scenes, levels, channels):
    plugin = DetectionPlugin()
    ds = plugin.build_dataset(DataConfig(root=scenes), "train")
    model = plugin.build_model(ModelConfig(min_size=64, max_size=64, num_levels=levels, fpn_channels=channels), ds.classes)
    assert model.head.classification_head.num_classes == len(ds.classes) + 1
    batch = plugin.collate([ds[i] for i in range(4)])
    torch.manual_seed(0)
    plain = plugin.build_loss(LossConfig(), ds.classes)(model, batch)
    assert set(plain.parts) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert torch.isclose(plain.total, sum(plain.parts.values()))
    plain.total.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"DDP fails on parameters without gradients: {unused}"
    model.zero_grad()
    weighted = plugin.build_loss(LossConfig(weights={"bbox_regression": 2.0, "bbox_ctrness": 0.0}), ds.classes)(model, batch)
    p = weighted.parts
    assert torch.isclose(weighted.total, p["classification"] + 2 * p["bbox_regression"])
    with pytest.raises(ConfigError, match="loss.weights: 'giou' is not a loss part of this model"):
        plugin.build_loss(LossConfig(weights={"giou": 1.0}), ds.classes)(model, batch)
    model.eval()
    with torch.inference_mode():
        out = plugin.predict(model, plugin.collate([ds[0]]))
    assert out[0]["boxes"].shape[1] == 4 and len(out[0]["boxes"]) <= 100


def test_fcos_light_learns(scenes):
    """A handful of steps on 8 images roughly halves the loss: the pieces fit together."""
    torch.manual_seed(0)
    plugin = DetectionPlugin()
    ds = plugin.build_dataset(DataConfig(root=scenes), "train")
    model = plugin.build_model(ModelConfig(min_size=64, max_size=64), ds.classes)
    loss_fn = plugin.build_loss(LossConfig(), ds.classes)
    batch = plugin.collate([ds[i] for i in range(len(ds))])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(40):
        out = loss_fn(model, batch)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        losses.append(float(out.total.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_local_weights_file_loaded_and_checked(tmp_path):
    plugin = DetectionPlugin()
    source = plugin.build_model(ModelConfig(min_size=64, max_size=64), CLASSES)
    path = tmp_path / "w.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)  # a visionkit checkpoint
    loaded = plugin.build_model(ModelConfig(min_size=64, max_size=64, weights=path), CLASSES)
    for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ConfigError, match="weights_strict: false"):
        plugin.build_model(ModelConfig(min_size=64, max_size=64, weights=path, weights_strict=True), CLASSES + ["d"])
    partial = plugin.build_model(ModelConfig(min_size=64, max_size=64, weights=path, weights_strict=False), CLASSES + ["d"])
    assert torch.equal(partial.backbone.c3[0][0].weight, source.backbone.c3[0][0].weight)
    # a backbone-only file, as an ImageNet classifier's would be, placed with a prefix
    torch.save(source.backbone.state_dict(), tmp_path / "backbone.pt")
    fresh = plugin.build_model(ModelConfig(min_size=64, max_size=64, weights=tmp_path / "backbone.pt",
                                           weights_prefix="backbone.", weights_strict=False), CLASSES)
    assert torch.equal(fresh.backbone.c5[0][0].weight, source.backbone.c5[0][0].weight)
    assert not torch.equal(fresh.head.classification_head.cls_logits.weight, source.head.classification_head.cls_logits.weight)


def test_frozen_backbone_for_fine_tuning():
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = DetectionPlugin().build_model(
        ModelConfig(name="retinanet_resnet50_fpn", freeze_backbone_norm=True, trainable_backbone_layers=3), CLASSES)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.body.modules())
    trainable = {n.split(".")[0] for n, p in model.backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    with pytest.raises(ConfigError, match="only for the ResNet-50"):
        DetectionPlugin().build_model(ModelConfig(trainable_backbone_layers=2), CLASSES)


def test_model_config_errors():
    plugin = DetectionPlugin()
    cfg = Config(task="detection", data={"root": "x"}, model={"name": "fcos_lite"})
    with pytest.raises(ConfigError, match="model.name: .*did you mean 'fcos_light'"):
        task_configs(cfg, plugin, "cfg.yaml")
    with pytest.raises(ConfigError, match="model.width: only fcos_light"):
        plugin.build_model(ModelConfig(name="retinanet_resnet50_fpn", width=8), CLASSES)
    with pytest.raises(ConfigError, match="fixed 320x320"):
        plugin.build_model(ModelConfig(name="ssdlite320_mobilenet_v3_large", min_size=128), CLASSES)


@pytest.fixture(autouse=True)
def _fast_and_offline(one_thread, no_downloads):
    """Every test here: one torch thread, and no weight downloads."""
