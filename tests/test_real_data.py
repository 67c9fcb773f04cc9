"""Checks on the real Taleqani ALL sample; they run when BCD_REAL_DATA points at it, and skip otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bcd.data.datamodule import SmearDataModule

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def real_root() -> Path:
    root = os.environ.get("BCD_REAL_DATA")
    if not root:
        pytest.skip("set BCD_REAL_DATA to the taleqani-all-dev folder to run real-data checks")
    return Path(root)


def test_real_sample_duplicates_are_found_and_kept_together(real_root: Path) -> None:
    dm = SmearDataModule(
        name="taleqani_all", layout="folder", root=str(real_root), classes=["Benign", "Early", "Pre", "Pro"],
        num_workers=0, img_size=64,
    )
    dm.prepare()
    by_hash: dict[str, list] = {}
    for sample in dm.samples:
        by_hash.setdefault(sample.sha1, []).append(sample)
    pairs = [group for group in by_hash.values() if len(group) > 1]
    assert len(pairs) == 10
    assert all(len(g) == 2 and {s.label for s in g} == {"Pro"} for g in pairs)
    assert all(len({s.split for s in g}) == 1 for g in pairs)
    assert len(dm.samples) == 814


def test_a_few_training_batches_on_real_images(real_root: Path, train_run) -> None:
    summary = train_run(
        "dataset=taleqani_all", f"dataset.root={real_root}", "model=tiny", "model.img_size=64",
        "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
    )
    assert summary.dataset.counts["train"]["Benign"] > 50
    assert summary.global_step == 3
    assert summary.metrics.test["test/loss"] > 0
