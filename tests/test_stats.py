"""Tests for bcd.evaluation.stats: metrics against sklearn/torchmetrics, bootstrap CIs and calibration."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    precision_recall_fscore_support,
    roc_auc_score,
)
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError, MulticlassF1Score

from bcd.evaluation.calibration import fit_temperature
from bcd.evaluation.stats import (
    Estimate,
    bootstrap,
    brier_score,
    expected_calibration_error,
    reliability_bins,
)
from bcd.inference.scores import probabilities
from bcd.models.metrics import point_metrics


def softmax_with_temperature(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) of one view, as bcd.inference.scores defines it."""
    return probabilities(np.asarray(logits, dtype=np.float64)[None], temperature).numpy()

NAMES4 = ["benign", "early", "pre", "pro"]


def _random_probs(n: int, c: int, seed: int, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Informative random probabilities and targets (rounded so AUROC sees ties)."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), targets] += signal
    probs = softmax_with_temperature(np.round(logits, 1))
    return probs, targets


def _sklearn_reference(probs: np.ndarray, targets: np.ndarray, c: int) -> dict[str, object]:
    preds = probs.argmax(1)
    labels = list(range(c))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, r, f, s = precision_recall_fscore_support(targets, preds, labels=labels, zero_division=0)
        mp, mr, mf, _ = precision_recall_fscore_support(
            targets, preds, labels=labels, average="macro", zero_division=0
        )
        bal = balanced_accuracy_score(targets, preds)
    aucs = [roc_auc_score(targets == k, probs[:, k]) for k in labels]
    return {
        "acc": accuracy_score(targets, preds),
        "balanced_acc": bal,
        "p": p,
        "r": r,
        "f": f,
        "s": s,
        "mp": mp,
        "mr": mr,
        "mf": mf,
        "aucs": aucs,
    }


def test_point_metrics_match_sklearn_multiclass_with_unpredicted_class() -> None:
    probs, targets = _random_probs(300, 4, seed=1)
    probs[:, 3] *= 1e-3  # class 3 still occurs in the targets but is never the argmax
    probs /= probs.sum(1, keepdims=True)
    assert not (probs.argmax(1) == 3).any() and (targets == 3).any()

    m = point_metrics(probs, targets, NAMES4)
    ref = _sklearn_reference(probs, targets, 4)
    assert m["acc"] == pytest.approx(ref["acc"])
    assert m["balanced_acc"] == pytest.approx(ref["balanced_acc"])
    assert m["macro_precision"] == pytest.approx(ref["mp"])
    assert m["macro_recall"] == pytest.approx(ref["mr"])
    assert m["macro_f1"] == pytest.approx(ref["mf"])
    for k, name in enumerate(NAMES4):
        assert m[f"precision/{name}"] == pytest.approx(ref["p"][k])
        assert m[f"recall/{name}"] == pytest.approx(ref["r"][k])
        assert m[f"f1/{name}"] == pytest.approx(ref["f"][k])
        assert m[f"support/{name}"] == float(ref["s"][k])
        assert m[f"auroc/{name}"] == pytest.approx(ref["aucs"][k])
    assert m["precision/pro"] == 0.0 and m["f1/pro"] == 0.0
    assert m["auroc"] == pytest.approx(roc_auc_score(targets, probs, multi_class="ovr", average="macro"))


def test_point_metrics_match_sklearn_binary() -> None:
    rng = np.random.default_rng(2)
    targets = rng.integers(0, 2, 200)
    p1 = np.clip(np.round(0.5 + 0.3 * (targets - 0.5) + rng.normal(0, 0.25, 200), 2), 0, 1)
    probs = np.stack([1 - p1, p1], 1)
    m = point_metrics(probs, targets, ["benign", "malignant"], positive_classes=[1])
    ref = _sklearn_reference(probs, targets, 2)
    assert m["acc"] == pytest.approx(ref["acc"])
    assert m["balanced_acc"] == pytest.approx(ref["balanced_acc"])
    assert m["macro_f1"] == pytest.approx(ref["mf"])
    assert m["auroc"] == pytest.approx(roc_auc_score(targets, p1))
    assert m["auroc/benign"] == pytest.approx(m["auroc/malignant"])
    assert m["sensitivity"] == pytest.approx(ref["r"][1])
    assert m["specificity"] == pytest.approx(ref["r"][0])


def test_sensitivity_specificity_by_hand() -> None:
    # classes: 0 benign, 1-2 malignant subtypes; confusing two malignant subtypes still counts as detected
    targets = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    preds = np.array([0, 0, 2, 2, 0, 2, 1, 2])
    probs = np.eye(3)[preds] * 0.8 + 0.2 / 3
    m = point_metrics(probs, targets, ["benign", "m1", "m2"], positive_classes=[1, 2])
    assert m["sensitivity"] == pytest.approx(4 / 5)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["acc"] == pytest.approx(4 / 8)
    assert "sensitivity" not in point_metrics(probs, targets, ["benign", "m1", "m2"])


def test_auroc_nan_handling() -> None:
    probs, targets = _random_probs(60, 4, seed=3)
    targets = np.where(targets == 3, 0, targets)  # class 3 absent
    m = point_metrics(probs, targets, NAMES4)
    assert math.isnan(m["auroc/pro"])
    expected = np.mean([roc_auc_score(targets == k, probs[:, k]) for k in range(3)])
    assert m["auroc"] == pytest.approx(expected)

    only = point_metrics(probs, np.zeros(60, dtype=int), NAMES4)
    assert math.isnan(only["auroc"]) and math.isnan(only["auroc/benign"])


def test_macro_skips_class_absent_from_targets_and_predictions() -> None:
    probs, targets = _random_probs(200, 4, seed=4)
    keep = (targets != 3) & (probs.argmax(1) != 3)
    probs, targets = probs[keep], targets[keep]
    m = point_metrics(probs, targets, NAMES4)
    tm = MulticlassF1Score(4, average="macro")(torch.from_numpy(probs), torch.from_numpy(targets))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = precision_recall_fscore_support(targets, probs.argmax(1), average="macro", zero_division=0)
    assert m["macro_f1"] == pytest.approx(float(tm)) == pytest.approx(sk[2])


@pytest.mark.parametrize("c", [2, 4])
def test_matches_torchmetrics(c: int) -> None:
    probs, targets = _random_probs(400, c, seed=5 + c)
    names = [f"c{i}" for i in range(c)]
    m = point_metrics(probs, targets, names)
    p, t = torch.from_numpy(probs), torch.from_numpy(targets)
    assert m["acc"] == pytest.approx(float(MulticlassAccuracy(c, average="micro")(p, t)), abs=1e-6)
    assert m["macro_f1"] == pytest.approx(float(MulticlassF1Score(c, average="macro")(p, t)), abs=1e-6)
    ece_tm = MulticlassCalibrationError(num_classes=c, n_bins=15, norm="l1")(p.float(), t)
    assert expected_calibration_error(probs, targets) == pytest.approx(float(ece_tm), abs=1e-6)


def test_ece_matches_torchmetrics_with_saturated_confidence() -> None:
    probs, targets = _random_probs(100, 3, seed=9)
    probs[:10] = np.eye(3)[targets[:10]]  # confidence exactly 1.0 goes in torchmetrics' extra bin
    tm = MulticlassCalibrationError(num_classes=3, n_bins=15, norm="l1")(
        torch.from_numpy(probs).float(), torch.from_numpy(targets)
    )
    assert expected_calibration_error(probs, targets) == pytest.approx(float(tm), abs=1e-6)


def test_bootstrap_contains_point_estimate_and_is_seeded() -> None:
    probs, targets = _random_probs(150, 4, seed=10)
    a = bootstrap(probs, targets, NAMES4, positive_classes=[1, 2, 3], n_boot=200, seed=0)
    assert set(a) == set(point_metrics(probs, targets, NAMES4, positive_classes=[1, 2, 3]))
    for key in ["acc", "balanced_acc", "macro_f1", "auroc", "sensitivity", "specificity"]:
        assert a[key].low <= a[key].value <= a[key].high, key
        assert a[key].low < a[key].high, key
    assert bootstrap(probs, targets, NAMES4, positive_classes=[1, 2, 3], n_boot=200, seed=0) == a
    b = bootstrap(probs, targets, NAMES4, positive_classes=[1, 2, 3], n_boot=200, seed=1)
    assert b["acc"].value == a["acc"].value
    assert (b["acc"].low, b["acc"].high, b["auroc"].low) != (a["acc"].low, a["acc"].high, a["auroc"].low)


def test_bootstrap_narrows_with_more_samples() -> None:
    widths = {}
    for n in (100, 2000):
        probs, targets = _random_probs(n, 4, seed=11)
        est = bootstrap(probs, targets, NAMES4, n_boot=200, seed=0)["acc"]
        widths[n] = est.high - est.low
    assert widths[100] > 2.5 * widths[2000]


def test_bootstrap_degenerate_and_all_nan() -> None:
    probs, targets = _random_probs(40, 4, seed=12)
    zero = bootstrap(probs, targets, NAMES4, n_boot=0)
    for est in zero.values():
        assert est.low == est.value == est.high or math.isnan(est.value)
    targets = np.where(targets == 3, 0, targets)
    est = bootstrap(probs, targets, NAMES4, n_boot=50)["auroc/pro"]
    assert math.isnan(est.value) and math.isnan(est.low) and math.isnan(est.high)


def test_estimate_format_and_dict() -> None:
    e = Estimate(0.98213, 0.9704, 0.99051)
    assert e.format() == "0.982 [0.970–0.991]"
    assert e.format(2) == "0.98 [0.97–0.99]"
    assert Estimate(math.nan, math.nan, math.nan).format() == "n/a"
    assert Estimate(0.5, math.nan, math.nan).format() == "0.500 [n/a]"
    assert e.as_dict() == {"value": 0.98213, "low": 0.9704, "high": 0.99051}


def test_brier_score() -> None:
    targets = np.array([0, 1, 2, 3, 1])
    assert brier_score(np.eye(4)[targets], targets) == 0.0
    assert brier_score(np.full((5, 4), 0.25), targets) == pytest.approx(0.75)


def test_temperature_scaling_fixes_overconfidence() -> None:
    rng = np.random.default_rng(13)
    n, c = 4000, 4
    base = rng.normal(0.0, 1.5, size=(n, c))
    p = softmax_with_temperature(base)
    # Labels drawn from softmax(base) make the base logits calibrated by construction.
    targets = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1)
    over = 5.0 * base
    ece_before = expected_calibration_error(softmax_with_temperature(over), targets)
    assert ece_before > 0.15

    fitted = fit_temperature(over, targets)
    t = fitted.temperature
    assert fitted.status == "fitted" and 4.0 < t < 6.0
    ece_after = expected_calibration_error(softmax_with_temperature(over, t), targets)
    assert ece_after < 0.3 * ece_before and ece_after < 0.05
    assert fit_temperature(base, targets).temperature == pytest.approx(1.0, abs=0.2)


