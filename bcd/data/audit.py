"""Pre-training audit. audit_files: hash every file once, decode it fully, and collect what is broken or duplicated.
audit_dataset and `python -m bcd.data.audit dataset=...`: the whole dataset's report (counts, sizes, bad files,
exact and near duplicates, label conflicts, colour statistics, a colour-shortcut score, proxy groups).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from bcd.data.colour_features import (
    STAT_NAMES,
    ColourFeatures,
    ShortcutScore,
    colour_features,
    colour_shortcut,
)
from bcd.data.decode import UnreadableImageError, decode_bytes
from bcd.data.near_duplicates import NearPair, near_duplicate_pairs, perceptual_hashes
from bcd.data.proxy_groups import proxy_cluster_sizes, proxy_group_ids
from bcd.data.sources import DatasetError, Sample, load_samples
from bcd.data.splits import split_groups, split_method
from bcd.utils.run import ensure_new_run_dir

log = logging.getLogger(__name__)

__all__ = ["DatasetAudit", "FileAudit", "audit_dataset", "audit_files", "format_bad_files"]


@dataclass(frozen=True)
class FileAudit:
    """Result of checking every file once before training."""

    hashes: dict[Path, str]
    """sha1 hex of the file bytes, for every file that passed the checks (disjoint from `bad`)."""
    bad: dict[Path, str]
    """path -> reason, for files that are missing, unreadable or (with decode=True) undecodable."""

    def duplicate_groups(self) -> list[list[Path]]:
        """Groups (size >= 2) of byte-identical files, each sorted, the list sorted by first path."""
        by_hash: dict[str, list[Path]] = defaultdict(list)
        for path, digest in self.hashes.items():
            by_hash[digest].append(path)
        groups = [sorted(paths) for paths in by_hash.values() if len(paths) >= 2]
        return sorted(groups, key=lambda group: group[0])


def audit_files(
    paths: Sequence[Path],
    decode: bool = True,
    workers: int | None = None,
    progress: bool = False,
    *,
    max_pixels: int | None = 100_000_000,
) -> FileAudit:
    """Hash every file and (optionally) decode it fully, collecting unreadable files with reasons."""
    # dict.fromkeys de-duplicates repeated paths while keeping the caller's order, so results are stable.
    unique = list(dict.fromkeys(Path(p) for p in paths))
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"audit_files: workers must be >= 1, got {workers}; pass None for the default")

    def check(path: Path) -> tuple[str | None, str | None]:
        return _check_file(path, decode=decode, max_pixels=max_pixels)

    hashes: dict[Path, str] = {}
    bad: dict[Path, str] = {}
    with _progress_bar(progress, total=len(unique)) as advance:
        if workers == 1 or len(unique) <= 1:
            results: Iterator[tuple[str | None, str | None]] = map(check, unique)
            for path, (digest, reason) in zip(unique, results, strict=True):
                _record(path, digest, reason, hashes, bad)
                advance()
        else:
            # Threads, not processes: hashlib and PIL's decoders release the GIL on large buffers, and
            # threads avoid pickling file bytes. map() yields in input order, so the dicts are deterministic.
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bcd-audit") as pool:
                for path, (digest, reason) in zip(unique, pool.map(check, unique), strict=True):
                    _record(path, digest, reason, hashes, bad)
                    advance()
    return FileAudit(hashes=hashes, bad=bad)


def format_bad_files(bad: dict[Path, str], limit: int = 20) -> str:
    """A readable multi-line list of bad files and reasons, truncated after `limit` with a count of the rest."""
    if not bad:
        return "No unreadable files."
    items = sorted(bad.items())
    noun = "file" if len(items) == 1 else "files"
    lines = [f"{len(items)} unreadable {noun} (fix or remove them, or exclude them from the split):"]
    lines += [f"  {path}: {reason}" for path, reason in items[: max(limit, 0)]]
    rest = len(items) - max(limit, 0)
    if rest > 0:
        lines.append(f"  ... and {rest} more")
    return "\n".join(lines)


def _check_file(path: Path, decode: bool, max_pixels: int | None) -> tuple[str | None, str | None]:
    """Return (sha1, None) for a good file or (None, reason) for a bad one, reading its bytes once."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "file not found"
    except IsADirectoryError:
        return None, "is a directory, not a file"
    except OSError as e:
        return None, f"cannot read file ({e.strerror or e})"
    digest = hashlib.sha1(data).hexdigest()
    if not data:
        # Checked even without decoding: an empty file is never a usable image and is cheap to spot.
        return None, "empty file (0 bytes)"
    if decode:
        try:
            decode_bytes(data, path, max_pixels=max_pixels)
        except UnreadableImageError as e:
            return None, e.reason
    return digest, None


