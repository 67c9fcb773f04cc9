"""The LightningDataModule: loads a split plan (bcd.data.plan) into datasets and loaders: per-image or batched augmentation,
the decoded-image cache, the resident training split, epoch-seeded rank-sharded sampling."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import torch
from torch.utils.data import DataLoader

from bcd.data.batch_augment import BatchAugment
from bcd.data.dataset import SmearDataset, build_cache
from bcd.data.plan import SplitPlan, check_options, data_root, plan_split
from bcd.data.reader import ImageReader
from bcd.data.resident import RESIDENT_SHARE, ResidentBatches, resident_bytes, to_device
from bcd.data.samplers import EpochSampler, batch_count
from bcd.data.sources import (
    SPLITS,
    DatasetError,
    Sample,
)
from bcd.data.spec import dataset_config
from bcd.data.splits import check_split_problems
from bcd.utils.rss import available_memory

log = logging.getLogger(__name__)



def default_num_workers() -> int:
    """Loader workers per device when dataset.num_workers is null, from the cores this process may use.

    On a GPU machine the loader has to keep up with the GPU (an H200 trains B0 at thousands of images/s, one
    worker augments a few hundred): every usable core but one per device, at most 16. Without a GPU none: the
    training process reads and augments its batches itself. Measured on the 2-core dev CPU (Lite0 at 224 px,
    3-epoch fits of the real sample; experiments/README.md, "A fit as fast as its steps"): augmenting in the
    process costs a few percent of a step, while workers forked from a process that already holds gigabytes of
    activations make it copy every page it touches next (copy-on-write), 7-10 s of page faults at the first
    validation and again at the test; the fit loop ran at 35.5 images/s without workers and 26-30 with two.
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if torch.cuda.is_available():
        return max(1, min(16, usable // torch.cuda.device_count() - 1))
    return 0


class SmearDataModule(L.LightningDataModule):
    """Blood smear images from a folder, pre-split folders, a CSV manifest or the synthetic generator."""

    def __init__(
        self,
        *,
        task: str = "multiclass",
        img_size: int = 224,
        augment: Sequence[A.BasicTransform] = (),
        batch_augment: BatchAugment | None = None,
        seed: int = 0,
        plan: SplitPlan | None = None,
        **dataset: Any,
    ) -> None:
        """`dataset`: the fields of bcd.data.spec.DatasetConfig (what instantiating a dataset config passes); `plan`:
        a split already planned (bcd.data.plan.plan_split), else prepare() plans one."""
        super().__init__()
        self.spec = dataset_config(dataset)
        check_options(self.spec, task)
        self.task = task
        self.batch_size = self.spec.batch_size
        # images per loader batch: the memory plan's micro-batch (bcd.models.memory), set by whoever plans one; the
        # batch an optimizer step sees stays batch_size
        self.micro_batch: int | None = None
        self.num_workers = default_num_workers() if self.spec.num_workers is None else self.spec.num_workers
        # every image this datamodule reads (training, the cache) goes through it
        self.reader = ImageReader(self.spec.max_pixels)
        self.img_size = img_size
        if augment and batch_augment is not None:
            raise ValueError("augment (per image in the loader) and batch_augment (per batch on the device): one only")
        self.augment = A.Compose(list(augment)) if augment else None
        # augmentation.device=model: training batches leave the loader as uint8 with their images' seeds and are
        # augmented after the transfer (on_after_batch_transfer), on the device the model trains on
        self.batch_augment = batch_augment
        self._resident: torch.Tensor | None = None
        self.seed = seed
        self.plan = plan
        self.datasets: dict[str, SmearDataset] = {}

    # ---- the split (planned once per process, before the model is built) ----
    def prepare(self, output_dir: Path | None = None, expected_classes: Sequence[str] | None = None,
                fail_on: Sequence[str] = ()) -> None:
        """Plan the split (bcd.data.plan.plan_split) unless a plan was given, check a given one the same way, and leave
        it in output_dir when given (the manifest, and the files left out). expected_classes, fail_on: as plan_split's."""
        if self.plan is None:
            self.plan = plan_split(self.spec, self.task, self.seed, expected_classes=expected_classes, fail_on=fail_on)
        else:
            self.plan.check_classes(expected_classes)
            check_split_problems(self.plan.problems, fail_on, self.plan.data_dir)
        self.plan.write(output_dir)

    @property
    def planned(self) -> SplitPlan:
        """The split plan (an error before prepare() made one)."""
        if self.plan is None:
            raise RuntimeError("SmearDataModule: call prepare() (or pass plan=) before using the split")
        return self.plan

    @property
    def samples(self) -> list[Sample]:
        """Every sample with its split (none before the split is planned)."""
        return self.plan.samples if self.plan is not None else []

    @property
    def data_dir(self) -> Path | None:
        """The folder the images are read from (None before the split is planned)."""
        return self.plan.data_dir if self.plan is not None else None

    @property
    def split_method(self) -> str:
        """What the split kept together, to print next to every number (see bcd.data.splits.split_method)."""
        return self.planned.split_method

    def data_root(self) -> Path:
        """The folder images are read from; for synthetic data it is generated there first."""
        return data_root(self.spec)

    @property
    def class_names(self) -> list[str]:
        """Names of the model's classes, in output order (benign/malignant for task=binary)."""
        return self.planned.class_names

    def split_samples(self, split: str) -> list[Sample]:
        """The samples of one split."""
        return self.planned.split_samples(split)

    def targets(self, split: str) -> list[int]:
        """Targets of one split."""
        return self.planned.targets(split)

    # ---- Lightning hooks ----
    def setup(self, stage: str | None = None) -> None:
        """Build one dataset per split (decoding all images into RAM first when cache_images is on)."""
        if self.plan is None:
            self.prepare()
        for split in SPLITS:
            samples = self.split_samples(split)
            if split in self.datasets or not samples:
                continue
            paths = [s.path for s in samples]
            cache = build_cache(paths, self.img_size, self.reader) if self.spec.cache_images else None
            train = split == "train"
            self.datasets[split] = SmearDataset(
                paths, self.targets(split), self.img_size, self.augment if train else None, cache, self.reader,
                with_seed=train and self.batch_augment is not None,
            )

    def _loader(self, split: str, train: bool) -> DataLoader | ResidentBatches:
        """A loader over one split with our epoch-seeded, rank-sharded sampler (the training split resident on the
        device instead when the augmentation runs there and it fits: bcd.data.resident)."""
        if split not in self.datasets:
            raise DatasetError(f"dataset: the {split} split is empty; check dataset.{split}_fraction or the data")
        dataset = self.datasets[split]
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        weights = None
        if train and self.spec.weighted_sampler:
            weights = [self.planned.class_weights[t] for t in dataset.targets]
        sampler = EpochSampler(
            len(dataset), self.seed, shuffle=train, weights=weights, rank=rank, world_size=world, pad=train
        )
        # Lightning starts (resumed) loader workers before it calls set_epoch, so start at the right epoch
        sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0)
        resident = self._resident_images(dataset) if train else None
        if resident is not None:
            return ResidentBatches(resident, dataset.targets, sampler, self.loader_batch_size,
                                   self._drop_last(len(sampler), train))
        return DataLoader(
            dataset,
            batch_size=self.loader_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # worker seeds come from here, not from the global RNG, so starting workers cannot shift dropout masks
            generator=torch.Generator().manual_seed(self.seed),
            drop_last=self._drop_last(len(sampler), train),
        )

    def _resident_images(self, dataset: SmearDataset) -> torch.Tensor | None:
        """The training images on the model's device, when the augmentation runs there (augmentation.device=model)
        and they take at most RESIDENT_SHARE of its free memory; None otherwise (the loader serves them)."""
        if self.batch_augment is None:
            return None
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self._resident is None or self._resident.device != device:
            needed = resident_bytes(len(dataset), self.img_size)
            if needed > RESIDENT_SHARE * available_memory(str(device)):
                return None
            cache = dataset.cache if dataset.cache is not None else build_cache(dataset.paths, self.img_size,
                                                                                 self.reader)
            self._resident = to_device(cache, device)
            log.info("the %d training images (%.2f GiB) stay on %s; batches are indexed there", len(dataset),
                     needed / 1024**3, device)
        return self._resident

    def _drop_last(self, items: int, train: bool) -> bool:
        """Whether a loader over `items` images drops its last, incomplete batch: in training, when there is a
        complete one (a last batch of one image breaks BatchNorm)."""
        return train and items > self.loader_batch_size

    def train_batches_per_epoch(self, world_size: int = 1) -> int:
        """The batches each rank's training loader yields in an epoch (what Lightning's val_check_interval counts)."""
        items = len(EpochSampler(len(self.split_samples("train")), self.seed, shuffle=True, world_size=world_size))
        return batch_count(items, self.loader_batch_size, self._drop_last(items, train=True))

    @property
    def loader_batch_size(self) -> int:
        """Images per loader batch: the micro-batch when a memory plan set one, else dataset.batch_size."""
        return self.micro_batch or self.batch_size

    def loader(self, split: str) -> DataLoader:
        """An evaluation loader over any split (no shuffling; augmentation only if this module has it)."""
        return self._loader(split, train=False)

    def positive_class_indices(self) -> list[int] | None:
        """Indices of the malignant classes among class_names, for sensitivity and specificity."""
        return self.planned.positive_class_indices()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A training batch with its images' seeds (augmentation.device=model) augmented on the device it has just
        reached: uint8 in, uint8 out, each image by its own seed; every other batch as it is."""
        if self.batch_augment is not None and isinstance(batch, list | tuple) and len(batch) == 3:
            images, targets, seeds = batch
            return self.batch_augment(images, seeds.tolist()), targets
        return batch

    def train_dataloader(self) -> DataLoader:
        """Training batches: shuffled (or class-balanced), augmented."""
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, every image exactly once across ranks."""
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches, every image exactly once."""
        return self._loader("test", train=False)

    def describe(self) -> dict[str, Any]:
        """What summary.json records about the data."""
        plan = self.planned
        return {
            "name": self.spec.name,
            "root": str(plan.data_dir),
            "fingerprint": plan.fingerprint,
            "source_classes": plan.source_classes,
            "class_names": plan.class_names,
            "class_weights": plan.class_weights,
            "counts": plan.counts(),
            "split_method": plan.split_method,
            "skipped_files": {str(p): r for p, r in plan.bad_files.items()},
            "citation": self.spec.citation,
            "problems": {check: len(groups) for check, groups in plan.problems.items()},
        }
