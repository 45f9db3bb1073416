"""train.sync_bn: BatchNorm statistics over every worker's batch, with gloo on CPUs (where torch's
own SyncBatchNorm refuses to run). One 2-worker Ray run; the rest in this process."""

import pytest
import torch

from visionkit import checkpoint
from visionkit.config import load_config
from visionkit.train import launch, loop, syncbn
from visionkit.train.optim import build_optimizer

from conftest import REPO, cls_overrides

CONFIG = str(REPO / "configs" / "classification" / "shapes.yaml")
# MobileNetV3-small: 34 BatchNorm layers, on 32-px images down to 1x1. Its classifier's dropout
# off (dropout draws per rank), and SGD: its update is linear in the gradient, so the float
# rounding between one process and two stays rounding (Adam divides it by |gradient|).
MODEL = {"model.name": "mobilenet_v3_small", "model.builder_args": "{dropout: 0.0}", "train.epochs": 1,
         "train.optimizer.name": "sgd", "train.optimizer.lr": 0.05, "train.scheduler.name": "constant",
         "train.scheduler.warmup_epochs": 0}  # a constant LR: epoch_by_hand leaves it as the optimizer has it
TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}


def bn_statistics(state: dict) -> dict:
    stats = {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}
    assert len(stats) == 2 * 34
    return stats


def close(a: dict, b: dict) -> bool:
    return all(torch.allclose(a[k], b[k], **TOLERANCE) for k in a)


def epoch_by_hand(config: dict, per_rank: bool) -> dict:
    """Epoch 0 of the loop's training on the two ranks' batches, in this process: per_rank, each
    rank's BatchNorm sees its own 16 images and rank 0's statistics are kept (DDP without
    sync_bn: gradients averaged, statistics not); otherwise one forward on their 32."""
    task = loop.Task(config, source="test")
    t = task.cfg.train
    loop.seed_everything(t.seed, -1, 0)  # as the loop: rank 0's initial weights are everyone's
    train_set, _ = task.dataset("train"), task.dataset("val")
    classes = list(train_set.classes)
    model = task.model(classes)
    loss_fn = task.plugin.build_loss(task.sections.loss, classes)
    optimizer = build_optimizer(model, t.optimizer)
    loaders = [task.train_loader(train_set, rank, 2) for rank in (0, 1)]
    for loader in loaders:
        loader.sampler.set_epoch(0)
    model.train()
    for first, second in zip(*loaders):
        if per_rank:
            loss = loss_fn(model, first).total
            rank0 = [b.clone() for b in model.buffers()]
            loss = (loss + loss_fn(model, second).total) / 2
            loss.backward()
            with torch.no_grad():
                for buffer, saved in zip(model.buffers(), rank0):
                    buffer.copy_(saved)
        else:
            loss_fn(model, tuple(torch.cat(parts) for parts in zip(first, second))).total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return bn_statistics(model.state_dict())


def test_two_ray_workers_with_sync_bn_keep_the_statistics_of_one_process(ray_cluster, shapes_cls, tmp_path, one_thread,
                                                                          capsys):
    """160 images, 16 per worker: every step's global batch is the 32 that one process with
    batch 32 sees. After one epoch the synchronised workers' BatchNorm statistics are that
    process's; a worker that normalises its own 16 ends elsewhere, by far more than the rounding."""
    synced = launch.train(CONFIG, cls_overrides(shapes_cls, tmp_path, "synced", **MODEL, **{"train.sync_bn": True}))
    one = launch.train(CONFIG, cls_overrides(shapes_cls, tmp_path, "one", **MODEL, **{
        "ray.num_workers": 0, "train.batch_size": 32, "train.sync_bn": True}))
    assert "train.sync_bn: one worker, nothing to synchronise" in capsys.readouterr().out
    two = checkpoint.load(synced / "checkpoints" / "last.pt")
    reference = bn_statistics(checkpoint.load(one / "checkpoints" / "last.pt").model)
    got = bn_statistics(two.model)  # the plain model's keys: no trace of the synchronised layers
    for key, value in reference.items():
        torch.testing.assert_close(got[key], value, **TOLERANCE, msg=key)

    # Without sync_bn: the same epoch by hand, first as one process (it must give the loop's
    # statistics, or the comparison proves nothing), then with each rank's own BatchNorm.
    _, raw = load_config(CONFIG, cls_overrides(shapes_cls, tmp_path, "by-hand", **MODEL))
    assert close(epoch_by_hand(raw, per_rank=False), reference)
    unsynced = epoch_by_hand(raw, per_rank=True)
    far = [k for k in reference if not torch.allclose(unsynced[k], reference[k], **TOLERANCE)]
    assert len(far) > len(reference) // 2, far

    # eval and export build a plain model and load the synchronised run's weights into it.
    from visionkit.export.run import load_run

    model = load_run(str(synced), []).model
    assert syncbn.count_batchnorms(model) == 34 and not any(
        isinstance(m, (syncbn.CPUSyncBatchNorm, torch.nn.SyncBatchNorm)) for m in model.modules())
    assert launch.evaluate(str(synced), [])["top1"] == two.best["value"]


def test_the_cpu_module_is_a_batchnorm_with_the_same_tensors():
    """Outside DDP (one worker, eval mode) it is a plain BatchNorm; conversion keeps every tensor
    and leaves frozen or subclassed norms alone."""
    import torchvision

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                   torch.nn.Linear(4 * 36, 3), torch.nn.BatchNorm1d(3, affine=False),
                                   torchvision.ops.FrozenBatchNorm2d(3))

    reference, converted = build(), syncbn.convert(build(), torch.device("cpu"))
    kinds = [type(m).__name__ for m in converted.modules()]
    assert kinds.count("CPUSyncBatchNorm") == 2 and "FrozenBatchNorm2d" in kinds
    assert list(converted.state_dict()) == list(reference.state_dict())
    x = torch.randn(5, 3, 8, 8)
    # Training mode without a process group: a plain BatchNorm, running statistics included.
    torch.testing.assert_close(converted[:5](x), reference[:5](x))
    torch.testing.assert_close(converted.state_dict(), reference.state_dict())
    with pytest.raises(ValueError, match="expected at least 2D input"):
        converted[1](torch.randn(4))
