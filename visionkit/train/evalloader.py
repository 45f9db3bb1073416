"""The validation loader: how a worker's share of the validation set is batched."""

from __future__ import annotations

import torch


def build_val_loader(plugin, dataset, rank: int, world_size: int, batch_size: int,
                     loader_workers: int) -> torch.utils.data.DataLoader:
    # Each image exactly once over all workers (no padding as DistributedSampler does),
    # so the merged metric equals a single-process evaluation.
    shard = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world_size)))
    return torch.utils.data.DataLoader(
        shard, batch_size=batch_size, shuffle=False, num_workers=loader_workers,
        collate_fn=plugin.collate, drop_last=False,
        persistent_workers=loader_workers > 0, pin_memory=torch.cuda.is_available())
