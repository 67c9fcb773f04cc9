"""Per-image colour statistics (RGB, optical density, H&E-like stain channels, background) and a test of whether
colour alone predicts the class: when it does, a network can score high by recognising the stain, not the cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bcd.data.colour_shift import HED_FROM_RGB
from bcd.data.reader import DEFAULT_READER, ImageReader

__all__ = ["STAT_NAMES", "ColourFeatures", "ShortcutScore", "colour_features", "colour_shortcut", "image_colour_stats"]

HISTOGRAM_BINS = 16
# Colour statistics do not need every pixel: large images are subsampled to about this side first.
_STATS_SIDE = 256

STAT_NAMES = (
    *(f"{channel} mean" for channel in "RGB"),
    *(f"{channel} std" for channel in "RGB"),
    *(f"OD {channel}" for channel in "RGB"),
    "haematoxylin",
    "eosin",
    "DAB (residual)",
    *(f"background {channel}" for channel in "RGB"),
)
"""Names of the columns of ColourFeatures.stats, in order."""


@dataclass(frozen=True)
class ColourFeatures:
    """Colour statistics of N images: `stats` (N, len(STAT_NAMES)) and per-channel `histograms` (N, 3 * bins)."""

    stats: np.ndarray
    histograms: np.ndarray

    def acquisition(self) -> np.ndarray:
        """What a slide or session shares: its colour balance, as the chromaticity (R, G, B over their sum) of the
        background (the lamp, the camera's white balance) and of the whole picture (the stain batch). Brightness
        is left out: it changes from field to field of one smear (thick and thin regions, lamp fall-off)."""
        background = self.stats[:, [STAT_NAMES.index(f"background {c}") for c in "RGB"]]
        mean = self.stats[:, [STAT_NAMES.index(f"{c} mean") for c in "RGB"]]
        return np.hstack([_chromaticity(background), _chromaticity(mean)])


def _chromaticity(rgb: np.ndarray) -> np.ndarray:
    """Each row divided by its sum: the colour balance without the brightness."""
    return rgb / np.maximum(rgb.sum(axis=1, keepdims=True), 1e-6)


@dataclass(frozen=True)
class ShortcutScore:
    """Cross-validated balanced accuracy of a colour-histogram classifier, next to chance (1 / classes)."""

    balanced_accuracy: float
    fold_scores: list[float]
    chance: float
    folds: int

    def above_chance(self) -> float:
        """How far colour alone beats guessing, as a fraction of the way from chance to perfect."""
        return (self.balanced_accuracy - self.chance) / (1.0 - self.chance)


def image_colour_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stats, histogram) of one HxWx3 uint8 image; see STAT_NAMES for the stats."""
    step = max(1, max(rgb.shape[:2]) // _STATS_SIDE)
    pixels = rgb[::step, ::step].reshape(-1, 3).astype(np.float64)
    optical_density = -np.log10((pixels + 1.0) / 256.0)
    stains = optical_density @ HED_FROM_RGB
    background = slide_background(pixels)
    stats = np.concatenate(
        [pixels.mean(axis=0), pixels.std(axis=0), optical_density.mean(axis=0), stains.mean(axis=0), background]
    )
    return stats, channel_histogram(pixels)


def slide_background(pixels: np.ndarray) -> np.ndarray:
    """The colour (R, G, B) of the glass between the cells of (N, 3) pixels: the mean of the brightest quarter, which
    shows the lamp and the slide's tint."""
    brightness = pixels.sum(axis=1)
    return pixels[brightness >= np.quantile(brightness, 0.75)].mean(axis=0)


def channel_histogram(pixels: np.ndarray) -> np.ndarray:
    """The share of (N, 3) RGB pixels in each of HISTOGRAM_BINS bins of each channel, concatenated."""
    counts = [np.bincount(pixels[:, c].astype(int) * HISTOGRAM_BINS // 256, minlength=HISTOGRAM_BINS) for c in range(3)]
    return np.concatenate(counts) / len(pixels)


def colour_features(paths: Sequence[Path], reader: ImageReader = DEFAULT_READER) -> ColourFeatures:
    """Colour statistics and histograms of every image (decoded once each)."""
    stats = np.zeros((len(paths), len(STAT_NAMES)))
    histograms = np.zeros((len(paths), 3 * HISTOGRAM_BINS))
    for i, path in enumerate(paths):
        stats[i], histograms[i] = image_colour_stats(reader.read(path))
    return ColourFeatures(stats=stats, histograms=histograms)


def colour_shortcut(
    histograms: np.ndarray, labels: Sequence[str], groups: Sequence[str], folds: int = 5, seed: int = 0
) -> ShortcutScore:
    """Can colour alone predict the class? A logistic regression on colour histograms, cross-validated with
    folds that keep each group (duplicates, patients) whole, scored by balanced accuracy."""
    labels = np.asarray(labels)
    chance = 1.0 / len(set(labels.tolist()))
    # every test fold needs a group of every class, or balanced accuracy is computed over missing classes
    groups_per_class = [len({g for g, label in zip(groups, labels, strict=True) if label == c}) for c in set(labels)]
    folds = min(folds, *groups_per_class)
    if folds < 2:
        return ShortcutScore(balanced_accuracy=float("nan"), fold_scores=[], chance=chance, folds=folds)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(model, histograms, labels, groups=groups, cv=splitter, scoring="balanced_accuracy")
    return ShortcutScore(
        balanced_accuracy=float(scores.mean()), fold_scores=scores.tolist(), chance=chance, folds=folds
    )
