"""train.sync_bn: BatchNorm statistics over every worker's batch, with gloo on CPUs (where torch's
own SyncBatchNorm refuses to run). One 2-worker Ray run, the layer itself on two gloo processes
spawned here, the rest in this process."""

import pytest
import torch
import torch.distributed as dist

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

    reference, original = build(), build()
    original[1].qconfig = torch.ao.quantization.default_qconfig  # kept, as torch's convert_sync_batchnorm keeps it
    converted = syncbn.convert(original, torch.device("cpu"))
    assert converted[1].qconfig is torch.ao.quantization.default_qconfig
    kinds = [type(m).__name__ for m in converted.modules()]
    assert kinds.count("CPUSyncBatchNorm") == 2 and "FrozenBatchNorm2d" in kinds
    assert list(converted.state_dict()) == list(reference.state_dict())
    x = torch.randn(5, 3, 8, 8)
    # Training mode without a process group: a plain BatchNorm, running statistics included.
    torch.testing.assert_close(converted[:5](x), reference[:5](x))
    torch.testing.assert_close(converted.state_dict(), reference.state_dict())
    with pytest.raises(ValueError, match="expected at least 2D input"):
        converted[1](torch.randn(4))


# Images per rank: uneven, and a rank with none (its batch ran out: torch's SyncBatchNorm leaves
# it out of the statistics). Each case trains 3 steps: momentum None is the cumulative average.
GLOO_CASES = [(sizes, affine, momentum) for sizes in ((3, 5), (0, 4)) for affine in (True, False)
              for momentum in (None, 0.1)]
GLOO_STEPS = 3


def gloo_case(k: int, layer: type) -> tuple[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Case k's layer (float64, the same initial weights on every rank and in the reference) and
    its steps' global batch and upstream gradient, the same on every rank."""
    sizes, affine, momentum = GLOO_CASES[k]
    g = torch.Generator().manual_seed(k)
    bn = layer(3, momentum=momentum, affine=affine).double()
    if affine:
        with torch.no_grad():
            bn.weight.copy_(torch.rand(3, generator=g, dtype=torch.float64) + 0.5)
            bn.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))
    shape = (sum(sizes), 3, 4, 5)
    steps = [(torch.randn(shape, generator=g, dtype=torch.float64) * (step + 1) + step,
              torch.randn(shape, generator=g, dtype=torch.float64)) for step in range(GLOO_STEPS)]
    return bn, steps


def gloo_rank(rank: int, port: int, out) -> None:
    """One of two gloo processes: every case's steps on this rank's share of the global batch."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results = []
    try:
        for k, (sizes, _, _) in enumerate(GLOO_CASES):
            bn, steps = gloo_case(k, syncbn.CPUSyncBatchNorm)
            mine = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
            seen = []
            for x, dy in steps:
                x = x[mine].clone().requires_grad_()
                y = bn(x)
                (y * dy[mine]).sum().backward()  # a sum over images: the global batch's is the ranks' sum
                grads = [p.grad for p in bn.parameters()]
                for grad in grads:  # as DDP does, but summed (DDP averages a mean loss)
                    dist.all_reduce(grad)
                seen.append({"y": y.detach(), "dx": x.grad, "grads": [g.clone() for g in grads]})
                bn.zero_grad(set_to_none=True)
            results.append({"steps": seen, "buffers": dict(bn.named_buffers())})
    finally:
        dist.destroy_process_group()
    torch.save(results, out / f"rank{rank}.pt")


def test_cpu_sync_batchnorm_on_two_gloo_processes_is_one_batchnorm_on_their_batches(tmp_path):
    """The layer that train.sync_bn puts in on CPUs, on two real gloo processes with uneven
    batches and an empty one: output, input and parameter gradients and running statistics are
    those of one BatchNorm2d that sees the concatenated batch (float64: rounding only)."""
    from loopback import free_port

    torch.multiprocessing.spawn(gloo_rank, args=(free_port(), tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    for k, (sizes, affine, momentum) in enumerate(GLOO_CASES):
        case = f"images per rank {sizes}, affine {affine}, momentum {momentum}"
        bn, steps = gloo_case(k, torch.nn.BatchNorm2d)
        for step, (x, dy) in enumerate(steps):
            x = x.clone().requires_grad_()
            y = bn(x)
            (y * dy).sum().backward()
            grads = [p.grad for p in bn.parameters()]
            assert len(grads) == 2 * affine
            for rank, result in enumerate(ranks):
                got, mine = result[k]["steps"][step], slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
                where = f"{case}, step {step}, rank {rank}"
                torch.testing.assert_close(got["y"], y[mine].detach(), msg=f"{where}: output")
                torch.testing.assert_close(got["dx"], x.grad[mine], msg=f"{where}: input gradient")
                for name, ours, theirs in zip(("weight", "bias"), got["grads"], grads):
                    torch.testing.assert_close(ours, theirs, msg=f"{where}: {name} gradient")
            bn.zero_grad(set_to_none=True)
        reference = dict(bn.named_buffers())
        assert int(reference["num_batches_tracked"]) == GLOO_STEPS
        for rank, result in enumerate(ranks):
            for name, value in reference.items():
                torch.testing.assert_close(result[k]["buffers"][name], value, msg=f"{case}, rank {rank}: {name}")

    # What the comparison tells apart: rank 1's own 5 images give other statistics.
    alone, steps = gloo_case(0, torch.nn.BatchNorm2d)
    for x, _ in steps:
        alone(x[3:])
    assert not torch.allclose(alone.running_mean, ranks[1][0]["buffers"]["running_mean"], rtol=0.01)
