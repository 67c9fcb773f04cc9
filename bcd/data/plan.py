"""The split planner: the one place a split is computed. plan_split reads a dataset config (bcd.data.spec), scans and
audits the files, groups what must stay together (byte-identical files, near-duplicates, the data's or proxy groups),
splits, checks the split and weighs the classes; the SplitPlan it returns is what the datamodule loads, what
bcd.cv folds and what a sweep's trials share (through the manifest SplitPlan.write leaves in a run dir)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from bcd.data.integrity import audit_files, format_bad_files
from bcd.data.proxy_groups import describe_proxy_groups, proxy_group_ids
from bcd.data.reader import ImageReader
from bcd.data.sources import DatasetError, Sample, check_root, check_typo_classes, load_samples, read_manifest
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

log = logging.getLogger(__name__)

TASKS = ("multiclass", "binary")
BINARY_CLASS_NAMES = ["benign", "malignant"]


@dataclass
class SplitPlan:
    """A dataset split into train, val and test, with what the split was made from and what it found."""

    name: str
    data_dir: Path
    task: str
    source_classes: list[str]
    negative_classes: list[str] | None
    samples: list[Sample]
    # one id per sample: samples that must share a split side (duplicates, a group) share an id
    group_ids: list[str]
    proxy_ids: list[str | None] | None
    dedup: str
    # files left out as unreadable (dataset.on_bad_file=skip), with the reason
    bad_files: dict[Path, str] = field(default_factory=dict)
    # groups of byte-identical files found by each split check (bcd.data.splits.SPLIT_CHECKS)
    problems: dict[str, list[list[Sample]]] = field(default_factory=dict)
    fingerprint: str = ""
    # balanced class weights of the training split (scikit-learn's, bcd.data.splits.class_weights)
    class_weights: list[float] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        """Names of the model's classes, in output order (benign/malignant for task=binary)."""
        return BINARY_CLASS_NAMES if self.task == "binary" else self.source_classes

    def target_of(self, label: str) -> int:
        """The training target of a source label (0/1 for task=binary)."""
        if self.task == "binary":
            return int(label not in (self.negative_classes or ()))
        return self.source_classes.index(label)

    def split_samples(self, split: str) -> list[Sample]:
        """The samples of one split."""
        return [s for s in self.samples if s.split == split]

    def targets(self, split: str) -> list[int]:
        """Targets of one split."""
        return [self.target_of(s.label) for s in self.split_samples(split)]

    @property
    def split_method(self) -> str:
        """What the split kept together, to print next to every number (bcd.data.splits.split_method)."""
        return split_method(self.dedup, self.samples, self.proxy_ids)

    def positive_class_indices(self) -> list[int] | None:
        """Indices of the malignant classes among class_names, for sensitivity and specificity."""
        if self.task == "binary":
            return [1]
        if not self.negative_classes:
            return None
        return [i for i, name in enumerate(self.class_names) if name not in self.negative_classes]

    def check_classes(self, expected_classes: Sequence[str] | None) -> None:
        """Refuse data whose classes are not the ones a trained model predicts (in that order)."""
        if expected_classes is not None and self.class_names != list(expected_classes):
            raise DatasetError(
                f"dataset: classes {self.class_names} differ from the checkpoint's {list(expected_classes)}; set "
                "dataset.classes to the checkpoint's classes in the same order, or evaluate a checkpoint trained on "
                "these classes"
            )

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and source class."""
        return split_counts(self.samples, self.source_classes)

    def write(self, output_dir: Path | None) -> None:
        """Leave the plan in a run dir: split_manifest.csv (which reruns, evaluation and sweeps read back) and, when
        files were left out, skipped_files.txt listing them (without a run dir, only the log lists them)."""
        if output_dir is not None:
            write_manifest(Path(output_dir) / "split_manifest.csv", self.samples, self.data_dir)
        if not self.bad_files:
            return
        if output_dir is None:
            log.warning("dataset.on_bad_file=skip, leaving out %s", format_bad_files(self.bad_files, limit=5))
            return
        skipped = Path(output_dir) / "skipped_files.txt"
        skipped.write_text(format_bad_files(self.bad_files, limit=10**9) + "\n")
        log.warning("dataset.on_bad_file=skip: left out %d unreadable file(s); they are listed in %s",
                    len(self.bad_files), skipped)


def data_root(spec: DatasetConfig) -> Path:
    """The folder a dataset's images are read from; for synthetic data it is generated there first."""
    if spec.layout == "synthetic":
        cache_dir = Path(spec.root).expanduser().resolve()
        return ensure_synthetic_dataset(cache_dir, spec.synthetic_images_per_class, spec.synthetic_image_size, seed=0)
    return check_root(spec.root)


