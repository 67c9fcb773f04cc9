"""The dataset audit: counts, sizes, bad files, exact and near duplicates, label conflicts, colour statistics, a
colour-shortcut score and proxy groups, for `python -m bcd.audit`."""


from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bcd.data.colour_features import (
    STAT_NAMES,
    ColourFeatures,
    ShortcutScore,
    colour_features,
    colour_shortcut,
)
from bcd.data.integrity import FileAudit, audit_files, format_bad_files
from bcd.data.near_duplicates import NearPair, near_duplicate_pairs, perceptual_hashes
from bcd.data.proxy_groups import proxy_cluster_sizes, proxy_group_ids
from bcd.data.reader import DEFAULT_READER, ImageReader
from bcd.data.sources import DatasetError, Sample, relative_name
from bcd.data.splits import split_groups, split_method
from bcd.evaluation.annotation_marks import WARN_MARGIN, AnnotationAudit, annotation_audit


@dataclass(frozen=True)
class DatasetAudit:
    """Everything the dataset audit found; `summary()` is what audit.json holds."""

    name: str
    root: Path
    class_names: list[str]
    samples: list[Sample]
    """the readable images, with their sha1"""
    files: FileAudit
    other_files: list[Path]
    """files under the root that were not read (no image extension)"""
    headers: list[tuple[int, int, str, str]]
    """(width, height, mode, format) of every sample"""
    near_pairs: list[NearPair]
    """pairs of samples at most near_threshold hash bits apart, byte-identical pairs included"""
    near_threshold: int
    colour: ColourFeatures
    shortcut: ShortcutScore
    shortcut_warn_at: float
    dedup: str
    group_ids: list[str]
    proxy_ids: list[str | None] | None
    annotations: AnnotationAudit

    def relative(self, path: Path) -> str:
        """A path as written in the report: relative to the dataset root."""
        return relative_name(path, self.root)

    def exact_groups(self) -> list[list[int]]:
        """Groups (size >= 2) of byte-identical samples, as indices into samples."""
        index = {s.path: i for i, s in enumerate(self.samples)}
        return [[index[p] for p in group] for group in self.files.duplicate_groups() if group[0] in index]

    def near_only_pairs(self) -> list[NearPair]:
        """Near-duplicate pairs that are not byte-identical."""
        return [p for p in self.near_pairs if self.samples[p.first].sha1 != self.samples[p.second].sha1]

    def label_conflicts(self) -> list[list[int]]:
        """Exact-duplicate groups and near-duplicate pairs whose labels disagree (indices into samples)."""
        candidates = self.exact_groups() + [[p.first, p.second] for p in self.near_only_pairs()]
        return [group for group in candidates if len({self.samples[i].label for i in group}) > 1]

    def shortcut_warning(self) -> bool:
        """True when colour alone predicts the class well above chance."""
        return self.shortcut.above_chance() >= self.shortcut_warn_at

    def summary(self) -> dict[str, Any]:
        """The audit as plain data (paths relative to the root), for audit.json and the report."""
        described = [
            [{"path": self.relative(self.samples[i].path), "label": self.samples[i].label} for i in group]
            for group in self.exact_groups()
        ]
        return {
            "dataset": {"name": self.name, "root": str(self.root), "classes": self.class_names},
            "counts": {name: sum(s.label == name for s in self.samples) for name in self.class_names},
            "readable_images": len(self.samples),
            "sizes": dict(Counter(f"{w}x{h}" for w, h, _, _ in self.headers).most_common()),
            "modes": dict(Counter(mode for _, _, mode, _ in self.headers).most_common()),
            "formats": dict(Counter(fmt for _, _, _, fmt in self.headers).most_common()),
            "bad_files": {self.relative(p): reason for p, reason in sorted(self.files.bad.items())},
            "other_files": [self.relative(p) for p in self.other_files],
            "exact_duplicates": {"groups": len(described), "list": described},
            "near_duplicates": {
                "threshold_bits": self.near_threshold,
                "pairs_including_exact": len(self.near_pairs),
                "pairs_not_exact": [self._pair(p) for p in self.near_only_pairs()],
            },
            "label_conflicts": [
                [{"path": self.relative(self.samples[i].path), "label": self.samples[i].label} for i in group]
                for group in self.label_conflicts()
            ],
            "colour": self._colour_by_class(),
            "colour_shortcut": {
                **asdict(self.shortcut),
                "above_chance": self.shortcut.above_chance(),
                "warn_at": self.shortcut_warn_at,
                "warning": self.shortcut_warning(),
            },
            "annotation_marks": self.annotations.summary([s.label for s in self.samples], self.class_names,
                                                         [self.relative(s.path) for s in self.samples]),
            "split_grouping": {
                "dedup": self.dedup,
                "split_method": split_method(self.dedup, self.samples, self.proxy_ids),
                "independent_groups": len(set(self.group_ids)),
                "proxy_cluster_sizes": proxy_cluster_sizes(self.proxy_ids) if self.proxy_ids else None,
            },
        }

    def _pair(self, pair: NearPair) -> dict[str, Any]:
        first, second = self.samples[pair.first], self.samples[pair.second]
        return {
            "paths": [self.relative(first.path), self.relative(second.path)],
            "labels": [first.label, second.label],
            "distance_bits": pair.distance,
        }

    def _colour_by_class(self) -> dict[str, dict[str, dict[str, float]]]:
        """Mean and std of every colour statistic, per class."""
        labels = np.array([s.label for s in self.samples])
        table = {}
        for name in self.class_names:
            rows = self.colour.stats[labels == name]
            if len(rows):
                table[name] = {
                    stat: {"mean": float(rows[:, k].mean()), "std": float(rows[:, k].std())}
                    for k, stat in enumerate(STAT_NAMES)
                }
        return table


