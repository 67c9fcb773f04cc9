"""Augmentation on the device (augmentation.device=model): uint8 batches from the loader, per-image parameters drawn
from each image's own seed, the same shifts as bcd.evaluate's check, exact flips and rotations, the affine map within
interpolation error, and the model's normalisation applied once to what it receives."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bcd.config.checks import to_plain
from bcd.data.batch_augment import Affine, BatchAugment, Flip, Rotate90, Shift
from bcd.data.colour_shift import apply_shift
from bcd.data.decode import read_rgb
from bcd.utils.errors import ConfigError
from tests.helpers.configs import compose_train

ALWAYS = 0.0  # the first uniform number of an image is below p = 1: the transform applies


def batch_of(image: np.ndarray, n: int) -> torch.Tensor:
    """n copies of an H x W x 3 uint8 image as a uint8 batch (n, 3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].repeat(n, 1, 1, 1)


@pytest.fixture
def smear(synthetic_root: Path) -> np.ndarray:
    """One synthetic smear image (H x W x 3 uint8)."""
    return read_rgb(sorted(synthetic_root.rglob("*.jpg"))[0])


def default_augment() -> BatchAugment:
    """The default recipe's augmentation (the stain set) as batch transforms."""
    return BatchAugment.from_config(compose_train([]).augmentation.train)


def test_every_image_draws_its_own_parameters_from_its_own_seed(smear: np.ndarray) -> None:
    augment = default_augment()
    batch = batch_of(smear, 8)
    out = augment(batch, list(range(8)))
    assert out.dtype == torch.uint8 and out.shape == batch.shape
    assert len({out[i].numpy().tobytes() for i in range(8)}) == 8  # eight copies, eight augmentations
    again = augment(batch, list(range(8)))
    assert torch.equal(out, again)  # the same seeds, the same batch
    # an image's augmentation does not depend on the batch it falls in (so DDP ranks, resumed runs and other batch
    # sizes agree): image 3 alone equals image 3 among the eight
    assert torch.equal(augment(batch[3:4], [3])[0], out[3])
    assert not torch.equal(augment(batch, list(range(100, 108))), out)


@pytest.mark.parametrize("kind", ["channel_gain", "brightness", "hed"])
def test_each_colour_shift_equals_the_evaluation_shift_within_one_level(kind: str, smear: np.ndarray) -> None:
    augment = BatchAugment([Shift(kind, limit=0.15, p=1.0)])
    seeds = [11, 12, 13]
    out = augment(batch_of(smear, 3), seeds)
    u = augment.uniforms(seeds, "cpu")
    for i in range(3):
        expected = apply_shift(smear, kind, 0.15, (2 * u[i, 1:7] - 1).numpy())  # what bcd.evaluate computes
        difference = np.abs(out[i].permute(1, 2, 0).numpy().astype(int) - expected.astype(int))
        assert difference.max() <= 1, kind
    assert any(not torch.equal(out[i], batch_of(smear, 1)[0]) for i in range(3))  # the shifts did change colours


def test_flips_and_rotations_are_exact(smear: np.ndarray) -> None:
    batch = batch_of(smear, 4)
    for transform, expected in ((Flip(3, 1.0), batch.flip(3)), (Flip(2, 1.0), batch.flip(2))):
        assert torch.equal(BatchAugment([transform])(batch, [0, 1, 2, 3]), expected)
    rotate = BatchAugment([Rotate90(1.0)])
    seeds = list(range(20))
    out = rotate(batch_of(smear, 20), seeds)
    turns = (rotate.uniforms(seeds, "cpu")[:, 1] * 4).floor().long()
    assert set(turns.tolist()) == {0, 1, 2, 3}
    for i, k in enumerate(turns.tolist()):
        assert torch.equal(out[i], torch.rot90(batch[0], k, dims=(1, 2)))


def test_the_affine_map_matches_opencv_within_interpolation_error() -> None:
    """Scale 1.1, rotation 12 degrees, translation (4%, -3%) of a smooth image against cv2.warpAffine with the same
    map about the centre and a reflected border."""
    size = 96
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.stack([128 + 100 * np.sin(xx / 9), 128 + 100 * np.cos(yy / 11), 128 + 60 * np.sin((xx + yy) / 13)], -1)
    image = image.clip(0, 255).astype(np.uint8)
    scale, degrees, tx, ty = 1.1, 12.0, 0.04, -0.03
    # uniform numbers that give exactly these parameters: scale in [1.0, 1.2], translations and rotation symmetric
    transform = Affine(scale=(1.0, 1.2), translate_percent=(-0.1, 0.1), rotate=(-30, 30), p=1.0)
    u = torch.tensor([[ALWAYS, (scale - 1.0) / 0.2, (tx + 0.1) / 0.2, (ty + 0.1) / 0.2, (degrees + 30) / 60]])
    ours = transform.apply(batch_of(image, 1).float(), u)[0].permute(1, 2, 0).numpy()
    centre = ((size - 1) / 2, (size - 1) / 2)
    matrix = cv2.getRotationMatrix2D(centre, degrees, scale)  # positive: counter-clockwise, as shown
    matrix[:, 2] += (tx * size, ty * size)
    theirs = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    inner = slice(8, size - 8)
    difference = np.abs(ours[inner, inner] - theirs[inner, inner].astype(np.float32))
    assert difference.mean() < 1.5 and np.percentile(difference, 99) < 6


