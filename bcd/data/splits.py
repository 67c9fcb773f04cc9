"""Duplicate- and group-aware stratified train/val/test splits, and the split manifest that records them."""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils.class_weight import compute_class_weight

from bcd.data.near_duplicates import near_duplicate_pairs, perceptual_hashes
from bcd.data.reader import DEFAULT_READER, ImageReader
from bcd.data.sources import SPLITS, DatasetError, Sample, relative_name
from bcd.data.spec import Dedup

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("path", "label", "group", "split", "sha1")


DEDUP_MODES = tuple(str(mode) for mode in Dedup)


def split_groups(
    samples: Sequence[Sample],
    dedup: str,
    *,
    near_threshold: int = 6,
    proxy_ids: Sequence[str | None] | None = None,
    hash_bits: np.ndarray | None = None,
    reader: ImageReader = DEFAULT_READER,
) -> list[str]:
    """One group id per sample; samples that must share a split side share an id: rows of one `group`, of one
    proxy group (proxy_ids), byte-identical files (dedup=exact|near) and near-duplicates (dedup=near: perceptual
    hashes at most near_threshold bits apart; hash_bits: the samples' perceptual_hashes, computed when not given)."""
    if dedup not in DEDUP_MODES:
        raise DatasetError(f"dataset.dedup: {dedup!r} is not one of {list(DEDUP_MODES)}")
    edges = _shared_key_edges([s.group for s in samples])
    if proxy_ids is not None:
        edges += _shared_key_edges(proxy_ids)
    if dedup in ("exact", "near"):
        edges += _shared_key_edges([s.sha1 for s in samples])
    if dedup == "near":
        bits = perceptual_hashes([s.path for s in samples], reader) if hash_bits is None else hash_bits
        edges += [(pair.first, pair.second) for pair in near_duplicate_pairs(bits, near_threshold)]
    return [f"g{component}" for component in connected_groups(len(samples), edges)]


def split_method(dedup: str, samples: Sequence[Sample], proxy_ids: Sequence[str | None] | None) -> str:
    """What a split by split_groups kept together: image-level, exact-dedup, near-dedup, proxy-group (acquisition
    clusters standing in for patients; real groups win where a sample has one) or real-group (the manifest's)."""
    if proxy_ids is not None and any(proxy is not None for proxy in proxy_ids):
        return "proxy-group"
    if any(s.group is not None for s in samples):
        return "real-group"
    return {"none": "image-level", "exact": "exact-dedup", "near": "near-dedup"}[dedup]


def _shared_key_edges(keys: Sequence[str | None]) -> list[tuple[int, int]]:
    """Edges that join every row to the first row with the same key (None joins nothing)."""
    first: dict[str, int] = {}
    edges = []
    for i, key in enumerate(keys):
        if key is not None:
            edges.append((first.setdefault(key, i), i))
    return edges


def connected_groups(n: int, edges: Sequence[tuple[int, int]]) -> list[int]:
    """The connected component of each of n items joined by edges, numbered in order of first appearance."""
    rows, cols = (list(side) for side in zip(*edges, strict=True)) if edges else ([], [])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1].tolist()