def plan_split(spec: DatasetConfig, task: str, seed: int, *, expected_classes: Sequence[str] | None = None,
               fail_on: Sequence[str] = ()) -> SplitPlan:
    """Scan, audit, group and split the dataset `spec` describes (dataset.split_manifest: the recorded split, read
    back and checked against the files). expected_classes: the classes a trained model predicts, which the data must
    have (in that order); fail_on: the split checks (bcd.data.splits.SPLIT_CHECKS) that stop instead of warning."""
    check_options(spec, task)
    root = data_root(spec)
    if spec.split_manifest is not None:
        samples, classes = read_manifest(spec.split_manifest, root, spec.classes, key="dataset.split_manifest")
    else:
        samples, classes = load_samples(spec.layout, root, spec.classes, spec.manifest)
    check_task_classes(spec, classes, task, root)
    plan = SplitPlan(name=spec.name, data_dir=root, task=task, source_classes=classes,
                     negative_classes=list(spec.negative_classes) if spec.negative_classes is not None else None,
                     samples=[], group_ids=[], proxy_ids=None, dedup=spec.dedup)
    plan.check_classes(expected_classes)
    reader = ImageReader(spec.max_pixels)
    audit = audit_files([s.path for s in samples], reader=reader)
    plan.bad_files = audit.bad
    if audit.bad and spec.on_bad_file == "fail":
        raise DatasetError(
            f"{format_bad_files(audit.bad)}\nFix or remove these files, or run with dataset.on_bad_file=skip "
            "to leave them out (the list is then written to the run dir)"
        )
    if spec.split_manifest is not None:
        check_hashes(samples, audit.hashes, key="dataset.split_manifest")
    samples = [replace(s, sha1=audit.hashes[s.path]) for s in samples if s.path not in audit.bad]
    if spec.groups == "proxy":
        # clustered with a fixed seed: the proxy groups describe the data, and must not move with the split seed
        plan.proxy_ids = proxy_group_ids(samples, spec.proxy_groups, reader=reader)
        log.info("dataset %s: %s", spec.name, describe_proxy_groups(plan.proxy_ids))
    plan.group_ids = split_groups(samples, spec.dedup, near_threshold=spec.near_threshold, proxy_ids=plan.proxy_ids,
                                  reader=reader)
    plan.samples = assign_splits(samples, spec.val_fraction, spec.test_fraction, seed, groups=plan.group_ids)
    if spec.classes is None:  # every label became a class: a mistyped one would be a class of its own
        check_typo_classes(plan.samples, classes, f"dataset {spec.name}")
    plan.problems = split_problems(plan.samples)
    check_split_problems(plan.problems, fail_on, root)
    plan.class_weights = class_weights(plan.targets("train"), len(plan.class_names))
    plan.fingerprint = fingerprint(plan.samples, root)
    log.info("dataset %s: %s", spec.name, json.dumps(plan.counts()))
    return plan


def check_options(spec: DatasetConfig, task: str) -> None:
    """The options a plan needs, checked before any file is read."""
    if task not in TASKS:
        raise DatasetError(f"task.name: {task!r} is not one of {list(TASKS)}")
    if spec.batch_size < 1:
        raise DatasetError(f"dataset.batch_size: {spec.batch_size} must be >= 1")


def check_task_classes(spec: DatasetConfig, classes: Sequence[str], task: str, root: Path) -> None:
    """Every task needs two classes or more; task=binary needs dataset.negative_classes among them."""
    if len(classes) < 2:
        source = spec.split_manifest or (spec.manifest if spec.layout == "manifest" else root)
        found = f"only one class ({classes[0]!r})" if classes else "no class"
        raise DatasetError(
            f"dataset: found {found} in {source}; a classifier needs at least two classes: point dataset.root "
            "(or dataset.manifest) at the whole dataset, or list two or more classes in dataset.classes"
        )
    if task != "binary":
        return
    negative = list(spec.negative_classes or ())
    if not negative:
        raise DatasetError(
            "dataset.negative_classes: task=binary needs the benign classes, e.g. "
            "dataset.negative_classes=[Benign]; every other class counts as malignant"
        )
    unknown = sorted(set(negative) - set(classes))
    if unknown or set(negative) == set(classes):
        raise DatasetError(f"dataset.negative_classes: {negative} must be a proper subset of the classes {list(classes)}")
