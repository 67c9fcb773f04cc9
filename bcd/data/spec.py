"""The typed schema of dataset=...: the one home of the data options' defaults (conf/dataset/* compose on top of
it through bcd.config.store, SmearDataModule takes its defaults from it), and what a run dir's recorded dataset
section is checked against before evaluation rebuilds the data from it."""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, List, Optional  # noqa: UP035 - OmegaConf reads these annotations at run time

from omegaconf import MISSING

from bcd.data.decode import MAX_PIXELS

DATAMODULE = "bcd.data.datamodule.SmearDataModule"


# The options with a fixed set of values, as enums of strings: OmegaConf refuses any other value when the config is
# composed (naming the key and the choices), and a member is its string wherever it is compared, formatted or saved.
class Layout(StrEnum):
    """How a dataset's files are organised (dataset.layout)."""

    folder = "folder"
    presplit = "presplit"
    manifest = "manifest"
    synthetic = "synthetic"


class Dedup(StrEnum):
    """Which duplicates a split keeps on one side (dataset.dedup)."""

    none = "none"
    exact = "exact"
    near = "near"


class Grouping(StrEnum):
    """Groups made for images without a real group (dataset.groups; null: none)."""

    proxy = "proxy"


class OnBadFile(StrEnum):
    """What an unreadable file does (dataset.on_bad_file)."""

    fail = "fail"
    skip = "skip"


@dataclass
class DatasetConfig:
    """Every argument of bcd.data.datamodule.SmearDataModule that a config sets."""

    _target_: str = DATAMODULE
    # a short name for reports and W&B
    name: str = MISSING
    # folder: <root>/<class>/*.jpg, split automatically
    # presplit: <root>/{train,val,test}/<class>/*.jpg (val is carved from train when missing)
    # manifest: a CSV (dataset.manifest) with path,label[,group][,split]; paths relative to root
    # synthetic: generated blood smears, written once to <root>/ and then read like a folder
    layout: Layout = Layout.folder
    root: str = MISSING
    manifest: Optional[str] = None  # noqa: UP045
    # class names in a fixed order (saved with the run); null: the class folder names, sorted
    classes: Optional[List[str]] = None  # noqa: UP006, UP045
    # for task=binary: the classes that are benign (label 0); every other class is malignant (label 1)
    negative_classes: Optional[List[str]] = None  # noqa: UP006, UP045
    # reuse a split: the split_manifest.csv of an earlier run
    split_manifest: Optional[str] = None  # noqa: UP045
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # exact: byte-identical files always share a split side; near: also near-duplicates (resized, re-encoded
    # copies: perceptual hashes at most near_threshold bits apart); none: ignore duplicates
    dedup: Dedup = Dedup.exact
    # dedup=near and the audit: how many of the 64 bits of two perceptual hashes may differ for a near-duplicate
    near_threshold: int = 6
    # null: split by image (and the manifest's group column, when there is one); proxy: images without a real
    # group are clustered by acquisition colour (colour balance of the background and of the stain) into
    # pseudo-sessions that the split keeps whole: a stand-in for the missing patient ids, not patients
    groups: Optional[Grouping] = None  # noqa: UP045
    # groups=proxy: clusters per class (within each class, so every class has several groups to split; on the
    # real sample 4 leave whole classes out of val and test, 8 do not)
    proxy_groups: int = 8
    # an unreadable file (corrupt, truncated, not an image, a broken link): fail (list them and stop) or skip
    # (list them and go on)
    on_bad_file: OnBadFile = OnBadFile.fail
    # keep decoded images in RAM (shared with loader workers, if any): for datasets that fit
    cache_images: bool = False
    # per device (Lightning's meaning); the global batch is batch_size x devices
    batch_size: int = 32
    # loader worker processes per device; null: with a GPU every usable core but one per device (at most 16),
    # without one none: the training process augments its own batches (bcd.data.datamodule.default_num_workers)
    num_workers: Optional[int] = None  # noqa: UP045
    # draw training batches with class-balanced probabilities instead of shuffling
    weighted_sampler: bool = False
    # refuse images with more pixels than this (decompression bombs, wrong files)
    max_pixels: Optional[int] = MAX_PIXELS  # noqa: UP045
    citation: Optional[str] = None  # noqa: UP045
    # fill burned-in annotation marks (scale-bar labels) with the background colour, inside the model's forward so
    # that training, evaluation, prediction and the ONNX export all do it (bcd.models.annotations)
    mask_annotations: bool = False
    # layout=synthetic only: images per class and their side length
    synthetic_images_per_class: int = 40
    synthetic_image_size: int = 224


def dataset_config(fields_: Mapping[str, Any]) -> DatasetConfig:
    """A DatasetConfig of the dataset options a config or a run dir gives (lists as plain lists); an unknown option
    is an error naming it."""
    known = {f.name for f in fields(DatasetConfig)}
    unknown = sorted(set(fields_) - known)
    if unknown:
        raise ValueError(f"dataset: unknown option(s) {unknown}; the dataset options are {sorted(known - {'_target_'})}")
    missing = [key for key in ("name", "root") if key not in fields_]
    if missing:
        raise ValueError(f"dataset: {missing} must be given (a short name and the folder of the images)")
    plain = {key: list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
             for key, value in fields_.items()}
    hints = typing.get_type_hints(DatasetConfig)
    for key, value in plain.items():
        choices = next((arg for arg in (hints[key], *typing.get_args(hints[key])) if isinstance(arg, type)
                        and issubclass(arg, StrEnum)), None)
        if choices is not None and value is not None:
            if value not in set(choices):
                raise ValueError(f"dataset.{key}: {value!r} is not one of {[str(c) for c in choices]}")
            plain[key] = choices(value)
    return DatasetConfig(**plain)