def audit_dataset(
    samples: Sequence[Sample],
    root: Path,
    class_names: Sequence[str],
    *,
    name: str = "",
    dedup: str = "exact",
    near_threshold: int = 6,
    proxy_groups: int | None = None,
    reader: ImageReader = DEFAULT_READER,
    shortcut_folds: int = 5,
    shortcut_warn_at: float = 0.25,
    annotation_warn_margin: float = WARN_MARGIN,
    seed: int = 0,
) -> DatasetAudit:
    """Audit a dataset's samples: files, duplicates, colour, the colour shortcut and (proxy_groups=k) proxy groups."""
    files = audit_files([s.path for s in samples], reader=reader)
    good = [replace(s, sha1=files.hashes[s.path]) for s in samples if s.path in files.hashes]
    if not good:
        raise DatasetError(f"dataset.root: {root} holds no readable images\n{format_bad_files(files.bad)}")
    paths = [s.path for s in good]
    bits = perceptual_hashes(paths, reader)
    colour = colour_features(paths, reader)
    proxy_ids = (
        proxy_group_ids(good, proxy_groups, features=colour.acquisition()) if proxy_groups is not None else None
    )
    group_ids = split_groups(good, dedup, near_threshold=near_threshold, proxy_ids=proxy_ids, hash_bits=bits)
    return DatasetAudit(
        name=name,
        root=root,
        class_names=list(class_names),
        samples=good,
        files=files,
        other_files=_other_files(root, samples),
        headers=[_header(p) for p in paths],
        near_pairs=near_duplicate_pairs(bits, near_threshold),
        near_threshold=near_threshold,
        colour=colour,
        shortcut=colour_shortcut(colour.histograms, [s.label for s in good], group_ids, shortcut_folds, seed),
        shortcut_warn_at=shortcut_warn_at,
        dedup=dedup,
        group_ids=group_ids,
        proxy_ids=proxy_ids,
        annotations=annotation_audit(paths, [s.label for s in good], group_ids, shortcut_folds, seed, reader,
                                     annotation_warn_margin),
    )


def _header(path: Path) -> tuple[int, int, str, str]:
    """(width, height, mode, format) from the file header, as stored (before any conversion to RGB)."""
    with Image.open(path) as image:
        return image.width, image.height, image.mode, image.format or "?"


def _other_files(root: Path, samples: Sequence[Sample]) -> list[Path]:
    """Visible files under root that are not samples (wrong extension, stray documents)."""
    read = {s.path for s in samples}
    hidden = lambda p: any(part.startswith(".") for part in p.relative_to(root).parts)  # noqa: E731
    return sorted(p for p in root.rglob("*") if p.is_file() and p not in read and not hidden(p))
