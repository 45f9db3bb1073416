"""Torchvision classifiers with auxiliary heads (googlenet, inception_v3) train like the others:
in training mode they returned (logits, aux...) tuples that reached the loss and crashed step 1."""

from __future__ import annotations

import pytest
import torch


def one_step(name: str, size: int, channels: int = 3, **builder_args) -> float:
    """Forward, loss and backward through the plugin's own loss, as a training step does."""
    from visionkit_plugins.classification import ClassificationPlugin, LossConfig
    from visionkit_plugins.classification.models import ModelConfig, build_model

    classes = ["a", "b", "c"]
    model = build_model(ModelConfig(name=name, builder_args=builder_args), len(classes), channels, size)
    model.train()
    loss_fn = ClassificationPlugin().build_loss(LossConfig(), classes)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(2, channels, size, size, generator=g), torch.tensor([0, 2]))
    loss = loss_fn(model, batch).total
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        assert model(batch[0]).shape == (2, len(classes))  # what predict() and export see
    return float(loss.detach())


@pytest.mark.parametrize("name, size", [("googlenet", 32), ("inception_v3", 75)])
def test_a_model_with_auxiliary_heads_trains_one_step(name, size, one_thread, no_downloads):
    loss = one_step(name, size)
    assert loss == loss and loss > 0  # finite and positive, not nan


def test_inception_v3_on_grey_images_trains_one_step(one_thread, no_downloads):
    assert one_step("inception_v3", 80, channels=1) > 0


@pytest.mark.parametrize("size", [64, 28])
def test_inception_v3_below_75_px_is_one_line_naming_the_field(size, no_downloads):
    from visionkit.errors import ConfigError
    from visionkit_plugins.classification.models import ModelConfig, build_model

    with pytest.raises(ConfigError, match=rf"data.image_size: inception_v3 needs inputs of at least 75 px, the model "
                                          rf"would get {size}") as info:
        build_model(ModelConfig(name="inception_v3"), 3, 3, size)
    assert "\n" not in str(info.value)


def test_asking_for_the_auxiliary_heads_is_one_line(no_downloads):
    from visionkit.errors import ConfigError
    from visionkit_plugins.classification.models import ModelConfig, build_model

    with pytest.raises(ConfigError, match=r"model.builder_args: aux_logits: true .*googlenet") as info:
        build_model(ModelConfig(name="googlenet", builder_args={"aux_logits": True}), 3, 3, 64)
    assert "\n" not in str(info.value)