def test_the_default_augmentation_reads_as_batch_transforms_and_refuses_what_it_cannot_do() -> None:
    names = [type(t).__name__ for t in default_augment().transforms]
    assert names == ["Flip", "Flip", "Rotate90", "Affine", "ColourJitter", "Gain", "StainJitter", "HueSaturation",
                     "Grayscale"]
    with pytest.raises(ConfigError, match=r"augmentation.train.blur: GaussianBlur is not available with "
                                          r"augmentation.device=model"):
        BatchAugment.from_config(compose_train(["augmentation=strong"]).augmentation.train)
    from bcd.data.transforms import training_augmentation

    with pytest.raises(ConfigError, match="augmentation.device"):
        training_augmentation({"device": "gpu", "train": {}})
    # auto: batches wherever every transform has a batch version, else each image in the loader (named in the log)
    default = to_plain(compose_train([]).augmentation)
    assert set(training_augmentation(default)) == {"batch_augment"}
    assert [type(t).__name__ for t in training_augmentation({**default, "device": "cpu"})["augment"]][:2] == [
        "HorizontalFlip", "VerticalFlip"]
    strong = to_plain(compose_train(["augmentation=strong"]).augmentation)
    assert "GaussianBlur" in [type(t).__name__ for t in training_augmentation(strong)["augment"]]
    with pytest.raises(ConfigError, match="GaussianBlur"):
        training_augmentation({**strong, "device": "model"})


def test_training_with_augmentation_on_the_model_feeds_it_uint8_batches(train_run, monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    """The loader ships un-augmented uint8 images with their seeds; after the transfer the datamodule augments them;
    the model receives uint8 (its normalisation, inside forward, is the only one) and trains."""
    from bcd.data.datamodule import SmearDataModule
    from bcd.models.classifier import Classifier

    seen: dict[str, torch.Tensor] = {}
    forward = Classifier.forward

    def recording(self: Classifier, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            seen.setdefault("images", images)
        return forward(self, images)

    hook = SmearDataModule.on_after_batch_transfer
    transferred: list[int] = []

    def counting(self: SmearDataModule, batch, dataloader_idx: int):
        transferred.append(len(batch))
        return hook(self, batch, dataloader_idx)

    monkeypatch.setattr(Classifier, "forward", recording)
    monkeypatch.setattr(SmearDataModule, "on_after_batch_transfer", counting)
    summary = train_run("augmentation.device=model", "trainer.max_epochs=2")
    assert summary.global_step > 0 and 3 in transferred  # training batches carried their seeds
    assert seen["images"].dtype == torch.uint8
    # the same run again: the same weights (augmentation drawn from the items' seeds, not from a global state)
    again = train_run("augmentation.device=model", "trainer.max_epochs=2")
    first = torch.load(summary.checkpoints.last, weights_only=True)["state_dict"]
    second = torch.load(again.checkpoints.last, weights_only=True)["state_dict"]
    for key, value in first.items():
        torch.testing.assert_close(second[key], value, msg=key)
    assert math.isfinite(summary.history[-1]["val/loss"])


def test_the_training_split_stays_on_the_device_when_it_fits(synthetic_root: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With the augmentation on the model's device the training images are kept there and batches are indexed
    (bcd.data.resident): the same images, targets and seeds, in the same order, as the loader would give; a split
    larger than RESIDENT_SHARE of the free memory goes through the loader."""
    from torch.utils.data import DataLoader

    from bcd.data import datamodule as datamodule_module
    from bcd.data.datamodule import SmearDataModule
    from bcd.data.resident import ResidentBatches

    def made() -> SmearDataModule:
        dm = SmearDataModule(name="r", layout="folder", root=str(synthetic_root), num_workers=0, img_size=48,
                             batch_size=8, batch_augment=BatchAugment([]))
        dm.prepare()
        dm.setup()
        return dm

    dm = made()
    resident = dm.train_dataloader()
    assert isinstance(resident, ResidentBatches) and resident.images.dtype == torch.uint8
    resident.sampler.set_epoch(3)
    plain = DataLoader(dm.datasets["train"], batch_size=8, sampler=resident.sampler, drop_last=resident.drop_last)
    assert len(resident) == len(plain) > 1
    for (images, targets, seeds), (images_, targets_, seeds_) in zip(resident, plain, strict=True):
        assert torch.equal(images, images_) and torch.equal(targets, targets_) and torch.equal(seeds, seeds_)
    monkeypatch.setattr(datamodule_module, "available_memory", lambda device: 1000)  # 1 kB free: it cannot fit
    assert isinstance(made().train_dataloader(), DataLoader)
