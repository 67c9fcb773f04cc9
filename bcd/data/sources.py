"""Where samples come from: class folders, pre-split folders or a CSV manifest, read into one table."""

from __future__ import annotations

import csv
import difflib
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcd.data.decode import IMAGE_EXTENSIONS
from bcd.data.spec import Layout

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
LAYOUTS = tuple(str(layout) for layout in Layout)
# A manifest label is taken for a typo of another when it has at most TYPO_SHARE as many rows as that label and
# difflib rates the two spellings at least TYPO_SIMILARITY alike ('Benjgn' vs 'Benign': 0.83; 'Pre' vs 'Pro': 0.67).
# A genuinely rare class with a close name is kept by listing it in dataset.classes, which skips this guess.
TYPO_SHARE = 0.1
TYPO_SIMILARITY = 0.8
# A label one edit away from a more common one (a letter added, dropped or changed: 'Benignn', 'Benin') is also taken
# for a typo when it has fewer rows than this, or when it has half the rows of that label or fewer and the split
# leaves it no val or test image.
TYPO_HANDFUL = 5


class DatasetError(ValueError):
    """A problem with the dataset a user pointed us at; the message names the config key and the fix."""


@dataclass(frozen=True)
class Sample:
    """One image: its absolute path, its class label, and optionally a group (patient, slide) and a split."""

    path: Path
    label: str
    group: str | None = None
    split: str | None = None
    sha1: str | None = None


def check_root(root: str | Path) -> Path:
    """Return dataset.root as an absolute path, or fail with a message saying how to set it."""
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DatasetError(
            f"dataset.root: {path} does not exist or is not a folder; set dataset.root=/path/to/images "
            "or run with dataset=synthetic"
        )
    return path


