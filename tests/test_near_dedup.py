"""Near-duplicates: planted resized / re-encoded copies are found, and dataset.dedup=near keeps them on one side."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bcd.data.datamodule import SmearDataModule
from bcd.data.near_duplicates import near_duplicate_pairs, perceptual_hashes
from bcd.data.sources import list_images, scan_class_folders
from bcd.evaluation.dataset_audit import audit_dataset
from tests.helpers.planted_data import plant_duplicates, write_sessions


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    root = tmp_path / "images"
    write_sessions(root)
    return root, plant_duplicates(root)


def test_near_duplicate_pairs_are_the_planted_ones(planted) -> None:
    root, pairs = planted
    paths = list_images(root)
    found = {(paths[p.first], paths[p.second]) for p in near_duplicate_pairs(perceptual_hashes(paths), threshold=6)}
    assert found == {tuple(sorted(pair)) for pair in pairs.values()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_near_dedup_split_never_separates_a_planted_pair(planted, seed: int) -> None:
    root, pairs = planted
    dm = SmearDataModule(name="t", layout="folder", root=str(root), dedup="near", val_fraction=0.25,
                         test_fraction=0.25, num_workers=0, img_size=32, seed=seed)
    dm.prepare()
    split_of = {s.path: s.split for s in dm.samples}
    group_of = dict(zip([s.path for s in dm.samples], dm.planned.group_ids, strict=True))
    for first, second in pairs.values():
        assert split_of[first] == split_of[second], (first, second)
        assert group_of[first] == group_of[second]
    assert dm.split_method == "near-dedup"


def test_exact_dedup_alone_misses_the_resized_copy(planted) -> None:
    root, pairs = planted
    dm = SmearDataModule(name="t", layout="folder", root=str(root), dedup="exact", num_workers=0, img_size=32)
    dm.prepare()
    group_of = dict(zip([s.path for s in dm.samples], dm.planned.group_ids, strict=True))
    assert group_of[pairs["exact"][0]] == group_of[pairs["exact"][1]]
    assert group_of[pairs["resized"][0]] != group_of[pairs["resized"][1]]
    assert dm.split_method == "exact-dedup"


@pytest.mark.real_data
def test_real_sample_has_ten_duplicate_pairs_all_in_pro() -> None:
    root = os.environ.get("BCD_REAL_DATA")
    if not root:
        pytest.skip("set BCD_REAL_DATA to the taleqani-all-dev folder to run real-data checks")
    samples, classes = scan_class_folders(Path(root), None)
    audit = audit_dataset(samples, Path(root), classes, name="taleqani_all")
    summary = audit.summary()
    groups = summary["exact_duplicates"]["list"]
    assert len(groups) == 10
    assert all(len(group) == 2 and {m["label"] for m in group} == {"Pro"} for group in groups)
    assert summary["label_conflicts"] == []
    # the classes differ in colour: a colour-only classifier is far above chance
    assert summary["colour_shortcut"]["warning"]
