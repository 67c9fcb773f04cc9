"""What a model reads, by what changing the images does to its accuracy: controlled colour shifts (the stain-shortcut
check), the cells removed (background only) and the corners occluded against the same area elsewhere."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from bcd.data.background import BackgroundOnlyImages
from bcd.data.occlusion import OCCLUDED_SIDE, PLACES, OccludedImages
from bcd.data.reader import ImageReader
from bcd.data.shifted import ShiftedImages
from bcd.evaluation import stats
from bcd.evaluation.result import (
    SHIFT_METRICS,
    BackgroundCheck,
    OcclusionCheck,
    RobustAccuracy,
    ShiftCheck,
    ShiftRow,
)
from bcd.inference.runners import Runner, score_loader
from bcd.inference.scores import probabilities


@dataclass
class AlteredScoring:
    """What every check scores its altered images with, as the plain evaluation scores the originals: the runner (with
    or without tta), the images, their targets, the reader and resolution they are loaded with, the loader's options
    and the bootstrap's."""

    runner: Runner
    paths: Sequence[Path]
    targets: np.ndarray
    img_size: int
    reader: ImageReader
    loader_options: Mapping[str, Any]
    bootstrap_options: Mapping[str, Any]
    tta: bool = False

    def score(self, images: Dataset, described: str) -> tuple[np.ndarray, dict[str, stats.Estimate]]:
        """The probabilities of one altered copy of the images and their bootstrapped metrics."""
        logits, _ = score_loader(self.runner, DataLoader(images, **self.loader_options), self.tta, described)
        probs = probabilities(logits).numpy()
        return probs, stats.bootstrap(probs, self.targets, **self.bootstrap_options)


def evaluate_shifts(scoring: AlteredScoring, shift: Mapping[str, Any], plain: Mapping[str, stats.Estimate]) -> ShiftCheck:
    """Accuracy and macro-F1 (with CIs) for every shift kind and strength; strength 0 is the plain evaluation."""
    rows = []
    for kind in shift["kinds"]:
        rows.append(ShiftRow(kind, 0.0, **{m: plain[m] for m in SHIFT_METRICS}))
        for strength in shift["strengths"]:
            images = ShiftedImages(scoring.paths, scoring.targets.tolist(), scoring.img_size, kind, strength,
                                   shift["seed"], scoring.reader)
            _, estimates = scoring.score(images, f"colour shift {kind} ±{strength:.0%}")
            rows.append(ShiftRow(kind, float(strength), **{m: estimates[m] for m in SHIFT_METRICS}))
    robust = [r.acc for r in rows if r.kind == shift["robust_kind"] and r.strength == shift["robust_strength"]]
    robust_acc = RobustAccuracy(shift["robust_kind"], float(shift["robust_strength"]), robust[0].value, robust[0].low,
                                robust[0].high) if robust else None
    return ShiftCheck(seed=shift["seed"], rows=rows, robust_acc=robust_acc)


# the background-only accuracy is flagged when even its lower confidence bound is this far above chance
BACKGROUND_FLAG_MARGIN = 0.15


def background_only(scoring: AlteredScoring) -> BackgroundCheck:
    """Accuracy (with its CI) on the same images with their cells removed (bcd.data.background); flagged when the
    model is well above chance (1 / classes) without any cell: it reads the slide, not the cell."""
    images = BackgroundOnlyImages(scoring.paths, scoring.targets.tolist(), scoring.img_size, scoring.reader)
    accuracy = scoring.score(images, "background only (cells removed)")[1]["acc"]
    chance = 1.0 / len(scoring.bootstrap_options["class_names"])
    return BackgroundCheck(acc=accuracy, chance=chance, flag_margin=BACKGROUND_FLAG_MARGIN,
                           flagged=bool(accuracy.low > chance + BACKGROUND_FLAG_MARGIN))


# the occlusion check flags a model whose accuracy drops by at least this much more with its corners occluded than with
# the same area occluded elsewhere, the drop's interval excluding zero
OCCLUSION_FLAG_DROP = 0.05


def corner_occlusion(scoring: AlteredScoring) -> OcclusionCheck:
    """Accuracy (with CIs) with the four corners occluded and with four same-size squares occluded elsewhere
    (bcd.data.occlusion), and the drop between them with a paired CI: flagged when the corners cost at least
    OCCLUSION_FLAG_DROP more, so that the model reads something in the corners (a burned-in label, a stamp)."""
    correct, accuracy = {}, {}
    seed = scoring.bootstrap_options["seed"]
    for place in PLACES:
        images = OccludedImages(scoring.paths, scoring.targets.tolist(), scoring.img_size, place, seed, scoring.reader)
        probs, estimates = scoring.score(images, f"occlusion: {place} occluded")
        accuracy[place] = estimates["acc"]
        correct[place] = probs.argmax(1) == scoring.targets
    drop = stats.paired_difference(correct["elsewhere"], correct["corners"], scoring.bootstrap_options["n_boot"],
                                   scoring.bootstrap_options["ci"], seed)
    return OcclusionCheck(corners=accuracy["corners"], elsewhere=accuracy["elsewhere"], drop=drop, side=OCCLUDED_SIDE,
                          flag_drop=OCCLUSION_FLAG_DROP, flagged=bool(drop.low > 0 and drop.value >= OCCLUSION_FLAG_DROP))
