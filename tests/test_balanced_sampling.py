"""data.balanced_sampling: classes drawn equally, shards disjoint, draws fixed by (seed, epoch)."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionkit.errors import ConfigError
from visionkit.train.balanced import BalancedSampler, sample_groups, sample_weights

from conftest import REPO

CONFIG = str(REPO / "configs" / "classification" / "shapes.yaml")
IMBALANCED = [[0]] * 900 + [[1]] * 90 + [[2]] * 10  # 90% / 9% / 1%


def drawn_classes(sampler, held, epochs=range(3)):
    counts = Counter()
    for epoch in epochs:
        sampler.set_epoch(epoch)
        counts.update(held[i][0] for i, _ in sampler)
    return counts


def test_classes_come_up_equally_on_an_imbalanced_set():
    sampler = BalancedSampler(sample_weights(IMBALANCED, 3), seed=0, rank=0, world_size=1)
    counts = drawn_classes(sampler, IMBALANCED)
    total = sum(counts.values())
    assert total == 3 * len(IMBALANCED)  # an epoch keeps its length
    for c in range(3):
        assert abs(counts[c] / total - 1 / 3) < 0.03, counts
    # the rare class's 10 images are all drawn, and the common class is not flooding it
    sampler.set_epoch(0)
    assert {i for i, _ in sampler if i >= 990} == set(range(990, 1000))


def test_an_image_counts_for_the_rarest_class_it_holds():
    # class 0 in 4 images, class 1 in 2, class 2 in 1; the last image holds nothing
    held = [[0], [0], [0, 1], [0, 1, 2], []]
    assert sample_groups(held, 3) == [0, 0, 1, 2, 3]
    weights = sample_weights(held, 3)
    assert weights.sum().item() == pytest.approx(1.0)
    # four non-empty groups drawn equally, a group's images uniformly
    assert weights.tolist() == pytest.approx([1 / 8, 1 / 8, 1 / 4, 1 / 4, 1 / 4])


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_each_rank_takes_a_disjoint_share_of_one_list_of_draws(world_size):
    weights = sample_weights(IMBALANCED, 3)
    single = BalancedSampler(weights, seed=5, rank=0, world_size=1)
    single.set_epoch(4)
    everything = list(single)
    shards = []
    for rank in range(world_size):
        sampler = BalancedSampler(weights, seed=5, rank=rank, world_size=world_size)
        sampler.set_epoch(4)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler) == -(-len(IMBALANCED) // world_size)
    # positions: rank r takes r, r + W, ...; the union is the one-worker list (padded from its start)
    merged = [None] * (len(shards[0]) * world_size)
    for rank, shard in enumerate(shards):
        merged[rank::world_size] = shard
    assert merged[:len(everything)] == everything
    padding = len(merged) - len(everything)
    assert [i for i, _ in merged[len(everything):]] == [i for i, _ in everything[:padding]]
    # disjoint: no draw position (hence no per-draw seed) appears on two ranks
    seeds = [s for shard in shards for _, s in shard]
    assert len(set(seeds)) == len(seeds)


def test_draws_are_fixed_by_seed_and_epoch():
    weights = sample_weights(IMBALANCED, 3)

    def draws(seed, epoch, rank=1):
        sampler = BalancedSampler(weights, seed=seed, rank=rank, world_size=2)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert draws(1, 2) == draws(1, 2)
    assert draws(1, 2) != draws(1, 3)
    assert draws(1, 2) != draws(2, 2)
    # the index-only view (datasets without per-sample randomness) yields the same images
    sampler = BalancedSampler(weights, seed=1, rank=1, world_size=2)
    sampler.inner.set_epoch(2)
    assert list(sampler.inner) == [i for i, _ in draws(1, 2)]


def _imbalanced_folder(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name, n in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n if split == "train" else 2):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_the_training_loader_balances_an_imagefolder(tmp_path):
    """Through the config, the plugin's sample_classes hook and Task.train_loader, on 2 ranks."""
    from visionkit.config import load_config
    from visionkit.train.loop import Task

    root = _imbalanced_folder(tmp_path, {"common": 60, "rare": 4, "scarce": 8})
    _, raw = load_config(CONFIG, [f"data.root={root}", "data.image_size=8", "data.train_transforms=[]",
                                  "data.balanced_sampling=true", "train.batch_size=9", "train.loader_workers=0"])
    task = Task(raw, "test")
    dataset = task.dataset("train")
    labels = Counter()
    for rank in range(2):
        loader = task.train_loader(dataset, rank=rank, world_size=2)
        for epoch in range(6):
            loader.sampler.set_epoch(epoch)
            labels.update(int(y) for _, batch in loader for y in batch)
    assert sum(labels.values()) == 6 * 72
    for c in range(3):
        assert abs(labels[c] / (6 * 72) - 1 / 3) < 0.07, labels


def test_a_task_that_cannot_say_its_classes_is_refused_before_ray_starts():
    from visionkit.train import launch

    class NoClasses:
        name = "toy"

        def build_dataset(self, data, split):
            return [0, 1, 2]

        def sample_classes(self, dataset):
            return None

    class Data:
        balanced_sampling = True

    class Sections:
        data = Data()

    with pytest.raises(ConfigError, match=r"^data.balanced_sampling: the toy task does not say which classes"):
        launch._preflight(NoClasses(), Sections())


def test_detection_and_segmentation_say_which_classes_each_image_holds():
    """From the boxes' labels (none for a negative) and from the mask's values (255 ignored)."""
    from types import SimpleNamespace

    from visionkit_plugins.detection.plugin import DetectionPlugin
    from visionkit_plugins.segmentation.plugin import SegmentationPlugin

    records = [SimpleNamespace(labels=np.array(labels, dtype=np.int64)) for labels in ([2, 0, 2], [], [1])]
    detection = SimpleNamespace(split=SimpleNamespace(records=records), classes=["a", "b", "c"])
    assert DetectionPlugin().sample_classes(detection) == [[0, 2], [], [1]]

    masks = [np.array([[0, 0], [3, 255]], np.uint8), np.zeros((2, 2), np.uint8)]
    class Masks(SimpleNamespace):
        def __len__(self):
            return len(masks)

    segmentation = Masks(source=SimpleNamespace(mask=masks.__getitem__), classes=["bg", "a", "b", "c"])
    assert SegmentationPlugin().sample_classes(segmentation) == [[0, 3], [0]]
