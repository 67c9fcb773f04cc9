"""One implementation per metric: the numbers training logs (val/..., test/...) are point_metrics of the same
predictions, which every evaluation report also uses; macro averages leave out classes absent from both the
targets and the predictions, as scikit-learn's default label set does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from bcd.models.metrics import LOGGED, ClassificationMetrics, point_metrics

NAMES = ["Benign", "Early", "Pre", "Pro"]


def batches(probs: np.ndarray, targets: np.ndarray, size: int = 7):
    """The predictions as the uneven batches a loader would give."""
    for start in range(0, len(targets), size):
        yield torch.from_numpy(probs[start : start + size]).float(), torch.from_numpy(targets[start : start + size])


@pytest.mark.parametrize("absent", [None, 3])
def test_the_logged_metrics_are_point_metrics_of_the_same_predictions(absent: int | None) -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), 60)
    targets = rng.integers(0, 4, 60)
    if absent is not None:  # a class neither in the targets nor predicted (a small val split can do that)
        probs[:, absent] = 0.0
        probs /= probs.sum(1, keepdims=True)
        targets[targets == absent] = 0
    metrics = ClassificationMetrics(NAMES)
    for batch_probs, batch_targets in batches(probs, targets):
        metrics.update(batch_probs, batch_targets)
    logged = metrics.compute("val")
    expected = point_metrics(probs.astype(np.float32).astype(np.float64), targets, NAMES)
    for key in LOGGED:
        assert float(logged[f"val/{key}"]) == pytest.approx(expected[key], abs=1e-6), key
    assert float(logged["val/macro_f1"]) == pytest.approx(f1_score(targets, probs.argmax(1), average="macro"))
    assert sum(map(sum, metrics.confusion_matrix())) == 60


def test_a_new_epoch_starts_empty() -> None:
    metrics = ClassificationMetrics(["benign", "malignant"])
    metrics.update(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1]))
    assert float(metrics.compute("val")["val/acc"]) == 1.0
    metrics.reset()
    metrics.update(torch.tensor([[0.9, 0.1]]), torch.tensor([1]))
    assert float(metrics.compute("val")["val/acc"]) == 0.0
