"""Tests for the procedural blood-smear generator that replaces the real dataset in CI."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bcd.data.synthetic import (
    CLASS_NAMES,
    ensure_synthetic_dataset,
    generate_image,
    write_synthetic_dataset,
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_class_names() -> None:
    assert CLASS_NAMES == ("Benign", "Early", "Pre", "Pro")


@pytest.mark.parametrize("size", [32, 64, 224])
@pytest.mark.parametrize("class_index", range(len(CLASS_NAMES)))
def test_generate_image_shape_dtype_range(class_index: int, size: int) -> None:
    image = generate_image(class_index, np.random.default_rng(class_index), size)
    assert image.shape == (size, size, 3)
    assert image.dtype == np.uint8
    assert image.flags["C_CONTIGUOUS"]
    # A smear is mostly pale background with one dark nucleus: both ends of the range must be used.
    gray = image.mean(axis=-1)
    assert np.median(gray) > 150
    assert gray.min() < 120
    assert image.std() > 5


def test_generate_image_is_deterministic_per_rng() -> None:
    a = generate_image(2, np.random.default_rng(7), 64)
    b = generate_image(2, np.random.default_rng(7), 64)
    c = generate_image(2, np.random.default_rng(8), 64)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("class_index", [-1, len(CLASS_NAMES)])
def test_generate_image_rejects_bad_class(class_index: int) -> None:
    with pytest.raises(ValueError, match="class_index"):
        generate_image(class_index, np.random.default_rng(0), 64)


def test_generate_image_rejects_tiny_size() -> None:
    with pytest.raises(ValueError, match="size must be >= 32"):
        generate_image(0, np.random.default_rng(0), 16)


def test_write_layout_and_counts(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path / "ds", images_per_class=3, image_size=48, seed=1)
    assert root == tmp_path / "ds"
    assert sorted(p.name for p in root.iterdir()) == sorted(CLASS_NAMES)
    for name in CLASS_NAMES:
        files = sorted(p.name for p in (root / name).iterdir())
        assert files == [f"{name.lower()}_{i:04d}.jpg" for i in range(3)]
        with Image.open(root / name / files[0]) as im:
            assert im.format == "JPEG"
            assert im.mode == "RGB"
            assert im.size == (48, 48)


def test_write_is_deterministic(tmp_path: Path) -> None:
    a = _files(write_synthetic_dataset(tmp_path / "a", images_per_class=4, image_size=64, seed=3))
    b = _files(write_synthetic_dataset(tmp_path / "b", images_per_class=4, image_size=64, seed=3))
    c = _files(write_synthetic_dataset(tmp_path / "c", images_per_class=4, image_size=64, seed=4))
    assert len(a) == 4 * len(CLASS_NAMES)
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_images_do_not_depend_on_dataset_size(tmp_path: Path) -> None:
    small = _files(write_synthetic_dataset(tmp_path / "small", images_per_class=2, image_size=64, seed=0))
    large = _files(write_synthetic_dataset(tmp_path / "large", images_per_class=5, image_size=64, seed=0))
    assert all(large[k] == v for k, v in small.items())


def test_ensure_caches_and_cleans_up(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "nested"  # must be created on demand
    first = ensure_synthetic_dataset(cache, images_per_class=2, image_size=40, seed=5)
    assert first == cache / "synthetic-n2-s40-seed5-v1"
    assert (first / ".complete").is_file()
    # Only the final folder may remain: no temp or stale siblings.
    assert [p.name for p in cache.iterdir()] == [first.name]
    before = {p: p.stat().st_mtime_ns for p in first.rglob("*")}
    assert len([p for p in before if p.suffix == ".jpg"]) == 2 * len(CLASS_NAMES)

    second = ensure_synthetic_dataset(cache, images_per_class=2, image_size=40, seed=5)
    assert second == first
    assert {p: p.stat().st_mtime_ns for p in second.rglob("*")} == before
    assert [p.name for p in cache.iterdir()] == [first.name]

    other = ensure_synthetic_dataset(cache, images_per_class=2, image_size=40, seed=6)
    assert other != first
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.name, other.name])


def _ensure_in_child(cache: str) -> tuple[str, int]:
    out = ensure_synthetic_dataset(Path(cache), images_per_class=6, image_size=64, seed=9)
    # Count files right away: a racing writer must never expose a partial folder.
    return str(out), len(list(out.rglob("*.jpg")))


def test_ensure_concurrent_processes_agree(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=4, mp_context=ctx) as pool:
        results = list(pool.map(_ensure_in_child, [str(tmp_path)] * 4))
    assert {path for path, _ in results} == {str(tmp_path / "synthetic-n6-s64-seed9-v1")}
    assert all(count == 6 * len(CLASS_NAMES) for _, count in results)
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic-n6-s64-seed9-v1"]


def test_ensure_regenerates_incomplete_folder(tmp_path: Path) -> None:
    target = tmp_path / "synthetic-n1-s32-seed0-v1"
    (target / "Benign").mkdir(parents=True)
    (target / "Benign" / "junk.jpg").write_bytes(b"half-written")
    out = ensure_synthetic_dataset(tmp_path, images_per_class=1, image_size=32, seed=0)
    assert out == target
    assert (out / ".complete").is_file()
    assert not (out / "Benign" / "junk.jpg").exists()
    assert len(list(out.rglob("*.jpg"))) == len(CLASS_NAMES)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images_per_class": 0}, "dataset.images_per_class must be >= 1, got 0"),
        ({"image_size": 31}, "dataset.image_size must be >= 32, got 31"),
        ({"seed": -1}, "dataset.seed must be >= 0, got -1"),
    ],
)
def test_bad_args_raise(tmp_path: Path, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_synthetic_dataset(tmp_path / "w", **kwargs)
    with pytest.raises(ValueError, match=message):
        ensure_synthetic_dataset(tmp_path / "e", **kwargs)
    assert not (tmp_path / "w").exists()
    assert not (tmp_path / "e").exists()


def _morphology_features(image: np.ndarray) -> list[float]:
    """Areas of nucleus-dark and cytoplasm-blue pixels, relative to the image's own background."""
    rgb = image.astype(np.float32)
    gray = rgb.mean(axis=-1)
    background = np.percentile(gray, 90)
    rel = gray / background
    bluish = (rgb[..., 2] - rgb[..., 0]) / background
    dark = [float((rel < t).mean()) for t in (0.45, 0.55, 0.65, 0.75)]
    blue = [float((bluish > t).mean()) for t in (0.05, 0.10, 0.15)]
    return dark + blue


