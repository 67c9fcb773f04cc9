"""The range of per-image colour statistics a model was trained on, and the check that an input lies in it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bcd.data.reader import DEFAULT_READER, ImageReader
from bcd.utils.progress import progress

COLOUR_STATISTICS = ("mean_red", "mean_green", "mean_blue", "red_to_blue")


def colour_statistics(image: np.ndarray) -> dict[str, float]:
    """Per-image colour statistics of an H x W x 3 uint8 RGB image: channel means and the red/blue balance."""
    red, green, blue = image.reshape(-1, 3).mean(axis=0, dtype=np.float64)
    return {"mean_red": red, "mean_green": green, "mean_blue": blue, "red_to_blue": red / max(blue, 1.0)}


def colour_range(
    paths: Sequence[Path], margin: float = 0.05, reader: ImageReader = DEFAULT_READER, workers: int = 4
) -> dict[str, list[float]]:
    """[low, high] of each statistic over the images, widened by `margin` of its span on both sides."""

    def statistics(path: Path) -> dict[str, float]:
        return colour_statistics(reader.read_audited(path))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        values = list(pool.map(statistics, paths))
    ranges = {}
    for name in COLOUR_STATISTICS:
        column = np.array([v[name] for v in values])
        low, high = float(column.min()), float(column.max())
        pad = margin * (high - low)
        ranges[name] = [low - pad, high + pad]
    return ranges


def out_of_range(statistics: Mapping[str, float], ranges: Mapping[str, Sequence[float]]) -> list[str]:
    """Names (with value and range) of the statistics that fall outside the training range."""
    outside = []
    for name, (low, high) in ranges.items():
        value = statistics[name]
        if not low <= value <= high:
            outside.append(f"{name}={value:.3g} outside [{low:.3g}, {high:.3g}]")
    return outside


def colour_warning(image: np.ndarray, ranges: Mapping[str, Sequence[float]]) -> str:
    """A decoded image's statistics outside the training range, joined by '; ' ('' when none)."""
    return "; ".join(out_of_range(colour_statistics(image), ranges))


def colour_warnings(paths: Sequence[Path], ranges: Mapping[str, Sequence[float]],
                    reader: ImageReader = DEFAULT_READER) -> list[str]:
    """colour_warning of every image file (audited); all '' without a range, without reading the files."""
    if not ranges:
        return [""] * len(paths)
    return [colour_warning(reader.read_audited(path), ranges)
            for path in progress(paths, f"checking the colours of {len(paths)} images", len(paths))]
