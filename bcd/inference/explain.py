"""Which images to explain with Grad-CAM (each map costs a backward pass), and the maps of decoded images."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from bcd.data.reader import resize_square
from bcd.inference.gradcam import gradcam
from bcd.inference.scores import ImageScores
from bcd.models.classifier import Classifier


class GradcamSubset:
    """The capped subset of images whose Grad-CAM a review shows: every image that needs a look (an error, an
    abstention, out of distribution, a colour outside the training range), and up to `per_class` more of each
    predicted class, in the order they come (so a page of 17,000 images costs at most a few hundred maps
    beyond the ones that need a look). per_class=None explains every image."""

    def __init__(self, per_class: int | None) -> None:
        if per_class is not None and per_class < 0:
            raise ValueError(f"review.gradcam_per_class: {per_class} must be >= 0 (or null for every image)")
        self.per_class = per_class
        self.taken: Counter[int] = Counter()

    def choose(self, predicted: Sequence[int], needs_a_look: Sequence[bool]) -> list[int]:
        """Indices (within this batch) of the images to explain; call batch after batch, in order."""
        chosen = []
        for k, (label, flagged) in enumerate(zip(predicted, needs_a_look, strict=True)):
            if flagged or self.per_class is None:
                chosen.append(k)
            elif self.taken[int(label)] < self.per_class:
                self.taken[int(label)] += 1
                chosen.append(k)
        return chosen


def needs_a_look(scores: ImageScores, colour_warnings: Sequence[str], targets: np.ndarray | None = None) -> np.ndarray:
    """(N,) booleans: the images a review always explains (and the rule gradcam_rule states): an error (when the true
    classes are given), an abstention, out of distribution, a colour outside the training range."""
    flagged = scores.abstain | np.array([bool(warning) for warning in colour_warnings], dtype=bool)
    if scores.ood is not None:
        flagged = flagged | scores.ood
    if targets is not None:
        flagged = flagged | (scores.predicted != np.asarray(targets))
    return flagged


def gradcam_rule(per_class: int | None) -> str:
    """The subset GradcamSubset explains, in words for the review page."""
    if per_class is None:
        return "every image"
    return (f"every image that needs a look (an error, abstained, out of distribution, a colour outside the training "
            f"range) and up to {per_class} more of each predicted class (review.gradcam_per_class)")


def gradcam_of(model: Classifier, images: Sequence[np.ndarray], classes: Sequence[int], img_size: int) -> np.ndarray:
    """Grad-CAM maps (N, S, S) of decoded H x W x 3 images for the given classes, at the model's input size."""
    if not images:
        return np.zeros((0, img_size, img_size), dtype=np.float32)
    batch = np.stack([resize_square(image, img_size).transpose(2, 0, 1) for image in images])
    return gradcam(model, torch.from_numpy(batch).to(model.device), list(classes))