def _holdout_accuracy(features: np.ndarray, labels: np.ndarray, train: np.ndarray) -> float:
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(features[train], labels[train])
    return float(clf.score(features[~train], labels[~train]))


def test_classes_are_learnable_from_morphology_but_not_from_colour() -> None:
    """Morphology must carry the label, mean colour must not (chance is 0.25 for 4 classes)."""
    per_class, n_train = 60, 40
    images, labels, train = [], [], []
    for class_index in range(len(CLASS_NAMES)):
        for i in range(per_class):
            rng = np.random.default_rng(np.random.SeedSequence([123, class_index, i]))
            images.append(generate_image(class_index, rng, 64))
            labels.append(class_index)
            train.append(i < n_train)
    stack = np.stack(images)
    y, train_mask = np.array(labels), np.array(train)

    morphology = np.array([_morphology_features(im) for im in stack])
    colour = stack.reshape(len(stack), -1, 3).mean(axis=1)

    morphology_acc = _holdout_accuracy(morphology, y, train_mask)
    colour_acc = _holdout_accuracy(colour, y, train_mask)
    assert morphology_acc > 0.5, f"morphology features only reach {morphology_acc:.2f}"
    assert colour_acc < 0.5, f"mean colour alone reaches {colour_acc:.2f}: stain leaks the class"
