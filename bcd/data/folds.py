"""K-fold cross-validation splits: stratified folds that keep every group whole, and one manifest per fold."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from bcd.data.sources import DatasetError, Sample
from bcd.data.splits import assign_splits, write_manifest


def assign_folds(labels: Sequence[str], groups: Sequence[str], n_folds: int, seed: int) -> np.ndarray:
    """The fold (0 .. n_folds-1) of every sample: stratified by label, each group entirely in one fold."""
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise DatasetError(f"folds: {n_folds!r} must be an integer >= 2, e.g. folds=5")
    n_groups = len(set(groups))
    if n_groups < n_folds:
        raise DatasetError(
            f"folds: {n_folds} folds need at least {n_folds} independent images/groups, the data has "
            f"{n_groups}; choose folds<={n_groups} or add images"
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(labels), -1, dtype=int)
    for fold, (_, held) in enumerate(
        splitter.split(np.zeros(len(labels)), np.asarray(labels), np.asarray(groups))
    ):
        folds[held] = fold
    return folds


def fold_split(
    samples: Sequence[Sample],
    folds: Sequence[int],
    fold: int,
    val_fraction: float,
    seed: int,
    groups: Sequence[str],
) -> list[Sample]:
    """The samples with `fold` as test and the other folds as train, a grouped val carved out of train."""
    preset = [replace(s, split="test" if f == fold else "train") for s, f in zip(samples, folds, strict=True)]
    return assign_splits(preset, val_fraction, 0.0, seed, groups=groups)


def write_folds(
    path: Path, samples: Sequence[Sample], folds: Sequence[int], groups: Sequence[str], root: Path
) -> None:
    """folds.csv: the split manifest's columns (group: the group id the folds kept whole) and a fold column."""
    scratch = _scratch(path)
    write_manifest(
        scratch, [replace(s, group=g, split=None) for s, g in zip(samples, groups, strict=True)], root
    )
    with scratch.open(newline="") as handle:
        header, *rows = list(csv.reader(handle))
    with scratch.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*header, "fold"])
        writer.writerows([*row, int(fold)] for row, fold in zip(rows, folds, strict=True))
    os.replace(scratch, path)


def read_folds(path: Path) -> list[int]:
    """The fold column of a folds.csv, in row order."""
    with path.open(newline="") as handle:
        return [int(row["fold"]) for row in csv.DictReader(handle)]


def write_fold_manifests(
    out_dir: Path,
    samples: Sequence[Sample],
    folds: Sequence[int],
    groups: Sequence[str],
    root: Path,
    val_fraction: float,
    seed: int,
) -> list[Path]:
    """out_dir/fold_<i>.csv for every fold: a split manifest (dataset.split_manifest) with fold i as test.

    The group column holds the group ids the folds were built with, so a fold's run keeps them too."""
    out_dir.mkdir(parents=True, exist_ok=True)
    grouped = [replace(s, group=g) for s, g in zip(samples, groups, strict=True)]
    paths = []
    for fold in range(max(folds) + 1):
        path = out_dir / f"fold_{fold}.csv"
        scratch = _scratch(path)
        write_manifest(scratch, fold_split(grouped, folds, fold, val_fraction, seed, groups), root)
        os.replace(scratch, path)
        paths.append(path)
    return paths


def _scratch(path: Path) -> Path:
    """A hidden file beside path to write first and then move into place, so no reader sees half a file."""
    return path.with_name(f".{path.name}.{os.getpid()}")


def write_manifest_without(folds_csv: Path, root: Path, excluded: set[str], path: Path) -> int:
    """A manifest (path,label,group; paths relative to root) of the folds.csv rows whose image is not in `excluded`
    (absolute paths), for a re-run without them; returns how many rows it left out. The dataset is not touched."""
    with folds_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = [row for row in rows if str((root / row["path"]).resolve()) not in excluded]
    with path.open("x", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group"])
        writer.writerows([row["path"], row["label"], row["group"]] for row in kept)
    return len(rows) - len(kept)