def _holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a stratified, group-respecting held-out part of about `fraction` of the rows."""
    n_splits = max(2, round(1.0 / fraction))
    per_class = {label: int((labels == label).sum()) for label in sorted(set(labels.tolist()))}
    if len(set(groups)) < n_splits or max(per_class.values()) < n_splits:
        # scikit-learn stratifies by cutting the rows into n_splits folds: it needs that many independent images (or
        # groups) in all, and that many images in at least one class
        counts = ", ".join(f"{label} {count}" for label, count in per_class.items())
        raise DatasetError(
            f"dataset: too few images to hold out {fraction:.0%} of each class (images per class: {counts}; "
            f"{len(set(groups))} independent images or groups in all; a stratified hold-out of {fraction:.0%} needs "
            f"{n_splits} of them, and {n_splits} images in a class). Add "
            "images, set dataset.val_fraction=0 / dataset.test_fraction=0, or give the split yourself (a pre-split "
            "folder with dataset.layout=presplit, or a manifest's split column)"
        )
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held = next(folds.split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def assign_splits(
    samples: Sequence[Sample],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    dedup: str = "exact",
    groups: Sequence[str] | None = None,
) -> list[Sample]:
    """Give every sample a split, keeping each group on one side (groups: one id per sample, by default
    split_groups(samples, dedup)); splits already set (pre-split folders, a manifest) are kept as they are."""
    for key, value in (("dataset.val_fraction", val_fraction), ("dataset.test_fraction", test_fraction)):
        if not 0.0 <= value < 0.5:
            raise DatasetError(f"{key}: {value} must be in [0, 0.5)")
    labels = np.array([s.label for s in samples])
    groups = np.array(split_groups(samples, dedup) if groups is None else list(groups))
    splits = np.array([s.split or "" for s in samples], dtype=object)
    if not splits.all():
        splits[:] = "train"
        if test_fraction > 0:
            splits[_holdout(labels, groups, test_fraction, seed)] = "test"
    if val_fraction > 0 and "val" not in splits:
        train = np.flatnonzero(splits == "train")
        # val is a fraction of the whole dataset, so carve a larger share out of what is left for training
        share = val_fraction / (1.0 - (splits == "test").mean())
        splits[train[_holdout(labels[train], groups[train], share, seed + 1)]] = "val"
    _warn_missing_classes(labels, splits)
    return [replace(s, split=str(split)) for s, split in zip(samples, splits, strict=True)]


def _warn_missing_classes(labels: np.ndarray, splits: np.ndarray) -> None:
    """Warn when a split lacks a class: a few large groups (e.g. coarse proxy groups) defeat stratification."""
    for split in sorted(set(splits.tolist())):
        missing = sorted(set(labels.tolist()) - set(labels[splits == split].tolist()))
        if missing:
            log.warning(
                "the %s split has no images of class(es) %s: its groups are too few or too large to stratify; "
                "with dataset.groups=proxy raise dataset.proxy_groups, or lower the split fractions", split, missing
            )


# the cheap audit checks a training run makes on its own data (audit.fail_on names them)
SPLIT_CHECKS = {
    "label_conflicts": "byte-identical files with different labels",
    "duplicates_across_splits": "byte-identical files on more than one side of the split (test images leak into "
                                "training)",
}


def split_problems(samples: Sequence[Sample]) -> dict[str, list[list[Sample]]]:
    """The groups of byte-identical samples (by sha1) that break a SPLIT_CHECKS rule, per check."""
    by_content: dict[str, list[Sample]] = {}
    for sample in samples:
        if sample.sha1:
            by_content.setdefault(sample.sha1, []).append(sample)
    copies = [group for group in by_content.values() if len(group) > 1]
    return {"label_conflicts": [g for g in copies if len({s.label for s in g}) > 1],
            "duplicates_across_splits": [g for g in copies if len({s.split for s in g}) > 1]}


def check_split_problems(problems: dict[str, list[list[Sample]]], fail_on: Sequence[str], root: Path) -> None:
    """Refuse to go on when a check named in audit.fail_on found something (naming the files); warn otherwise."""
    for check, groups in problems.items():
        if not groups:
            continue
        shown = "\n".join("  " + ", ".join(f"{relative_name(s.path, root)} ({s.label}, {s.split})" for s in group)
                          for group in groups[:10])
        more = f"\n  ... and {len(groups) - 10} more" if len(groups) > 10 else ""
        message = f"dataset: {len(groups)} group(s) of {SPLIT_CHECKS[check]}:\n{shown}{more}"
        if check in fail_on:
            raise DatasetError(f"{message}\naudit.fail_on holds {check}: fix the files (or the split), or drop it "
                               "from audit.fail_on to train with a warning")
        log.warning("%s\n(audit.fail_on=[%s] would refuse to train)", message, check)


def class_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """Inverse-frequency weights n / (C * n_c) from the given (training) labels (scikit-learn's "balanced"
    compute_class_weight); every class must occur."""
    labels = np.asarray(labels, dtype=int)
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise DatasetError(f"dataset: class index(es) {missing} have no training images; add images or classes")
    return compute_class_weight("balanced", classes=np.arange(num_classes), y=labels).astype(float).tolist()


def write_manifest(path: Path, samples: Sequence[Sample], root: Path) -> None:
    """Write the split manifest CSV (paths relative to root) that dataset.split_manifest reads back."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for s in samples:
            writer.writerow([relative_name(s.path, root), s.label, s.group or "", s.split or "", s.sha1 or ""])


def check_hashes(samples: Sequence[Sample], hashes: dict[Path, str], key: str) -> None:
    """Fail when a file's content differs from the sha1 recorded in a reused manifest."""
    changed = [str(s.path) for s in samples if s.sha1 and hashes.get(s.path) not in (None, s.sha1)]
    if changed:
        raise DatasetError(
            f"{key}: {len(changed)} file(s) changed since the manifest was written, e.g. {changed[:3]}; "
            "the split would not be the recorded one. Restore the files or drop the manifest"
        )


def fingerprint(samples: Sequence[Sample], root: Path) -> str:
    """A short hash of (relative path, label, content) over all samples: same data, same fingerprint."""
    digest = hashlib.sha1()
    for s in sorted(samples, key=lambda s: str(s.path)):
        digest.update(f"{relative_name(s.path, root)}\t{s.label}\t{s.sha1}\n".encode())
    return digest.hexdigest()[:16]


def split_counts(samples: Sequence[Sample], class_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Images per split and class, for logs and summary.json."""
    counts = {split: dict.fromkeys(class_names, 0) for split in SPLITS}
    for s in samples:
        counts[s.split][s.label] += 1
    return counts
