"""The validation loader: how a worker's share of the validation set is batched."""

from __future__ import annotations

import torch

from visionkit.data.grouping import same_size_batches


def build_val_loader(plugin, dataset, rank: int, world_size: int, batch_size: int,
                     loader_workers: int) -> torch.utils.data.DataLoader:
    """Worker ``rank``'s shard, ``range(rank, len, world_size)``, in batches of same-size images.

    Each image exactly once over all workers (no padding as DistributedSampler does), so the
    merged metric equals a single-process evaluation. Images share a batch only when the plugin's
    :meth:`~visionkit.plugin.TaskPlugin.eval_size_key` says they reach the model at one size: a
    padded batch would change predictions on the real pixels, and with them the metric, with the
    worker count and batch size. The keys are computed once here, not per epoch.
    """
    shard = list(range(rank, len(dataset), world_size))
    keys = [plugin.eval_size_key(dataset, index) for index in shard]
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=same_size_batches(shard, keys, batch_size), num_workers=loader_workers,
        collate_fn=plugin.collate, persistent_workers=loader_workers > 0, pin_memory=torch.cuda.is_available())
