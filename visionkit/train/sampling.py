"""Training-set order and per-sample seeds, from ``(train.seed, epoch)`` alone.

Every sample is drawn as ``(index, seed)`` with the seed a hash of ``(train.seed, epoch, index)``,
and the dataset wrapper seeds torch's CPU generator with it before reading the sample; the
pipelines of :func:`visionkit.data.transforms.build_pipeline` draw their state from it. So an
image's augmentation depends on nothing but the seed, the epoch and the image: not on the
loader workers (persistent or not), not on the rank, not on which epoch a run was resumed at.
Plugins draw any randomness of their own from torch's generator too (NumPy's and Python's
global generators are not reseeded: saving NumPy's state alone costs 0.2 ms a sample).
A dataset with no randomness in its samples may say so (``random_samples = False``): it is then
read directly, without the wrapper (3 us a sample, which is 7% of an MNIST MLP's step).
The shuffle is a ``DistributedSampler`` seeded from ``train.seed`` on every layout (one worker
included), so a resume replays the order too.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

_MASK = 2**64 - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed (splitmix64's finaliser) of the three numbers."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return (x ^ (x >> 31)) & 0xFFFFFFFF


class SeededSampler(Sampler):
    """This rank's shuffled indices of the epoch, each with its sample seed."""

    def __init__(self, dataset: Dataset, seed: int, rank: int, world_size: int):
        self.inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((i, sample_seed(self.seed, self.epoch, i)) for i in self.inner)

    def __len__(self) -> int:
        return len(self.inner)


class SeededSamples(Dataset):
    """Reads ``dataset[index]`` with every generator seeded from the sample's seed."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        generator = torch.default_generator  # the CPU one: augmentation never draws on a GPU
        if torch.utils.data.get_worker_info() is not None:  # a loader process: nothing else draws there
            generator.manual_seed(seed)
            return self.dataset[index]
        # In the training process the generator also serves the model (dropout): put it back.
        saved = generator.get_state()
        try:
            generator.manual_seed(seed)
            return self.dataset[index]
        finally:
            generator.set_state(saved)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
