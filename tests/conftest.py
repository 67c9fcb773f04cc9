"""Shared fixtures: tiny synthetic data, image folders made on purpose, and ways to run bcd.train."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
IMG = 48


def tiny_overrides(cache_dir: Path) -> list[str]:
    """Overrides that make a full training run take seconds: tiny model, 48 px synthetic images, 1 epoch."""
    return [
        "model=tiny",
        f"model.img_size={IMG}",
        "dataset=synthetic",
        f"dataset.root={cache_dir}",
        "dataset.synthetic_images_per_class=12",
        f"dataset.synthetic_image_size={IMG}",
        "dataset.batch_size=8",
        "dataset.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "logger=csv",
        "callbacks.progress_bar=null",
    ]


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic-data cache for the whole session (generated on first use)."""
    return tmp_path_factory.mktemp("synthetic-cache")


@pytest.fixture(scope="session")
def synthetic_root(synthetic_cache: Path) -> Path:
    """The tiny synthetic dataset folder itself (Benign/ Early/ Pre/ Pro/)."""
    from bcd.data.synthetic import ensure_synthetic_dataset

    return ensure_synthetic_dataset(synthetic_cache, images_per_class=12, image_size=IMG, seed=0)


def compose_train(overrides: Sequence[str]) -> Any:
    """The composed training config, as `python -m bcd.train <overrides>` would see it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture
def train_run(synthetic_cache: Path, tmp_path: Path) -> Callable[..., dict]:
    """Run bcd.train.train in this process with the tiny overrides plus the given ones; returns the summary."""
    from bcd.train import train

    counter = iter(range(1000))

    def run(*overrides: str) -> dict:
        out = tmp_path / f"run{next(counter)}"
        out.mkdir()
        base = tiny_overrides(synthetic_cache)
        if any(o.startswith("dataset=") and o != "dataset=synthetic" for o in overrides):
            # another dataset brings its own root (or, in a test, none at all)
            base = [o for o in base if not o.startswith("dataset.root=")]
        cfg = compose_train([*base, f"paths.output_dir={out}", *overrides])
        return train(cfg)

    return run


def run_cli(args: Sequence[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m <args>` like a user would, from cwd, capturing output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    return result


def run_dirs(log_dir: Path) -> list[Path]:
    """The run directories Hydra created under <log_dir>/train/runs."""
    runs = log_dir / "train" / "runs"
    return sorted(p for p in runs.iterdir() if p.is_dir()) if runs.exists() else []


def assert_png(path: Path, min_px: int = 300, min_bytes: int = 10_000) -> None:
    """A report figure: a valid PNG file of non-trivial size."""
    from PIL import Image

    assert path.is_file(), path
    assert path.stat().st_size > min_bytes, f"{path} is only {path.stat().st_size} bytes"
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert width > min_px and height > min_px, image.size


@pytest.fixture
def image_folder(synthetic_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny synthetic dataset, to add bad or duplicate files to."""
    target = tmp_path / "images"
    shutil.copytree(synthetic_root, target, ignore=shutil.ignore_patterns(".*"))
    return target
