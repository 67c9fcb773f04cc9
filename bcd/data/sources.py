"""Where samples come from: class folders, pre-split folders or a CSV manifest, read into one table."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bcd.data.decode import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
LAYOUTS = ("folder", "presplit", "manifest", "synthetic")


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


def list_images(folder: Path) -> list[Path]:
    """Every file under folder (recursively) with an image extension, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


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
    if not csv_path.is_file():
        raise DatasetError(f"{key}: {csv_path} does not exist; pass the CSV file with path,label columns")
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "path" not in columns or "label" not in columns:
            raise DatasetError(f"{key}: {csv_path} needs columns path and label (found: {columns})")
        rows = list(reader)
    if not rows:
        raise DatasetError(f"{key}: {csv_path} has no rows")
    labels_seen = sorted({row["label"] for row in rows})
    class_names = list(classes) if classes is not None else labels_seen
    samples, problems = [], []
    for line, row in enumerate(rows, start=2):
        sample, problem = _manifest_row(row, root, class_names)
        if problem:
            problems.append(f"  line {line}: {problem}")
        else:
            samples.append(sample)
    if problems:
        shown = "\n".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise DatasetError(f"{key}: {csv_path} has {len(problems)} bad row(s):\n{shown}")
    with_split = sum(s.split is not None for s in samples)
    if 0 < with_split < len(samples):
        raise DatasetError(f"{key}: {csv_path}: fill the split column for every row or for none")
    return samples, class_names


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