def test_no_temperature_is_fitted_when_val_has_no_errors() -> None:
    """Perfectly separated val logits would drive T towards 0 (overconfidence); none is reported, saying why."""
    targets = np.arange(40) % 4
    logits = np.eye(4)[targets] * 3.0 + np.random.default_rng(0).normal(0, 0.1, (40, 4))
    fitted = fit_temperature(logits, targets)
    assert fitted.temperature is None and fitted.status.startswith("not identified: 0 of 40 val images")


def test_fit_temperature_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="N >= 1"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="targets"):
        fit_temperature(np.zeros((5, 3)), np.zeros(4, dtype=int))


def test_softmax_and_reliability_bins() -> None:
    logits = np.array([[1000.0, 0.0], [0.0, 0.0]])
    assert np.allclose(softmax_with_temperature(logits), [[1.0, 0.0], [0.5, 0.5]])
    probs, targets = _random_probs(300, 4, seed=14)
    bins = reliability_bins(probs, targets, n_bins=10)
    assert bins["count"].sum() == 300 and len(bins["edges"]) == 11
    filled = bins["count"] > 0
    assert np.isnan(bins["confidence"][~filled]).all()
    conf = probs.max(1)
    assert np.all(bins["confidence"][filled] >= bins["edges"][:-1][filled])
    overall_acc = np.nansum(bins["accuracy"] * bins["count"]) / 300
    assert overall_acc == pytest.approx((probs.argmax(1) == targets).mean())
    assert np.nansum(bins["confidence"] * bins["count"]) / 300 == pytest.approx(conf.mean())


