"""An albumentations ``Compose`` that takes its randomness from torch's generator.

albumentations 2.x gives each ``Compose`` a generator of its own, seeded from the OS, which no
global seeding reaches. Drawing a fresh state from torch's generator on every call puts the
pipeline under the trainer's per-sample seeding (see :mod:`visionkit.train.sampling`): an image
is augmented the same way in an uninterrupted and a resumed run, whatever the loader workers.
One state is shared by the pipeline's transforms: albumentations' ``seed=`` would give each the
same seed, and two ``p: 0.5`` flips would then always agree.
"""

from __future__ import annotations

import random

import albumentations as A
import numpy as np
import torch


class SeededCompose(A.Compose):
    def __call__(self, *args, force_apply: bool = False, **data):
        seed = int(torch.randint(0, 2**63 - 1, ()))
        self.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return super().__call__(*args, force_apply=force_apply, **data)
