"""The dataset audit's annotation-shortcut check: where burned-in marks sit (bcd.models.annotations' colour rule),
per image and per class, and whether the image corners alone predict the class better than same-size patches
from elsewhere in the image (background colour alone already predicts it on the Taleqani data, so the corners
are compared with a control, not with chance)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bcd.data.colour_features import ShortcutScore, channel_histogram, colour_shortcut
from bcd.data.reader import DEFAULT_READER, ImageReader
from bcd.models.annotations import CORNER, MIN_PIXELS, mark_kinds
from bcd.utils.progress import progress

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
# warn when the corners predict the class by this much balanced accuracy better than the control patches
WARN_MARGIN = 0.10


def patches(image: np.ndarray, side: int, corners: bool) -> list[np.ndarray]:
    """The four corner squares (corners=True) or the four squares of the same size at the middle of each edge."""
    height, width = image.shape[:2]
    middle_y, middle_x = (height - side) // 2, (width - side) // 2
    places = ([(0, 0), (0, width - side), (height - side, 0), (height - side, width - side)] if corners else
              [(0, middle_x), (height - side, middle_x), (middle_y, 0), (middle_y, width - side)])
    return [image[top : top + side, left : left + side] for top, left in places]


def find_mark(image: np.ndarray) -> tuple[str | None, str]:
    """(the corner holding the most mark pixels, if at least MIN_PIXELS; its kind: red, black or red+black)."""
    side = max(1, round(CORNER * min(image.shape[:2])))
    red, black = (kind[0, 0].numpy()[..., None] for kind in
                  mark_kinds(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()[None]))
    counts = [patch.sum() for patch in patches(red | black, side, corners=True)]
    best = int(np.argmax(counts))
    if counts[best] < MIN_PIXELS:
        return None, ""
    present = {name: patches(kind, side, corners=True)[best].sum() >= MIN_PIXELS
               for name, kind in (("red", red), ("black", black))}
    return CORNERS[best], "+".join(name for name, found in present.items() if found)


@dataclass(frozen=True)
class AnnotationAudit:
    """Where the marks sit, and how well corner patches and control patches predict the class."""

    corners: list[str | None]
    kinds: list[str]
    corner_score: ShortcutScore
    control_score: ShortcutScore
    kind_score: ShortcutScore
    """how well the kind of mark alone (red, black, none) predicts the class"""
    warn_margin: float = WARN_MARGIN

    def difference(self) -> float:
        """Balanced accuracy of the corners minus that of the control patches."""
        return self.corner_score.balanced_accuracy - self.control_score.balanced_accuracy

    def warning(self) -> bool:
        """True when the corners predict the class clearly better than patches from elsewhere."""
        return bool(self.difference() >= self.warn_margin)

    def summary(self, labels: Sequence[str], class_names: Sequence[str], names: Sequence[str]) -> dict[str, Any]:
        """Per class: images with a mark, by kind and by corner; the two scores, their difference and the warning."""
        per_class = {}
        for name in class_names:
            rows = [k for k, label in enumerate(labels) if label == name]
            per_class[name] = {"images": len(rows), "with_mark": sum(self.corners[k] is not None for k in rows),
                               "kinds": dict(Counter(self.kinds[k] for k in rows if self.kinds[k])),
                               "corners": dict(Counter(self.corners[k] for k in rows if self.corners[k]))}
        return {"per_class": per_class, "corner_score": asdict(self.corner_score),
                "control_score": asdict(self.control_score), "kind_score": asdict(self.kind_score),
                "difference": self.difference(),
                "warn_margin": self.warn_margin, "warning": self.warning(),
                "marks": {name: {"corner": c, "kind": k} for name, c, k in zip(names, self.corners, self.kinds,
                                                                                strict=True) if c}}


def annotation_audit(paths: Sequence[Path], labels: Sequence[str], groups: Sequence[str], folds: int = 5,
                     seed: int = 0, reader: ImageReader = DEFAULT_READER, warn_margin: float = WARN_MARGIN,
                     ) -> AnnotationAudit:
    """Find each image's mark and score corner patches against control patches (colour histograms, the colour
    shortcut's grouped cross-validation)."""
    corners, kinds, corner_features, control_features = [], [], [], []
    for path in progress(paths, f"looking for annotation marks in {len(paths)} images", len(paths)):
        image = reader.read(path)
        corner, kind = find_mark(image)
        corners.append(corner)
        kinds.append(kind)
        side = max(1, round(CORNER * min(image.shape[:2])))
        for features, at_corners in ((corner_features, True), (control_features, False)):
            features.append(np.concatenate([channel_histogram(p.reshape(-1, 3)) for p in patches(image, side, at_corners)]))
    score = lambda features: colour_shortcut(np.stack(features), labels, groups, folds, seed)  # noqa: E731
    kind_features = [[kind == name for name in ("red", "black", "red+black")] for kind in kinds]
    return AnnotationAudit(corners, kinds, score(corner_features), score(control_features),
                           score(np.array(kind_features, dtype=float)), warn_margin)
