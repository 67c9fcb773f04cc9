"""Shared fixtures: tiny synthetic data, image folders made on purpose, and a way to run bcd.train in-process.
Helpers the tests import live in tests/helpers/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from tests.helpers.configs import IMG, compose_train, tiny_overrides  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic-data cache for the whole session (generated on first use)."""
    return tmp_path_factory.mktemp("synthetic-cache")


@pytest.fixture(scope="session")
def synthetic_root(synthetic_cache: Path) -> Path:
    """The tiny synthetic dataset folder itself (Benign/ Early/ Pre/ Pro/)."""
    from bcd.data.synthetic import ensure_synthetic_dataset

    return ensure_synthetic_dataset(synthetic_cache, images_per_class=12, image_size=IMG, seed=0)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, synthetic_cache: Path):
    """The one trained run the tests share: the tiny model, two epochs, W&B (offline) and CSV logging. Read-only: a
    test that writes into a run dir (evaluating its own data does) uses trained_copy."""
    from tests.helpers.commands import train_tiny

    return train_tiny(tmp_path_factory.mktemp("trained") / "run", synthetic_cache, "logger=[wandb,csv]",
                      "trainer.max_epochs=2")


@pytest.fixture
def trained_copy(trained, tmp_path: Path):
    """A copy of the shared trained run in this test's tmp_path, to write into."""
    from tests.helpers.commands import copy_run

    return copy_run(trained, tmp_path / "trained-copy")


@pytest.fixture
def train_run(synthetic_cache: Path, tmp_path: Path) -> Callable:
    """Run bcd.train.train in this process with the tiny overrides plus the given ones; returns the RunSummary."""
    from bcd.train import train

    counter = iter(range(1000))

    def run(*overrides: str):
        out = tmp_path / f"run{next(counter)}"
        out.mkdir()
        base = tiny_overrides(synthetic_cache)
        if any(o.startswith("dataset=") and o != "dataset=synthetic" for o in overrides):
            # another dataset brings its own root (or, in a test, none at all)
            base = [o for o in base if not o.startswith("dataset.root=")]
        cfg = compose_train([*base, f"paths.output_dir={out}", *overrides])
        return train(cfg)

    return run


@pytest.fixture
def image_folder(synthetic_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny synthetic dataset, to add bad or duplicate files to."""
    target = tmp_path / "images"
    shutil.copytree(synthetic_root, target, ignore=shutil.ignore_patterns(".*"))
    return target
