"""Splits: stratified, duplicate- and group-aware, reproducible, and recorded in a manifest that round-trips."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from bcd.data.datamodule import SmearDataModule
from bcd.data.sources import DatasetError, Sample
from bcd.data.splits import assign_splits, class_weights, split_groups


def make_datamodule(root: Path, **kwargs) -> SmearDataModule:
    """A datamodule over a folder of class folders, with test-friendly defaults."""
    options = {"name": "t", "layout": "folder", "root": str(root), "num_workers": 0, "img_size": 32} | kwargs
    return SmearDataModule(**options)


def add_duplicates(folder: Path, count: int) -> list[tuple[str, str]]:
    """Copy `count` images of each class under new names: byte-identical pairs, as in the real data."""
    pairs = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for original in sorted(class_dir.glob("*.jpg"))[:count]:
            copy = class_dir / f"copy_of_{original.name}"
            shutil.copy(original, copy)
            pairs.append((str(original), str(copy)))
    return pairs


def sides(dm: SmearDataModule) -> dict[str, str]:
    return {str(s.path): s.split for s in dm.samples}


def test_duplicates_share_a_split_side(image_folder: Path) -> None:
    pairs = add_duplicates(image_folder, count=3)
    dm = make_datamodule(image_folder, seed=3)
    dm.prepare()
    split_of = sides(dm)
    assert all(split_of[a] == split_of[b] for a, b in pairs)
    # with dedup=none nothing keeps them together; some pair must then straddle sides for some seed
    straddles = 0
    for seed in range(5):
        loose = make_datamodule(image_folder, seed=seed, dedup="none")
        loose.prepare()
        straddles += sum(sides(loose)[a] != sides(loose)[b] for a, b in pairs)
    assert straddles > 0


def test_same_seed_same_split_and_other_seed_differs(image_folder: Path) -> None:
    first, second, other = (make_datamodule(image_folder, seed=s) for s in (7, 7, 8))
    for dm in (first, second, other):
        dm.prepare()
    assert sides(first) == sides(second)
    assert sides(first) != sides(other)


def test_split_is_stratified_and_has_all_parts(image_folder: Path) -> None:
    dm = make_datamodule(image_folder, val_fraction=0.25, test_fraction=0.25)
    dm.prepare()
    for split in ("train", "val", "test"):
        labels = {s.label for s in dm.split_samples(split)}
        assert labels == {"Benign", "Early", "Pre", "Pro"}, split


def test_groups_stay_together() -> None:
    samples = [Sample(Path(f"/x/{i}.jpg"), label="ab"[i % 2], group=f"patient{i // 4}") for i in range(80)]
    splits = assign_splits(samples, val_fraction=0.2, test_fraction=0.2, seed=0)
    by_group: dict[str, set[str]] = {}
    for s in splits:
        by_group.setdefault(s.group, set()).add(s.split)
    assert all(len(v) == 1 for v in by_group.values())
    assert {s.split for s in splits} == {"train", "val", "test"}


def test_group_and_duplicate_ids_merge() -> None:
    samples = [
        Sample(Path("/a"), "x", group="p1", sha1="h1"),
        Sample(Path("/b"), "x", group="p2", sha1="h1"),  # same content as /a, other patient
        Sample(Path("/c"), "x", group="p2", sha1="h2"),
        Sample(Path("/d"), "x", group=None, sha1="h3"),
    ]
    ids = split_groups(samples, dedup="exact")
    assert ids[0] == ids[1] == ids[2] != ids[3]


def test_manifest_round_trips(image_folder: Path, tmp_path: Path) -> None:
    add_duplicates(image_folder, count=1)
    dm = make_datamodule(image_folder, seed=11)
    out = tmp_path / "run"
    out.mkdir()
    dm.prepare(out)
    manifest = out / "split_manifest.csv"
    rows = list(csv.DictReader(manifest.open()))
    assert {"path", "label", "group", "split", "sha1"} <= set(rows[0])
    assert not any(Path(r["path"]).is_absolute() for r in rows)
    # a different seed, but the manifest wins
    reused = make_datamodule(image_folder, seed=99, split_manifest=str(manifest))
    reused.prepare()
    assert sides(reused) == sides(dm)


def test_reused_manifest_detects_changed_files(image_folder: Path, tmp_path: Path) -> None:
    dm = make_datamodule(image_folder)
    dm.prepare(tmp_path)
    victim = sorted((image_folder / "Pro").glob("*.jpg"))[0]
    victim.write_bytes(sorted((image_folder / "Pre").glob("*.jpg"))[0].read_bytes())
    with pytest.raises(DatasetError, match="changed since the manifest"):
        make_datamodule(image_folder, split_manifest=str(tmp_path / "split_manifest.csv")).prepare()


def test_class_weights_come_from_train_only(image_folder: Path, tmp_path: Path) -> None:
    # a manifest whose train part is Benign-poor while val/test are Benign-rich
    rows = []
    for class_dir in sorted(p for p in image_folder.iterdir() if p.is_dir()):
        for i, image in enumerate(sorted(class_dir.glob("*.jpg"))):
            split = "train" if i < (3 if class_dir.name == "Benign" else 8) else ("val" if i % 2 else "test")
            rows.append(f"{class_dir.name}/{image.name},{class_dir.name},{split}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    dm = make_datamodule(image_folder, layout="manifest", manifest=str(manifest))
    dm.prepare()
    assert dm.planned.class_weights == pytest.approx(class_weights(dm.targets("train"), 4))
    assert dm.planned.class_weights == pytest.approx([27 / 12, 27 / 32, 27 / 32, 27 / 32])


def test_binary_targets_and_weights(image_folder: Path) -> None:
    dm = make_datamodule(image_folder, task="binary", negative_classes=["Benign"])
    dm.prepare()
    assert dm.class_names == ["benign", "malignant"]
    assert dm.planned.target_of("Benign") == 0 and dm.planned.target_of("Pro") == 1
    assert len(dm.planned.class_weights) == 2 and dm.planned.class_weights[0] > dm.planned.class_weights[1]


def test_binary_needs_negative_classes(image_folder: Path) -> None:
    with pytest.raises(DatasetError, match="dataset.negative_classes"):
        make_datamodule(image_folder, task="binary").prepare()
