"""Cross-validation results: per-fold metrics, their mean ± std, pooled out-of-fold metrics with bootstrap
CIs, and cv_report.md that sets several CV runs (e.g. proxy-group vs image-level splits) side by side."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bcd.evaluation.stats import Estimate
from bcd.reporting.markdown import markdown_table
from bcd.reporting.report import HEADLINE

FOLD_COLUMNS = [
    ("acc", "Accuracy"),
    ("balanced_acc", "Balanced acc."),
    ("macro_f1", "Macro F1"),
    ("auroc", "AUROC"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
]


def write_cv_report(path: Path, runs: Sequence[Mapping[str, Any]], sections: Sequence[str] = ()) -> None:
    """cv_report.md: one row per CV run (mean ± std over folds, pooled with CI), then each run's folds, then the
    given extra sections' lines (the label-issue candidates)."""
    first = runs[0]
    level = f"{first['ci_level']:.0%}"
    headline = [(key, label) for key, label in HEADLINE if key in first["pooled"]]
    lines = [
        f"# Cross-validation: {first['folds']} folds, {first['split_method']} split",
        "",
        f"- CV dir: `{first['dir']}`",
        f"- Command: `{first['command']}`",
        f"- Model: {first['model']}, task {first['task']}; dataset {first['dataset']} "
        f"(fingerprint `{first['fingerprint']}`), {first['n_images']} images, "
        f"classes {', '.join(first['class_names'])}",
        "- Folds: stratified group k-fold (scikit-learn StratifiedGroupKFold, seed "
        f"{first['seed']}); every group of images sits in one fold. Each fold trains on the other folds "
        "(a grouped val carved out of them picks the checkpoint) and is tested once.",
        f"- Pooled: the out-of-fold predictions of every image together; {level} intervals from "
        f"{first['n_boot']} bootstrap resamples of the images. Mean ± std: over folds (std with ddof=1).",
        "",
        "## Mean ± std over folds",
        "",
        *markdown_table(
            ["split", "folds", "images", "groups", *(label for _, label in headline)],
            [
                [
                    r["split_method"],
                    r["folds"],
                    r["n_images"],
                    r["n_groups"],
                    *(_mean_std(r, key) for key, _ in headline),
                ]
                for r in runs
            ],
        ),
        "",
        f"## Pooled out-of-fold metrics ({level} CI)",
        "",
        *markdown_table(
            ["split", *(label for _, label in headline)],
            [
                [r["split_method"], *(Estimate(**r["pooled"][key]).format() for key, _ in headline)]
                for r in runs
            ],
        ),
    ]
    for run in runs:
        lines += ["", f"## Folds: {run['split_method']} (`{run['dir']}`)", "", *_fold_table(run)]
        lines += ["", f"Pooled per class ({level} CI):", "", *_per_class_table(run)]
    path.write_text("\n".join([*lines, *sections]) + "\n")


def _mean_std(run: Mapping[str, Any], key: str, digits: int = 3) -> str:
    """'mean ± std' of a metric over a run's folds ('n/a' when undefined)."""
    mean, std = run["mean"][key], run["std"][key]
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:.{digits}f}"


def _fold_table(run: Mapping[str, Any]) -> list[str]:
    """One row per fold: its held-out images and their metrics."""
    columns = [(key, label) for key, label in FOLD_COLUMNS if key in run["mean"]]
    rows = [
        [fold["fold"], fold["n_images"], *(_number(fold["metrics"][key]) for key, _ in columns)]
        for fold in run["per_fold"]
    ]
    rows.append(["mean ± std", run["n_images"], *(_mean_std(run, key) for key, _ in columns)])
    return markdown_table(["fold", "test images", *(label for _, label in columns)], rows)


def _per_class_table(run: Mapping[str, Any]) -> list[str]:
    """Pooled precision, recall and F1 of every class, with CIs."""
    pooled = run["pooled"]
    return markdown_table(
        ["class", "precision", "recall", "F1", "images"],
        [
            [
                name,
                *(
                    Estimate(**pooled[f"{metric}/{name}"]).format()
                    for metric in ("precision", "recall", "f1")
                ),
                int(pooled[f"support/{name}"]["value"]),
            ]
            for name in run["class_names"]
        ],
    )


def _number(value: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"

