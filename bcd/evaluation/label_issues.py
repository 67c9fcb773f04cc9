"""Images whose label a specialist should read again: cross-validation's out-of-fold predictions (every image scored
by a model that did not train on it) ranked by cleanlab's find_label_issues, by self-confidence (the probability
the model gives the label the image has). Candidates, not corrections: the model can be wrong where the label is not.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bcd.inference.scores import probability_column


@dataclass(frozen=True)
class LabelIssue:
    """One candidate: its image, the label it has, the one the models suggest, and how sure they were of its label."""

    rank: int
    path: str
    given: str
    suggested: str
    self_confidence: float
    """the out-of-fold probability of the given label (low: the models disagree with it)"""
    fold: int


@dataclass(frozen=True)
class OutOfFold:
    """Every image of a CV with the probabilities of the fold model that held it out."""

    paths: list[str]
    probabilities: np.ndarray
    targets: np.ndarray
    folds: np.ndarray


def read_out_of_fold(prediction_files: Sequence[Path], class_names: Sequence[str]) -> OutOfFold:
    """The folds' predictions.csv files (one per fold, in fold order) as one table."""
    paths, probs, targets, folds = [], [], [], []
    for fold, path in enumerate(prediction_files):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                paths.append(row["path"])
                probs.append([float(row[probability_column(name)]) for name in class_names])
                targets.append(class_names.index(row["true_label"]))
                folds.append(fold)
    return OutOfFold(paths, np.array(probs, dtype=np.float64).reshape(-1, len(class_names)),
                     np.array(targets, dtype=np.int64), np.array(folds, dtype=np.int64))


def rank_label_issues(probabilities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Indices of the likely label errors, most likely first (cleanlab: confident learning to find them, ranked by
    self-confidence)."""
    from cleanlab.filter import find_label_issues  # imported here: only a CV's aggregation needs it

    if len(np.unique(targets)) < 2:
        return np.zeros(0, dtype=np.int64)
    # n_jobs=1: cleanlab's process pool would start a copy of this process per core for a few hundred rows
    return np.asarray(find_label_issues(labels=targets, pred_probs=probabilities, return_indices_ranked_by="self_confidence",
                                        n_jobs=1), dtype=np.int64)


def label_issues(out_of_fold: OutOfFold, class_names: Sequence[str]) -> list[LabelIssue]:
    """The ranked candidates of a CV's out-of-fold predictions."""
    ranked = rank_label_issues(out_of_fold.probabilities, out_of_fold.targets)
    probs, targets = out_of_fold.probabilities, out_of_fold.targets
    return [LabelIssue(rank=rank, path=out_of_fold.paths[i], given=class_names[targets[i]],
                       suggested=class_names[int(probs[i].argmax())], self_confidence=float(probs[i, targets[i]]),
                       fold=int(out_of_fold.folds[i]))
            for rank, i in enumerate(ranked, start=1)]
