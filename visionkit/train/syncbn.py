"""``train.sync_bn``: BatchNorm statistics over the global batch of all workers, not each worker's.

Under DDP every worker normalises with the mean and variance of its own batch, and its running
statistics follow its own batches; with small per-worker batches (4 segmentation crops) those are
noisy estimates. Synchronised BatchNorm computes them over the union of the workers' batches, so
training behaves like one process with the global batch.

On a GPU (CUDA, XPU, HPU) this is torch's own :class:`torch.nn.SyncBatchNorm`. On CPUs with the
gloo backend torch refuses it twice, as of torch 2.14: ``DistributedDataParallel`` raises
"SyncBatchNorm layers only work with GPU modules" when it wraps a model that has one, and its
forward raises "SyncBatchNorm expected input tensor to be on GPU or XPU or ...". So on a CPU the
layers become :class:`CPUSyncBatchNorm` instead: the same computation as torch's (each worker's
count, mean and variance gathered and combined exactly, Chan's parallel formula, in float64; in
the backward pass one all-reduce of the per-channel sums of ``dy`` and ``dy * (x - mean)``),
written with plain tensor ops and collectives that gloo has. It is a ``_BatchNorm`` with the same
parameters and buffers, so the state dict keys are those of the plain model: checkpoints, eval
and export (which build a fresh model) see no difference.

A single worker has nothing to synchronise with: no conversion, one line in the log.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

# Devices on which torch's own SyncBatchNorm runs (its forward checks the same list).
TORCH_SYNC_DEVICES = ("cuda", "xpu", "hpu")


def _channel_shape(x: torch.Tensor) -> tuple[int, ...]:
    return (1, x.size(1)) + (1,) * (x.dim() - 2)


class _SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm over all workers' batches (per channel: dim 1)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group, world_size):
        dims = [0] + list(range(2, x.dim()))
        channels = x.size(1)
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        # Each worker's own count, mean and (biased) variance; torch.var_mean is numerically stable.
        count = x.numel() // channels
        if count:
            var, mean = torch.var_mean(xf, dim=dims, correction=0)
        else:  # an empty batch: its NaN mean would poison the sums below even at count 0 (0 * NaN)
            var = mean = xf.new_zeros(channels)
        local = torch.cat([torch.tensor([float(count)], dtype=torch.float64, device=x.device),
                           mean.double(), var.double()])
        gathered = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(gathered, local, group=group)
        stats = torch.stack(gathered)  # [world, 1 + 2C]
        counts, means, variances = stats[:, :1], stats[:, 1:1 + channels], stats[:, 1 + channels:]
        total = counts.sum()
        if total <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)} "
                             "on every worker together")
        # Chan et al.: the global mean and variance from the per-worker ones, exactly (a worker
        # with no images weighs 0, as torch's SyncBatchNorm filters it out).
        g_mean = (counts * means).sum(0) / total
        g_var = (counts * (variances + (means - g_mean) ** 2)).sum(0) / total
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(g_mean.to(running_mean.dtype), alpha=momentum)
        if running_var is not None:  # unbiased, as torch's BatchNorm and SyncBatchNorm keep it
            unbiased = g_var * (total / (total - 1))
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        shape = _channel_shape(x)
        mean_c = g_mean.to(xf.dtype).view(shape)
        invstd = torch.rsqrt(g_var + eps).to(xf.dtype)
        y = (xf - mean_c) * invstd.view(shape)
        if weight is not None:
            y = y * weight.to(xf.dtype).view(shape)
        if bias is not None:
            y = y + bias.to(xf.dtype).view(shape)
        ctx.save_for_backward(x, weight, mean_c, invstd)
        ctx.total, ctx.group, ctx.bias_dtype = float(total), group, None if bias is None else bias.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean_c, invstd = ctx.saved_tensors
        dims = [0] + list(range(2, x.dim()))
        shape = _channel_shape(x)
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        dyf = dy.to(xf.dtype)
        xmu = xf - mean_c
        sum_dy = dyf.sum(dims)
        sum_dy_xmu = (dyf * xmu).sum(dims)
        # This worker's share of the parameter gradients: DDP averages them over the workers.
        grad_weight = (sum_dy_xmu * invstd).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_dy.to(ctx.bias_dtype) if ctx.bias_dtype is not None and ctx.needs_input_grad[2] else None
        grad_input = None
        if ctx.needs_input_grad[0]:
            # The input gradient depends on every worker's dy through the shared mean and variance.
            both = torch.cat([sum_dy, sum_dy_xmu])
            dist.all_reduce(both, group=ctx.group)
            channels = x.size(1)
            mean_dy = (both[:channels] / ctx.total).view(shape)
            mean_dy_xmu = (both[channels:] / ctx.total).view(shape)
            scale = invstd if weight is None else invstd * weight.to(xf.dtype)
            grad_input = ((dyf - mean_dy - xmu * (invstd ** 2).view(shape) * mean_dy_xmu)
                          * scale.view(shape)).to(x.dtype)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm synchronised over the default process group with any backend (gloo on CPUs),
    for any input of 2 or more dimensions; a plain BatchNorm in eval mode or outside DDP."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        world_size = 1
        if self.training and dist.is_available() and dist.is_initialized():
            world_size = dist.get_world_size(self.process_group)
        if world_size == 1:
            return super().forward(input)
        factor = 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        track = self.track_running_stats
        return _SyncBatchNormFunction.apply(
            input, self.weight, self.bias, self.running_mean if track else None, self.running_var if track else None,
            self.eps, factor, self.process_group or dist.group.WORLD, world_size)


def _convert_cpu(module: torch.nn.Module) -> torch.nn.Module:
    """Every ``BatchNorm*d`` (not a subclass such as a frozen one) becomes a CPUSyncBatchNorm
    holding the same tensors, as torch's ``convert_sync_batchnorm`` does."""
    out = module
    if type(module) in (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out


def count_batchnorms(model: torch.nn.Module) -> int:
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def convert(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model with synchronised BatchNorm layers, before DDP wraps it."""
    if device.type in TORCH_SYNC_DEVICES:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def apply(model: torch.nn.Module, enabled: bool, world_size: int, device: torch.device,
          rank: int) -> torch.nn.Module:
    """``train.sync_bn``: converts under DDP; on one worker a note and the model as it is."""
    if not enabled:
        return model
    layers = count_batchnorms(model)
    if world_size == 1:
        if rank == 0:
            print("[visionkit] train.sync_bn: one worker, nothing to synchronise: BatchNorm left as it is", flush=True)
        return model
    model = convert(model, device)
    if rank == 0:
        kind = "torch.nn.SyncBatchNorm" if device.type in TORCH_SYNC_DEVICES else "CPUSyncBatchNorm (gloo)"
        print(f"[visionkit] train.sync_bn: {layers} BatchNorm layer(s) synchronised over {world_size} workers "
              f"({kind})", flush=True)
    return model
