"""The LightningDataModule: sources -> audit -> splits -> datasets -> loaders, with class weights."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import torch
from torch.utils.data import DataLoader

from bcd.data.batch_augment import BatchAugment
from bcd.data.dataset import SmearDataset, build_cache
from bcd.data.integrity import audit_files, format_bad_files
from bcd.data.proxy_groups import describe_proxy_groups, proxy_group_ids
from bcd.data.reader import ImageReader
from bcd.data.resident import RESIDENT_SHARE, ResidentBatches, resident_bytes, to_device
from bcd.data.samplers import EpochSampler
from bcd.data.sources import (
    SPLITS,
    DatasetError,
    Sample,
    check_root,
    check_typo_classes,
    load_samples,
    read_manifest,
)
from bcd.data.spec import DatasetConfig
from bcd.data.splits import (
    assign_splits,
    check_hashes,
    check_split_problems,
    class_weights,
    fingerprint,
    split_counts,
    split_groups,
    split_method,
    split_problems,
    write_manifest,
)
from bcd.data.synthetic import ensure_synthetic_dataset
from bcd.utils.rss import available_memory

log = logging.getLogger(__name__)

BINARY_CLASS_NAMES = ["benign", "malignant"]


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
        name: str,
        layout: str,
        root: str,
        manifest: str | None = DatasetConfig.manifest,
        classes: Sequence[str] | None = DatasetConfig.classes,
        negative_classes: Sequence[str] | None = DatasetConfig.negative_classes,
        split_manifest: str | None = DatasetConfig.split_manifest,
        val_fraction: float = DatasetConfig.val_fraction,
        test_fraction: float = DatasetConfig.test_fraction,
        dedup: str = DatasetConfig.dedup,
        near_threshold: int = DatasetConfig.near_threshold,
        groups: str | None = DatasetConfig.groups,
        proxy_groups: int = DatasetConfig.proxy_groups,
        on_bad_file: str = DatasetConfig.on_bad_file,
        cache_images: bool = DatasetConfig.cache_images,
        batch_size: int = DatasetConfig.batch_size,
        num_workers: int | None = DatasetConfig.num_workers,
        weighted_sampler: bool = DatasetConfig.weighted_sampler,
        max_pixels: int | None = DatasetConfig.max_pixels,
        citation: str | None = DatasetConfig.citation,
        synthetic_images_per_class: int = DatasetConfig.synthetic_images_per_class,
        synthetic_image_size: int = DatasetConfig.synthetic_image_size,
        mask_annotations: bool = DatasetConfig.mask_annotations,
        *,
        task: str = "multiclass",
        img_size: int = 224,
        augment: Sequence[A.BasicTransform] = (),
        batch_augment: BatchAugment | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if on_bad_file not in ("fail", "skip"):
            raise DatasetError(f"dataset.on_bad_file: {on_bad_file!r} is not one of ['fail', 'skip']")
        if task not in ("multiclass", "binary"):
            raise DatasetError(f"task.name: {task!r} is not one of ['multiclass', 'binary']")
        if batch_size < 1:
            raise DatasetError(f"dataset.batch_size: {batch_size} must be >= 1")
        self.name = name
        self.layout = layout
        self.root = root
        self.manifest = manifest
        self.classes = list(classes) if classes is not None else None
        self.negative_classes = list(negative_classes) if negative_classes is not None else None
        self.split_manifest = split_manifest
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.dedup = dedup
        self.near_threshold = near_threshold
        if groups not in (None, "proxy"):
            raise DatasetError(f"dataset.groups: {groups!r} is not one of [null, proxy]")
        self.groups = groups
        self.proxy_groups = proxy_groups
        self.on_bad_file = on_bad_file
        self.cache_images = cache_images
        self.batch_size = batch_size
        # images per loader batch: the memory plan's micro-batch (bcd.models.memory), set by whoever plans one; the
        # batch an optimizer step sees stays batch_size
        self.micro_batch: int | None = None
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.weighted_sampler = weighted_sampler
        # every image this datamodule reads (audit, proxy groups, duplicates, training, the cache) goes through it
        self.reader = ImageReader(max_pixels)
        self.citation = citation
        self.synthetic_images_per_class = synthetic_images_per_class
        self.synthetic_image_size = synthetic_image_size
        # applied by the model (it travels with the checkpoint), recorded here with the rest of the data's options
        self.mask_annotations = mask_annotations
        self.task = task
        self.img_size = img_size
        if augment and batch_augment is not None:
            raise ValueError("augment (per image in the loader) and batch_augment (per batch on the device): one only")
        self.augment = A.Compose(list(augment)) if augment else None
        # augmentation.device=model: training batches leave the loader as uint8 with their images' seeds and are
        # augmented after the transfer (on_after_batch_transfer), on the device the model trains on
        self.batch_augment = batch_augment
        self._resident: torch.Tensor | None = None
        self.seed = seed
        # filled in by prepare()
        self.data_dir: Path | None = None
        self.samples: list[Sample] = []
        self.group_ids: list[str] = []
        self.proxy_ids: list[str | None] | None = None
        self.source_classes: list[str] = []
        self.bad_files: dict[Path, str] = {}
        self.class_weights: list[float] = []
        self.problems: dict[str, list[list[Sample]]] = {}
        self.fingerprint = ""
        self.datasets: dict[str, SmearDataset] = {}

    # ---- preparing the split (once per process, before the model is built) ----
    def prepare(self, output_dir: Path | None = None, expected_classes: Sequence[str] | None = None,
                fail_on: Sequence[str] = ()) -> None:
        """Scan, audit and split the data; write the manifest (and skipped files) to output_dir when given.
        expected_classes: the classes a trained model predicts, which the data must have (in that order);
        fail_on: the split checks (bcd.data.splits.SPLIT_CHECKS) that stop the run instead of warning."""
        root = self.data_dir = self.data_root()
        if self.split_manifest is not None:
            samples, classes = read_manifest(self.split_manifest, root, self.classes, key="dataset.split_manifest")
        else:
            samples, classes = load_samples(self.layout, root, self.classes, self.manifest)
        self.source_classes = classes
        self._check_task_classes()
        if expected_classes is not None and self.class_names != list(expected_classes):
            raise DatasetError(
                f"dataset: classes {self.class_names} differ from the checkpoint's {list(expected_classes)}; set "
                "dataset.classes to the checkpoint's classes in the same order, or evaluate a checkpoint trained on "
                "these classes"
            )
        audit = audit_files([s.path for s in samples], reader=self.reader)
        self.bad_files = audit.bad
        if audit.bad and self.on_bad_file == "fail":
            raise DatasetError(
                f"{format_bad_files(audit.bad)}\nFix or remove these files, or run with dataset.on_bad_file=skip "
                "to leave them out (the list is then written to the run dir)"
            )
        if self.split_manifest is not None:
            check_hashes(samples, audit.hashes, key="dataset.split_manifest")
        samples = [replace(s, sha1=audit.hashes[s.path]) for s in samples if s.path not in audit.bad]
        if self.groups == "proxy":
            # clustered with a fixed seed: the proxy groups describe the data, and must not move with the split seed
            self.proxy_ids = proxy_group_ids(samples, self.proxy_groups, reader=self.reader)
            log.info("dataset %s: %s", self.name, describe_proxy_groups(self.proxy_ids))
        # one id per sample: samples that must share a split side (duplicates, a group) share an id
        self.group_ids = split_groups(
            samples, self.dedup, near_threshold=self.near_threshold, proxy_ids=self.proxy_ids, reader=self.reader
        )
        self.samples = assign_splits(
            samples, self.val_fraction, self.test_fraction, self.seed, groups=self.group_ids
        )
        if self.classes is None:  # every label became a class: a mistyped one would be a class of its own
            check_typo_classes(self.samples, self.source_classes, f"dataset {self.name}")
        self.problems = split_problems(self.samples)
        check_split_problems(self.problems, fail_on, root)
        self.class_weights = class_weights(self.targets("train"), len(self.class_names))
        self.fingerprint = fingerprint(self.samples, root)
        log.info("dataset %s: %s", self.name, json.dumps(split_counts(self.samples, self.source_classes)))
        if output_dir is not None:
            write_manifest(Path(output_dir) / "split_manifest.csv", self.samples, root)
        if audit.bad:
            self._report_skipped(audit.bad, output_dir)

    def _report_skipped(self, bad: dict[Path, str], output_dir: Path | None) -> None:
        """Warn that dataset.on_bad_file=skip left files out, listing them in output_dir/skipped_files.txt."""
        if output_dir is None:
            log.warning("dataset.on_bad_file=skip, leaving out %s", format_bad_files(bad, limit=5))
            return
        skipped = Path(output_dir) / "skipped_files.txt"
        skipped.write_text(format_bad_files(bad, limit=10**9) + "\n")
        log.warning("dataset.on_bad_file=skip: left out %d unreadable file(s); they are listed in %s", len(bad), skipped)

    @property
    def split_method(self) -> str:
        """What the split kept together, to print next to every number (see bcd.data.splits.split_method)."""
        return split_method(self.dedup, self.samples, self.proxy_ids)

    def data_root(self) -> Path:
        """The folder images are read from; for synthetic data it is generated there first."""
        if self.layout == "synthetic":
            cache_dir = Path(self.root).expanduser().resolve()
            return ensure_synthetic_dataset(
                cache_dir, self.synthetic_images_per_class, self.synthetic_image_size, seed=0
            )
        return check_root(self.root)

    def _check_task_classes(self) -> None:
        """Every task needs two classes or more; task=binary needs dataset.negative_classes among them."""
        if len(self.source_classes) < 2:
            source = self.split_manifest or (self.manifest if self.layout == "manifest" else self.data_dir)
            found = f"only one class ({self.source_classes[0]!r})" if self.source_classes else "no class"
            raise DatasetError(
                f"dataset: found {found} in {source}; a classifier needs at least two classes: point dataset.root "
                "(or dataset.manifest) at the whole dataset, or list two or more classes in dataset.classes"
            )
        if self.task != "binary":
            return
        if not self.negative_classes:
            raise DatasetError(
                "dataset.negative_classes: task=binary needs the benign classes, e.g. "
                "dataset.negative_classes=[Benign]; every other class counts as malignant"
            )
        unknown = sorted(set(self.negative_classes) - set(self.source_classes))
        if unknown or set(self.negative_classes) == set(self.source_classes):
            raise DatasetError(
                f"dataset.negative_classes: {self.negative_classes} must be a proper subset of the classes "
                f"{self.source_classes}"
            )

    @property
    def class_names(self) -> list[str]:
        """Names of the model's classes, in output order (benign/malignant for task=binary)."""
        return BINARY_CLASS_NAMES if self.task == "binary" else self.source_classes

    def target_of(self, label: str) -> int:
        """The training target of a source label (0/1 for task=binary)."""
        if self.task == "binary":
            return int(label not in self.negative_classes)
        return self.source_classes.index(label)

    def split_samples(self, split: str) -> list[Sample]:
        """The samples of one split."""
        return [s for s in self.samples if s.split == split]

    def targets(self, split: str) -> list[int]:
        """Targets of one split."""
        return [self.target_of(s.label) for s in self.split_samples(split)]

    # ---- Lightning hooks ----
    def setup(self, stage: str | None = None) -> None:
        """Build one dataset per split (decoding all images into RAM first when cache_images is on)."""
        if not self.samples:
            self.prepare()
        for split in SPLITS:
            samples = self.split_samples(split)
            if split in self.datasets or not samples:
                continue
            paths = [s.path for s in samples]
            cache = build_cache(paths, self.img_size, self.reader) if self.cache_images else None
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
        if train and self.weighted_sampler:
            weights = [self.class_weights[t] for t in dataset.targets]
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
        size = self.loader_batch_size
        return items // size if self._drop_last(items, train=True) else -(-items // size)

    @property
    def loader_batch_size(self) -> int:
        """Images per loader batch: the micro-batch when a memory plan set one, else dataset.batch_size."""
        return self.micro_batch or self.batch_size

    def loader(self, split: str) -> DataLoader:
        """An evaluation loader over any split (no shuffling; augmentation only if this module has it)."""
        return self._loader(split, train=False)

    def positive_class_indices(self) -> list[int] | None:
        """Indices of the malignant classes among class_names, for sensitivity and specificity."""
        if self.task == "binary":
            return [1]
        if not self.negative_classes:
            return None
        return [i for i, name in enumerate(self.class_names) if name not in self.negative_classes]

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
        return {
            "name": self.name,
            "root": str(self.data_dir),
            "fingerprint": self.fingerprint,
            "source_classes": self.source_classes,
            "class_names": self.class_names,
            "class_weights": self.class_weights,
            "counts": split_counts(self.samples, self.source_classes),
            "split_method": self.split_method,
            "skipped_files": {str(p): r for p, r in self.bad_files.items()},
            "citation": self.citation,
            "problems": {check: len(groups) for check, groups in self.problems.items()},
        }