def relative_name(path: Path, root: Path) -> str:
    """A path as bcd writes it in manifests and reports: relative to root (with '/') when inside it, else whole."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def list_images(folder: Path) -> list[Path]:
    """Every file under folder (recursively) with an image extension, sorted; symbolic links that lead nowhere
    (broken, looping) are listed too, so reading them reports them instead of dropping them unnoticed."""
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and (p.is_file() or (p.is_symlink() and not p.exists()))
    )


def resolve_classes(found: Sequence[str], classes: Sequence[str] | None, where: Path) -> list[str]:
    """The class order of the run: dataset.classes when given (all must exist), else the sorted folder names."""
    if classes is None:
        if not found:
            raise DatasetError(
                f"dataset.root: {where} has no class subfolders; expected <root>/<class name>/<images>"
            )
        return sorted(found)
    missing = [name for name in classes if name not in found]
    if missing:
        raise DatasetError(
            f"dataset.root: {where} has no folder for class(es) {missing} (found: {sorted(found)}); point "
            "dataset.root at the folder that holds the class folders (for the Kaggle ALL release, its "
            "Original/ folder) or set dataset.classes=[...]"
        )
    ignored = sorted(set(found) - set(classes))
    if ignored:
        log.warning("dataset.root: ignoring folders that are not in dataset.classes: %s", ignored)
    return list(classes)


def scan_class_folders(root: Path, classes: Sequence[str] | None, split: str | None = None) -> tuple[
    list[Sample], list[str]
]:
    """Samples from <root>/<class>/*, one label per class folder; an empty class folder is an error."""
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_names = resolve_classes(found, classes, root)
    samples: list[Sample] = []
    for name in class_names:
        images = list_images(root / name)
        if not images:
            raise DatasetError(
                f"dataset.root: class folder {root / name} holds no images ({sorted(IMAGE_EXTENSIONS)}); "
                "add images, remove the folder, or leave the class out of dataset.classes"
            )
        samples.extend(Sample(path=p, label=name, split=split) for p in images)
    return samples, class_names


def scan_presplit(root: Path, classes: Sequence[str] | None) -> tuple[list[Sample], list[str]]:
    """Samples from <root>/{train,val,test}/<class>/*; classes come from train/ when not configured."""
    present = [s for s in SPLITS if (root / s).is_dir()]
    if "train" not in present:
        raise DatasetError(
            f"dataset.root: {root} has no train/ folder, which dataset.layout=presplit needs "
            "(<root>/train/<class>/..., optional val/ and test/); use dataset.layout=folder for one folder of classes"
        )
    samples, class_names = scan_class_folders(root / "train", classes, split="train")
    for split in present[1:]:
        split_samples, _ = scan_class_folders(root / split, class_names, split=split)
        samples.extend(split_samples)
    return samples, class_names


def read_manifest(csv_path: str | Path, root: Path, classes: Sequence[str] | None, key: str = "dataset.manifest") -> tuple[
    list[Sample], list[str]
]:
    """Samples from a CSV with columns path,label[,group][,split][,sha1]; paths are relative to root."""
    csv_path = Path(csv_path).expanduser().resolve()
    where = f"{key}: {csv_path}"
    rows = _read_rows(csv_path, where)
    if classes is None:
        # without dataset.classes every label becomes a class, so a misspelt label would silently add one
        _check_labels(rows, where)
    class_names = list(classes) if classes is not None else sorted({row["label"] for row in rows.values()})
    samples, problems = [], []
    for line, row in rows.items():
        sample, problem = _manifest_row(row, root, class_names)
        if problem:
            problems.append(f"  line {line}: {problem}")
        else:
            samples.append(sample)
    if problems:
        raise DatasetError(f"{where} has {len(problems)} bad row(s):\n{_first(problems)}")
    _check_duplicate_paths(rows, root, where)
    with_split = sum(s.split is not None for s in samples)
    if 0 < with_split < len(samples):
        raise DatasetError(f"{where}: fill the split column for every row or for none")
    return samples, class_names


def _read_rows(csv_path: Path, where: str) -> dict[int, dict[str, str]]:
    """The manifest's rows by the CSV line number they end on; fails on a missing file, columns or rows."""
    if not csv_path.is_file():
        raise DatasetError(f"{where} does not exist; pass the CSV file with path,label columns")
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "path" not in columns or "label" not in columns:
            raise DatasetError(f"{where} needs columns path and label (found: {columns})")
        rows: dict[int, dict[str, str]] = {}
        for row in reader:  # line_num counts physical lines, so blank lines and quoted newlines keep numbers right
            rows[reader.line_num] = row
    if not rows:
        raise DatasetError(f"{where} has no rows")
    return rows


def _check_labels(rows: dict[int, dict[str, str]], where: str) -> None:
    """Refuse labels that differ only in case, or that look like a typo of a far more common label."""
    lines = _lines_by(rows, lambda row: row["label"])
    _check_case_variants(lines, where)
    typos = [_typo(label, lines) for label in sorted(lines)]
    if any(typos):
        raise DatasetError(
            f"{where} has labels that look like typos:\n" + "\n".join(t for t in typos if t)
            + f"\nfix the labels, or set dataset.classes=[{','.join(sorted(lines))}] if they are real classes"
        )


def _check_case_variants(lines: dict[str, list[int]], where: str) -> None:
    """Refuse labels that differ only in case ('benign', 'Benign'), naming the lines of each spelling."""
    by_case: dict[str, list[str]] = defaultdict(list)
    for label in sorted(lines):
        by_case[label.casefold()].append(label)
    variants = [spellings for spellings in by_case.values() if len(spellings) > 1]
    if variants:
        listed = ["  " + " and ".join(f"{label!r} ({_line_list(lines[label])})" for label in group) for group in variants]
        raise DatasetError(
            f"{where} has labels that differ only in case, which would become separate classes:\n"
            + "\n".join(listed) + "\nuse one spelling for every row of a class (labels are case-sensitive)"
        )


def one_edit_apart(a: str, b: str) -> bool:
    """Whether two different labels differ by one letter added, dropped or changed (Levenshtein distance 1)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    start = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))
    return a[start + (len(a) == len(b)):] == b[start + 1:]


def _typo(label: str, lines: dict[str, list[int]]) -> str:
    """A line describing `label` as a likely typo of a far more common label (see TYPO_SHARE), or of a more common
    label one edit away when it has fewer than TYPO_HANDFUL rows; else ''."""
    count = len(lines[label])
    common = [other for other, rows in lines.items() if count <= TYPO_SHARE * len(rows)]
    match = difflib.get_close_matches(label, common, n=1, cutoff=TYPO_SIMILARITY) or [
        other for other, rows in lines.items()
        if count < TYPO_HANDFUL and len(rows) > count and one_edit_apart(label, other)][:1]
    if not match:
        return ""
    return (
        f"  label {label!r} ({_line_list(lines[label])}) has {count} row(s) against {len(lines[match[0]])} of "
        f"{match[0]!r}: did you mean {match[0]!r}?"
    )


def check_typo_classes(samples: Sequence[Sample], classes: Sequence[str], where: str) -> None:
    """After the split: refuse a class that has no val or test image and is one edit away from a class at least twice
    its size (it would train a class no test can score: most likely a mistyped label); dataset.classes listing it
    skips this. (Classes of similar size one letter apart, like Pre and Pro, are not suspects.)"""
    found, present = [], {s.split for s in samples}
    sizes = {label: sum(s.label == label for s in samples) for label in classes}
    for label in classes:
        own = [s for s in samples if s.label == label]
        missing = [split for split in ("val", "test") if split in present and not any(s.split == split for s in own)]
        neighbours = [other for other in classes if one_edit_apart(label, other) and sizes[other] >= 2 * sizes[label]]
        if missing and neighbours and own:
            listed = ", ".join(str(s.path) for s in own[:5]) + (f" and {len(own) - 5} more" if len(own) > 5 else "")
            found.append(f"  class {label!r} ({len(own)} image(s): {listed}) has no {' or '.join(missing)} image and is "
                         f"one letter away from {neighbours[0]!r}")
    if found:
        raise DatasetError(f"{where}: labels that look like typos:\n" + "\n".join(found)
                           + f"\nfix the labels, or set dataset.classes=[{','.join(classes)}] if they are real classes")


def _check_duplicate_paths(rows: dict[int, dict[str, str]], root: Path, where: str) -> None:
    """Refuse an image listed in more than one row: it would be counted (and scored) more than once."""
    lines = _lines_by(rows, lambda row: (root / row["path"]).resolve())
    repeated = {path: found for path, found in lines.items() if len(found) > 1}
    if not repeated:
        return
    listed = [
        f"  {rows[found[0]]['path']} ({_line_list(found)}, labels {sorted({rows[n]['label'] for n in found})})"
        for found in repeated.values()
    ]
    raise DatasetError(
        f"{where} lists {len(repeated)} image(s) in more than one row:\n{_first(listed)}\n"
        "keep one row per image, with its correct label"
    )


def _lines_by(rows: dict[int, dict[str, str]], key: Callable[[dict[str, str]], Any]) -> dict[Any, list[int]]:
    """The line numbers of the rows, grouped by key(row)."""
    grouped: dict[Any, list[int]] = defaultdict(list)
    for line, row in rows.items():
        grouped[key(row)].append(line)
    return grouped


def _first(lines: list[str], limit: int = 20) -> str:
    """The first `limit` lines joined, with a count of the rest."""
    return "\n".join(lines[:limit]) + (f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else "")


def _line_list(lines: list[int], limit: int = 10) -> str:
    """'line 7' or 'lines 2, 3, 9', cut after `limit` numbers with a count of the rest."""
    if len(lines) == 1:
        return f"line {lines[0]}"
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return "lines " + ", ".join(map(str, lines[:limit])) + more


def _manifest_row(row: dict[str, str], root: Path, class_names: Sequence[str]) -> tuple[Sample | None, str]:
    """Check one manifest row; return the sample or a description of what is wrong with it."""
    label = row["label"]
    if label not in class_names:
        return None, f"unknown class {label!r} (classes: {list(class_names)}); fix the label or dataset.classes"
    path = (root / row["path"]).resolve()
    if not path.is_relative_to(root):
        return None, f"path {row['path']!r} is outside dataset.root {root}"
    if not path.is_file():
        return None, f"file {path} does not exist"
    split = (row.get("split") or "").strip() or None
    if split is not None and split not in SPLITS:
        return None, f"split {split!r} is not one of {SPLITS}"
    group = (row.get("group") or "").strip() or None
    sha1 = (row.get("sha1") or "").strip() or None
    return Sample(path=path, label=label, group=group, split=split, sha1=sha1), ""


def load_samples(layout: str, root: Path, classes: Sequence[str] | None, manifest: str | None) -> tuple[
    list[Sample], list[str]
]:
    """Read the sample table for dataset.layout (synthetic data is read as a folder once generated)."""
    if layout in ("folder", "synthetic"):
        return scan_class_folders(root, classes)
    if layout == "presplit":
        return scan_presplit(root, classes)
    if layout == "manifest":
        if manifest is None:
            raise DatasetError("dataset.manifest: not set; dataset.layout=manifest needs the CSV file")
        return read_manifest(manifest, root, classes)
    raise DatasetError(f"dataset.layout: {layout!r} is not one of {LAYOUTS}")


INPUTS_HINT = "set inputs=<an image file, a folder of images, or a CSV with a path column>"


def list_inputs(inputs: str | Path) -> list[Path]:
    """The image paths `inputs` names: one image file, every image under a folder, or a CSV's path column."""
    source = Path(str(inputs)).expanduser().resolve()
    if not source.exists():
        raise FileNotFoundError(f"inputs: {source} does not exist; {INPUTS_HINT}")
    if source.is_dir():
        paths = list_images(source)
        if not paths:
            raise ValueError(
                f"inputs: {source} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}, searched recursively); "
                f"{INPUTS_HINT}"
            )
        return paths
    if source.suffix.lower() == ".csv":
        return csv_paths(source)
    return [source]


def csv_paths(csv_file: Path) -> list[Path]:
    """The `path` column of a CSV, relative paths taken relative to the CSV's folder."""
    with csv_file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if "path" not in (reader.fieldnames or []):
            raise ValueError(
                f"inputs: {csv_file} has no 'path' column (columns: {reader.fieldnames or 'none'}); add a header "
                "row with a path column listing one image per row"
            )
        paths = [csv_file.parent / row["path"].strip() for row in reader if (row["path"] or "").strip()]
    if not paths:
        raise ValueError(f"inputs: {csv_file} lists no images in its path column; {INPUTS_HINT}")
    return paths
