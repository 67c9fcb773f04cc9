"""New images to scores: decode, resize, score through a runner (bcd.inference.runners.view_logits and
bcd.inference.scores), check their colours against the training range and, when asked, explain with Grad-CAM."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bcd.data.colour_range import colour_warning
from bcd.data.decode import UnreadableImageError
from bcd.data.reader import ImageReader, resize_square
from bcd.inference.calibration import Calibration
from bcd.inference.explain import GradcamSubset, gradcam_of, needs_a_look
from bcd.inference.runners import Runner, view_logits
from bcd.inference.scores import ImageScores, score_images
from bcd.models.classifier import Classifier


@dataclass
class ScoredBatch:
    """One batch of paths: the unreadable ones with their reason, the readable ones with their scores."""

    inputs: list[Path]
    """every path of the batch, in input order"""
    paths: list[Path]
    """the readable ones, in input order"""
    images: list[np.ndarray]
    """each as decoded (H x W x 3 uint8), before resizing"""
    scores: ImageScores | None
    colour_warnings: list[str]
    heatmaps: dict[int, np.ndarray]
    """Grad-CAM of the predicted class of the explained images (by index among `paths`), at the model's input size"""
    errors: dict[Path, str] = field(default_factory=dict)


@dataclass
class Predictor:
    """Turns image files into ScoredBatches; Grad-CAM (when `explain_with` holds the torch model) is always torch, for
    the images `explain_subset` chooses (None: every image)."""

    runner: Runner
    img_size: int
    reader: ImageReader
    tta: bool
    calibration: Calibration
    abstain_below: float
    colour_range: dict[str, list[float]] = field(default_factory=dict)
    explain_with: Classifier | None = None
    explain_subset: GradcamSubset | None = None

    def batches(self, paths: Sequence[Path], batch_size: int) -> Iterator[ScoredBatch]:
        """The ScoredBatch of every `batch_size` consecutive paths."""
        for start in range(0, len(paths), batch_size):
            yield self.score_paths(list(paths[start : start + batch_size]))

    def score_paths(self, paths: list[Path]) -> ScoredBatch:
        """Decode and score these files (an unreadable file is reported, not raised)."""
        readable, images, errors = [], [], {}
        for path in paths:
            try:
                images.append(self.reader.read(path))
                readable.append(path)
            except (UnreadableImageError, OSError) as error:
                errors[path] = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
        if not images:
            return ScoredBatch(paths, [], [], None, [], {}, errors)
        batch = torch.from_numpy(np.stack([resize_square(image, self.img_size).transpose(2, 0, 1) for image in images]))
        with torch.inference_mode():
            logits = view_logits(self.runner, batch, self.tta).cpu()
        scores = score_images(logits, self.calibration.temperature, self.calibration.ood_threshold, self.abstain_below)
        warnings = [colour_warning(image, self.colour_range) for image in images]
        heatmaps = {}
        if self.explain_with is not None:
            chosen = (list(range(len(images))) if self.explain_subset is None
                      else self.explain_subset.choose(scores.predicted, needs_a_look(scores, warnings)))
            maps = gradcam_of(self.explain_with, [images[k] for k in chosen], scores.predicted[chosen], self.img_size)
            heatmaps = dict(zip(chosen, maps, strict=True))
        return ScoredBatch(paths, readable, images, scores, warnings, heatmaps, errors)