def _record(
    path: Path, digest: str | None, reason: str | None, hashes: dict[Path, str], bad: dict[Path, str]
) -> None:
    """Store one file's outcome in the matching result dict."""
    if reason is not None:
        bad[path] = reason
    elif digest is not None:
        hashes[path] = digest


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[], None]]:
    """Yield an `advance()` callable: a rich progress bar when enabled, a no-op otherwise."""
    if not enabled:
        yield lambda: None
        return
    # Imported lazily so the audit does not pay rich's import cost when the bar is off.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("Auditing files"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
    ) as bar:
        task = bar.add_task("audit", total=total)
        yield lambda: bar.advance(task)


# ---- the dataset audit: `python -m bcd.data.audit dataset=...` ----


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

    def relative(self, path: Path) -> str:
        """A path as written in the report: relative to the dataset root."""
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)

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
    max_pixels: int | None = 100_000_000,
    shortcut_folds: int = 5,
    shortcut_warn_at: float = 0.25,
    seed: int = 0,
) -> DatasetAudit:
    """Audit a dataset's samples: files, duplicates, colour, the colour shortcut and (proxy_groups=k) proxy groups."""
    files = audit_files([s.path for s in samples], max_pixels=max_pixels)
    good = [replace(s, sha1=files.hashes[s.path]) for s in samples if s.path in files.hashes]
    if not good:
        raise DatasetError(f"dataset.root: {root} holds no readable images\n{format_bad_files(files.bad)}")
    paths = [s.path for s in good]
    bits = perceptual_hashes(paths, max_pixels=max_pixels)
    colour = colour_features(paths, max_pixels=max_pixels)
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


def run_audit(cfg: DictConfig) -> dict[str, Any]:
    """Audit cfg.dataset and write audit.md, audit.json and the PNGs to a new run dir; returns the summary."""
    out = Path(cfg.paths.output_dir).resolve()
    ensure_new_run_dir(out)
    datamodule = instantiate(cfg.dataset)
    root = datamodule.data_root()
    if out.is_relative_to(root):
        raise DatasetError(
            f"paths.log_dir: the run dir {out} is inside dataset.root {root}; bcd never writes inside the dataset "
            "folder. Set paths.log_dir=/somewhere/else"
        )
    samples, class_names = load_samples(datamodule.layout, root, datamodule.classes, datamodule.manifest)
    audit = audit_dataset(
        samples, root, class_names, name=datamodule.name, dedup=datamodule.dedup,
        near_threshold=datamodule.near_threshold,
        proxy_groups=datamodule.proxy_groups if datamodule.groups == "proxy" else None,
        max_pixels=datamodule.max_pixels, shortcut_folds=cfg.shortcut_folds,
        shortcut_warn_at=cfg.shortcut_warn_at, seed=cfg.seed,
    )
    # the report is drawn by bcd.reporting, a layer above data: imported here, where the entry point needs it
    from bcd.reporting.audit_report import write_audit_report

    summary = write_audit_report(out, audit, examples=cfg.examples)
    log.info("audit of %s written to %s", datamodule.name, out)
    return summary


@hydra.main(version_base="1.3", config_path="../../conf", config_name="audit")
def main(cfg: DictConfig) -> None:
    """`python -m bcd.data.audit dataset=... [dataset.near_threshold=6] [dataset.groups=proxy]`."""
    run_audit(cfg)


if __name__ == "__main__":
    main()
