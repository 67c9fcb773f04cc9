"""Report figures: each plot writes a readable PNG, including on the edge cases evaluation can hit."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from bcd.reporting.plots import (
    plot_confusion_matrix,
    plot_pr_curves,
    plot_reliability,
    plot_roc_curves,
    plot_training_curves,
)
from tests.helpers.checks import assert_png

CLASSES = ["benign", "early pre-B", "pre-B", "pro-B"]




def fake_scores(
    n: int, n_classes: int, seed: int = 0, absent: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that favour the true class, so the curves are informative but imperfect."""
    rng = np.random.default_rng(seed)
    classes = [c for c in range(n_classes) if c != absent]
    targets = rng.choice(classes, size=n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), targets] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, targets


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_confusion_matrix_counts(tmp_path: Path, no_warnings) -> None:
    matrix = np.array([[40, 3, 1, 0], [2, 35, 5, 1], [0, 4, 30, 2], [1, 0, 3, 28]])
    out = plot_confusion_matrix(matrix, CLASSES, tmp_path / "cm.png")
    assert out == tmp_path / "cm.png"
    assert_png(out)


def test_confusion_matrix_normalised_with_empty_row(tmp_path: Path, no_warnings) -> None:
    matrix = np.array([[40, 3, 1, 0], [0, 0, 0, 0], [0, 4, 30, 2], [1, 0, 3, 28]])
    out = plot_confusion_matrix(
        matrix, CLASSES, tmp_path / "sub" / "cm_norm.png", normalize=True, title="Test set"
    )
    assert_png(out)


def test_confusion_matrix_rejects_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_confusion_matrix(np.zeros((3, 3)), CLASSES, tmp_path / "bad.png")


@pytest.mark.parametrize("plot", [plot_roc_curves, plot_pr_curves])
def test_curves_multiclass(tmp_path: Path, plot, no_warnings) -> None:
    probs, targets = fake_scores(200, 4)
    out = plot(probs, targets, CLASSES, tmp_path / f"{plot.__name__}.png")
    assert_png(out)


@pytest.mark.parametrize("plot", [plot_roc_curves, plot_pr_curves])
def test_curves_with_absent_class(tmp_path: Path, plot, no_warnings) -> None:
    probs, targets = fake_scores(120, 4, seed=1, absent=2)
    assert not (targets == 2).any()
    out = plot(probs, targets, CLASSES, tmp_path / f"{plot.__name__}_absent.png")
    assert_png(out)


@pytest.mark.parametrize("plot", [plot_roc_curves, plot_pr_curves])
def test_curves_binary(tmp_path: Path, plot, no_warnings) -> None:
    probs, targets = fake_scores(150, 2, seed=2)
    out = plot(probs, targets, ["benign", "malignant"], tmp_path / f"{plot.__name__}_binary.png")
    assert_png(out)


def test_curves_reject_mismatched_class_names(tmp_path: Path) -> None:
    probs, targets = fake_scores(20, 4)
    with pytest.raises(ValueError):
        plot_roc_curves(probs, targets, CLASSES[:3], tmp_path / "bad.png")


def binned(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1]), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    conf = np.full(n_bins, np.nan)
    acc = np.full(n_bins, np.nan)
    for b in range(n_bins):
        if count[b]:
            conf[b] = confidence[idx == b].mean()
            acc[b] = correct[idx == b].mean()
    return {"confidence": conf, "accuracy": acc, "count": count, "edges": edges}


def test_reliability_with_empty_bins(tmp_path: Path, no_warnings) -> None:
    rng = np.random.default_rng(3)
    before_conf = rng.uniform(0.6, 1.0, size=300)  # bins below 0.6 are empty
    before_correct = rng.uniform(size=300) < before_conf - 0.12  # overconfident
    after_conf = np.clip(before_conf - 0.1, 0.25, 1.0)
    after_correct = before_correct
    curves = {
        "before temperature scaling": binned(before_conf, before_correct),
        "after (ECE 0.021)": binned(after_conf, after_correct),
    }
    assert np.isnan(curves["before temperature scaling"]["confidence"]).any()
    out = plot_reliability(curves, tmp_path / "reliability.png")
    assert_png(out)


def test_reliability_single_curve(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    conf = rng.uniform(0.3, 1.0, size=100)
    curves = {"test set": binned(conf, rng.uniform(size=100) < conf, n_bins=15)}
    assert_png(plot_reliability(curves, tmp_path / "rel1.png", title="Calibration"))


METRICS_CSV = """epoch,lr-AdamW,step,train/acc,train/loss_epoch,train/loss_step,val/acc,val/loss,val/macro_f1
,0.00025,0,,,,,,
0,,2,,,,0.26,1.39,0.10
0,,2,0.23,1.40,,,,
,0.0002,3,,,1.37,,,
1,,5,,,,0.40,1.30,0.33
1,,5,0.30,1.35,,,,
2,,8,,,,0.55,1.10,0.50
2,,8,0.45,1.20,,,,
3,,11,,,,0.61,1.02,0.58
3,,11,0.58,1.05,,,,
4,,14,,,,0.66,0.98,0.63
4,,14,0.67,0.90,,,,
"""


def test_training_curves(tmp_path: Path, no_warnings) -> None:
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(METRICS_CSV)
    out = plot_training_curves(csv_path, tmp_path / "training.png")
    assert out == tmp_path / "training.png"
    assert_png(out)


def test_training_curves_missing_columns(tmp_path: Path, no_warnings) -> None:
    """No train/acc, no val/macro_f1, no lr column: plot what exists."""
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(
        "epoch,step,train/loss_epoch,val/acc,val/loss\n"
        "0,1,,0.5,0.9\n0,1,1.0,,\n1,3,,0.6,0.8\n1,3,0.85,,\n2,5,,0.7,0.7\n2,5,0.7,,\n"
    )
    assert_png(plot_training_curves(csv_path, tmp_path / "training_partial.png"))


def test_training_curves_none_without_data(tmp_path: Path) -> None:
    assert plot_training_curves(tmp_path / "nope.csv", tmp_path / "a.png") is None
    header_only = tmp_path / "header.csv"
    header_only.write_text("epoch,lr-AdamW,step,train/acc,train/loss_epoch,val/acc,val/loss\n")
    assert plot_training_curves(header_only, tmp_path / "b.png") is None
    lr_only = tmp_path / "lr_only.csv"
    lr_only.write_text("epoch,lr-AdamW,step,train/acc\n,0.001,0,\n,0.0009,1,\n")
    assert plot_training_curves(lr_only, tmp_path / "c.png") is None
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()
    assert not (tmp_path / "c.png").exists()
