"""Accuracy under controlled colour shifts (bcd.evaluate shift=...): the stain-shortcut check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from bcd.data.shifted import ShiftedImages
from bcd.models.classifier import Classifier
from bcd.models.inference import predict_logits
from bcd.reporting import stats

SHIFT_METRICS = ("acc", "macro_f1")


def evaluate_shifts(
    model: Classifier,
    paths: Sequence[Path],
    targets: np.ndarray,
    img_size: int,
    shift: Mapping[str, Any],
    plain: Mapping[str, stats.Estimate],
    loader_options: Mapping[str, Any],
    device: torch.device,
    bootstrap_options: Mapping[str, Any],
    tta: bool = False,
) -> dict[str, Any]:
    """Accuracy and macro-F1 (with CIs) for every shift kind and strength; strength 0 is the plain evaluation."""
    rows = []
    for kind in shift["kinds"]:
        rows.append({"kind": kind, "strength": 0.0, **{m: plain[m].as_dict() for m in SHIFT_METRICS}})
        for strength in shift["strengths"]:
            images = ShiftedImages(paths, targets.tolist(), img_size, kind, strength, shift["seed"])
            logits, _ = predict_logits(model, DataLoader(images, **loader_options), device, tta)
            estimates = stats.bootstrap(stats.softmax_with_temperature(logits), targets, **bootstrap_options)
            rows.append({"kind": kind, "strength": float(strength), **{m: estimates[m].as_dict() for m in SHIFT_METRICS}})
    result: dict[str, Any] = {"seed": shift["seed"], "rows": rows}
    robust = [r for r in rows if r["kind"] == shift["robust_kind"] and r["strength"] == shift["robust_strength"]]
    if robust:
        result["robust_acc"] = {"kind": shift["robust_kind"], "strength": shift["robust_strength"], **robust[0]["acc"]}
    return result


def format_estimate(estimate: Mapping[str, float], digits: int = 3) -> str:
    """A stored {"value", "low", "high"} as "value [low–high]"."""
    return stats.Estimate(estimate["value"], estimate["low"], estimate["high"]).format(digits)


def shift_table(result: Mapping[str, Any]) -> list[list[str]]:
    """Rows (shift, strength, accuracy, macro-F1) for a markdown table."""
    return [
        [row["kind"], f"±{row['strength']:.0%}" if row["strength"] else "none",
         *(format_estimate(row[m]) for m in SHIFT_METRICS)]
        for row in result["rows"]
    ]
