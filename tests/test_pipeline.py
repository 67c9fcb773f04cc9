"""The input pipeline: pre-split folders, samplers, the decoded-image cache and augmentation presets."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from bcd.data.datamodule import SmearDataModule
from bcd.data.samplers import EpochSampler
from tests.helpers.configs import compose_train, tiny_overrides


def make_presplit(source: Path, target: Path, with_val: bool) -> Path:
    """Lay the tiny dataset out as <target>/{train,val,test}/<class>/ (val optional)."""
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        images = sorted(class_dir.glob("*.jpg"))
        parts = {"test": images[:3], "val": images[3:5] if with_val else [], "train": images[5:]}
        for split, files in parts.items():
            for image in files:
                (target / split / class_dir.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(image, target / split / class_dir.name / image.name)
    return target


@pytest.mark.parametrize("with_val", [True, False])
def test_presplit_folders_keep_their_split(synthetic_root: Path, tmp_path: Path, with_val: bool) -> None:
    root = make_presplit(synthetic_root, tmp_path / "presplit", with_val)
    dm = SmearDataModule(name="p", layout="presplit", root=str(root), num_workers=0, img_size=32)
    dm.prepare()
    for sample in dm.samples:
        folder_split = sample.path.relative_to(root).parts[0]
        if folder_split != "train":
            assert sample.split == folder_split
    assert Counter(s.split for s in dm.samples)["test"] == 12
    # without a val/ folder, val is carved out of train
    assert Counter(s.split for s in dm.samples)["val"] >= 4


def test_presplit_needs_a_train_folder(tmp_path: Path) -> None:
    (tmp_path / "test" / "A").mkdir(parents=True)
    dm = SmearDataModule(name="p", layout="presplit", root=str(tmp_path), num_workers=0)
    with pytest.raises(ValueError, match="no train/ folder"):
        dm.prepare()


def test_epoch_sampler_is_a_function_of_seed_and_epoch() -> None:
    first, second = EpochSampler(50, seed=1, shuffle=True), EpochSampler(50, seed=1, shuffle=True)
    second.set_epoch(3)
    second.set_epoch(0)
    assert list(first) == list(second)
    first.set_epoch(1)
    assert list(first) != list(second)
    assert sorted(i for i, _ in first) == list(range(50))


def test_epoch_sampler_shards_across_ranks() -> None:
    train = [list(EpochSampler(10, seed=0, shuffle=True, rank=r, world_size=3, pad=True)) for r in range(3)]
    assert [len(part) for part in train] == [4, 4, 4]  # padded to equal length for DDP
    evaluation = [list(EpochSampler(10, seed=0, shuffle=False, rank=r, world_size=3, pad=False)) for r in range(3)]
    seen = sorted(i for part in evaluation for i, _ in part)
    assert seen == list(range(10))  # every image exactly once, no padding


def test_weighted_sampler_balances_classes() -> None:
    targets = np.array([0] * 90 + [1] * 10)
    weights = np.where(targets == 0, 1 / 90, 1 / 10)
    sampler = EpochSampler(len(targets), seed=0, shuffle=True, weights=weights)
    drawn: Counter[int] = Counter()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn.update(int(targets[i]) for i, _ in sampler)
    assert 0.4 < drawn[1] / sum(drawn.values()) < 0.6


def test_weighted_sampler_in_the_datamodule(image_folder: Path) -> None:
    for extra in sorted((image_folder / "Benign").glob("*.jpg"))[4:]:
        extra.unlink()
    dm = SmearDataModule(
        name="w", layout="folder", root=str(image_folder), num_workers=0, img_size=32, batch_size=4,
        weighted_sampler=True,
    )
    dm.prepare()
    dm.setup()
    loader = dm.train_dataloader()
    benign = 0
    total = 0
    for epoch in range(10):
        loader.sampler.set_epoch(epoch)
        for _, targets in loader:
            benign += int((targets == 0).sum())
            total += len(targets)
    assert benign / total > 0.15  # far above Benign's share of the training split (~8%)


def test_image_cache_gives_identical_batches(image_folder: Path) -> None:
    augment = compose_train(["augmentation=default"]).augmentation.train

    def first_batches(cache: bool) -> list[torch.Tensor]:
        dm = SmearDataModule(
            name="c", layout="folder", root=str(image_folder), num_workers=0, img_size=40, batch_size=8,
            cache_images=cache, augment=[instantiate(t) for t in augment.values()],
        )
        dm.prepare()
        dm.setup()
        return [images for images, _ in dm.train_dataloader()]

    for cached, decoded in zip(first_batches(True), first_batches(False), strict=True):
        assert torch.equal(cached, decoded)


@pytest.mark.parametrize("preset", ["none", "paper", "default", "stain", "strong"])
def test_augmentation_presets_run(preset: str, synthetic_cache: Path, synthetic_root: Path) -> None:
    cfg = compose_train([*tiny_overrides(synthetic_cache), f"augmentation={preset}"])
    transforms = [instantiate(t) for t in cfg.augmentation.train.values() if t is not None]
    dm = SmearDataModule(
        name="a", layout="folder", root=str(synthetic_root), num_workers=0, img_size=48, batch_size=4,
        augment=transforms,
    )
    dm.prepare()
    dm.setup()
    images, targets = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 48, 48)
    if preset != "none":
        plain = dm.datasets["train"].image(0)
        augmented = [dm.datasets["train"][(0, seed)][0].permute(1, 2, 0).numpy() for seed in range(6)]
        assert any(not np.array_equal(plain, a) for a in augmented)
