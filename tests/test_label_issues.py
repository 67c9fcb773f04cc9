"""Ranking likely label errors from out-of-fold probabilities (cleanlab, self-confidence)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bcd.evaluation.label_issues import OutOfFold, label_issues, rank_label_issues


def flipped_labels(n: int = 1000, classes: int = 4, share: float = 0.05, seed: int = 0):
    """Out-of-fold probabilities of a good (not perfect) model, and labels of which `share` were flipped."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, n)
    logits = rng.normal(0, 1.0, (n, classes)) + 3.0 * np.eye(classes)[truth]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = truth.copy()
    flipped = rng.choice(n, int(share * n), replace=False)
    given[flipped] = (truth[flipped] + rng.integers(1, classes, len(flipped))) % classes
    return probs, given, set(flipped.tolist())


def test_the_top_of_the_ranking_finds_the_flipped_labels() -> None:
    probs, given, flipped = flipped_labels()
    top = set(rank_label_issues(probs, given)[: len(flipped)].tolist())
    recall = len(top & flipped) / len(flipped)
    precision = len(top & flipped) / len(top)
    assert recall >= 0.8 and precision >= 0.5, (recall, precision)


def test_candidates_carry_the_given_and_suggested_labels() -> None:
    probs, given, flipped = flipped_labels(n=200, seed=1)
    out_of_fold = OutOfFold([f"img{i}.jpg" for i in range(200)], probs, given, np.arange(200) % 5)
    issues = label_issues(out_of_fold, ["Benign", "Early", "Pre", "Pro"])
    assert [issue.rank for issue in issues] == list(range(1, len(issues) + 1))
    first = issues[0]
    k = int(first.path[3:-4])
    assert first.given == ["Benign", "Early", "Pre", "Pro"][given[k]] and first.self_confidence == probs[k, given[k]]
    assert first.suggested == ["Benign", "Early", "Pre", "Pro"][int(probs[k].argmax())] and first.fold == k % 5
    assert [i.self_confidence for i in issues] == sorted(i.self_confidence for i in issues)


def test_the_candidates_page_offers_no_grad_cam_switch(tmp_path: Path) -> None:
    """label_issues.html has no Grad-CAM maps (the fold models are not loaded), so it shows no switch for them."""
    from PIL import Image

    from bcd.reporting.label_issues import write_label_issue_pictures

    probs, given, _ = flipped_labels(n=40, seed=2)
    root = tmp_path / "images"
    root.mkdir()
    paths = []
    for i in range(40):
        paths.append(str(root / f"img{i}.png"))
        Image.new("RGB", (32, 32), (40 * (i % 6), 90, 160)).save(paths[-1])
    out_of_fold = OutOfFold(paths, probs, given, np.arange(40) % 5)
    issues = label_issues(out_of_fold, ["Benign", "Early", "Pre", "Pro"])
    assert issues
    cv_dir = tmp_path / "cv"
    cv_dir.mkdir()
    write_label_issue_pictures(cv_dir, issues, out_of_fold, ["Benign", "Early", "Pre", "Pro"], root)
    page = (cv_dir / "label_issues.html").read_text()
    assert 'id="gradcam"' not in page and "Grad-CAM is computed" not in page and 'id="gallery"' in page