def test_confusion_matrix_and_calibration_report() -> None:
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    from bcd.evaluation.stats import calibration_report
    from bcd.models.metrics import confusion_matrix

    rng = np.random.default_rng(15)
    logits = rng.normal(size=(120, 3)) * 4
    targets = rng.integers(0, 3, 120)
    cm = confusion_matrix(logits.argmax(1), targets, 3)
    assert np.array_equal(cm, sk_confusion_matrix(targets, logits.argmax(1), labels=[0, 1, 2]))

    rep = calibration_report(logits[None], targets, temperature=2.0, n_bins=10)
    probs = softmax_with_temperature(logits, 2.0)
    assert rep["after"]["ece"] == pytest.approx(expected_calibration_error(probs, targets, 10))
    assert rep["after"]["brier"] == pytest.approx(brier_score(probs, targets))
    assert len(rep["curves"]) == 2
    no_t = calibration_report(logits[None], targets)
    assert no_t["after"] is None and no_t["temperature"] is None and len(no_t["curves"]) == 1


def test_energy_score_and_ood_threshold() -> None:
    from bcd.evaluation.calibration import fit_ood_threshold
    from bcd.inference.scores import energy

    logits = np.array([[10.0, 0.0, 0.0], [0.1, 0.0, 0.2]])
    scores = energy(logits[None]).numpy()
    expected = -np.log(np.exp(logits).sum(axis=1))
    np.testing.assert_allclose(scores, expected)
    assert scores[0] < scores[1]  # the confident image is more "in distribution"
    rng = np.random.default_rng(0)
    val = rng.normal(size=(1000, 4)) * 3
    threshold = fit_ood_threshold(val[None], quantile=0.9)
    assert np.mean(energy(val[None]).numpy() > threshold) == pytest.approx(0.1, abs=0.01)
