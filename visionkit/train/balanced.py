"""``data.balanced_sampling: true``: an epoch's training samples drawn so that classes come up equally.

Which class an image stands for: the rarest class it holds (the class found in the fewest
training images; ties go to the lower index). For classification that is the image's label, so
every class is drawn equally often. A detection image with boxes of several classes (a
segmentation mask with several classes) counts for its rarest one, the usual repeat-factor idea:
an image of a rare class is drawn more often, and the common classes it also holds come along.
Images holding no class (a detection negative) form one group of their own, drawn as often as
one class. The groups are drawn equally, and a group's images uniformly: image ``i`` in group
``g`` has probability ``1 / (G * |g|)``.

Each epoch draws ``len(dataset)`` samples with replacement (an epoch has as many steps as
without balancing), from a generator seeded by ``(train.seed, epoch)`` alone. The list of draws
is the same whatever the number of workers; rank ``r`` of ``W`` takes draws ``r, r + W, ...``
(the list padded from its start to a multiple of ``W``, as ``DistributedSampler`` pads), so the
shards are disjoint slices of one list. Each draw's augmentation seed comes from
``(seed, epoch, position in the list)``, so an image drawn twice in an epoch is augmented two ways.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from ..errors import ConfigError
from .sampling import sample_seed

#: offsets the draw positions' seeds away from the plain sampler's (which hash the image index)
_DRAW_SEED = 0x5EED_0000_0000
_LIST_SEED = 0xBA1A_0000_0000


def sample_groups(sample_classes: Sequence[Sequence[int]], num_classes: int) -> list[int]:
    """Each sample's group: the rarest class it holds, or ``num_classes`` for none."""
    counts = [0] * num_classes
    for held in sample_classes:
        for c in set(int(c) for c in held):
            counts[c] += 1
    groups = []
    for held in sample_classes:
        held = {int(c) for c in held}
        groups.append(min(held, key=lambda c: (counts[c], c)) if held else num_classes)
    return groups


def sample_weights(sample_classes: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """Probabilities (float64, summing to 1) that draw every non-empty group equally."""
    groups = torch.tensor(sample_groups(sample_classes, num_classes), dtype=torch.long)
    sizes = torch.bincount(groups, minlength=num_classes + 1).double()
    present = int((sizes > 0).sum())
    return 1.0 / (sizes[groups] * present)


class BalancedSampler(Sampler):
    """This rank's share of the epoch's class-balanced draws, as ``(index, seed)`` pairs
    (the contract of :class:`visionkit.train.sampling.SeededSampler`); ``.inner`` yields the
    indices alone, for datasets without per-sample randomness."""

    def __init__(self, weights: torch.Tensor, seed: int, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.cumulative = torch.cumsum(weights.double(), 0)
        self.size = len(weights)
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.num_samples = math.ceil(self.size / world_size)
        self.inner = _Indices(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draws(self) -> list[int]:
        """The epoch's whole list of draws (every rank's), the same for any worker count."""
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, _LIST_SEED))
        u = torch.rand(self.size, generator=generator, dtype=torch.float64) * self.cumulative[-1]
        return torch.searchsorted(self.cumulative, u, right=True).clamp_(max=self.size - 1).tolist()

    def positions(self) -> range:
        return range(self.rank, self.num_samples * self.world_size, self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        draws = self.draws()
        for p in self.positions():
            yield draws[p % self.size], sample_seed(self.seed, self.epoch, _DRAW_SEED + p)

    def __len__(self) -> int:
        return self.num_samples


class _Indices(Sampler):
    def __init__(self, outer: BalancedSampler):
        self.outer = outer

    def set_epoch(self, epoch: int) -> None:
        self.outer.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        draws = self.outer.draws()
        return (draws[p % self.outer.size] for p in self.outer.positions())

    def __len__(self) -> int:
        return self.outer.num_samples


def build_sampler(plugin, dataset, seed: int, rank: int, world_size: int) -> BalancedSampler:
    """The sampler for ``data.balanced_sampling: true`` from the plugin's ``sample_classes(dataset)``."""
    return BalancedSampler(sample_weights(sample_classes(plugin, dataset), len(dataset.classes)), seed, rank, world_size)


def sample_classes(plugin, dataset) -> list[Sequence[int]]:
    """What the plugin says each training sample holds; a task that cannot say is one line.
    Called in the driver's pre-flight too, so that this fails before Ray starts."""
    held = plugin.sample_classes(dataset) if hasattr(plugin, "sample_classes") else None
    if held is None:
        raise ConfigError(f"data.balanced_sampling: the {plugin.name} task does not say which classes each image "
                          "holds, so it cannot balance them; remove data.balanced_sampling")
    if len(held) != len(dataset):
        raise ConfigError(f"data.balanced_sampling: the {plugin.name} task gave classes for {len(held)} of "
                          f"{len(dataset)} training samples")
    return held
