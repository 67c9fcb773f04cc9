"""Publication-style matplotlib figures for the evaluation report (headless: Agg backend, PNG at 150 dpi).

Every public function writes one PNG, closes its figure and returns the path written. Colours come from
the colour-blind-friendly tab10 palette; line styles also differ between classes so the curves stay
distinguishable in greyscale print.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve  # noqa: E402

from bcd.evaluation.result import ShiftRow  # noqa: E402

__all__ = [
    "plot_confusion_matrix",
    "plot_pr_curves",
    "plot_reliability",
    "plot_roc_curves",
    "plot_training_curves",
]

DPI = 150
_PALETTE = plt.get_cmap("tab10").colors
_LINESTYLES = ("-", "--", "-.", ":")
_STYLE = {
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "legend.framealpha": 0.9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.facecolor": "white",
}


def series_colour(i: int) -> tuple[float, float, float]:
    """The colour of the i-th series (colour-blind-friendly tab10), shared by every bcd figure."""
    return _PALETTE[i % len(_PALETTE)]


def _linestyle(i: int) -> str:
    return _LINESTYLES[(i // len(_PALETTE)) % len(_LINESTYLES)]


@contextmanager
def saved_figure(path: Path, **subplots_kwargs) -> Iterator[tuple[Figure, object]]:
    """Create a styled figure, yield (fig, axes), then save it to `path` and always close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(**subplots_kwargs)
        try:
            yield fig, axes
            fig.savefig(path, dpi=DPI, bbox_inches="tight")
        finally:
            plt.close(fig)


def _check_scores(
    probs: np.ndarray, targets: np.ndarray, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=float)
    targets = np.asarray(targets).astype(int).reshape(-1)
    if probs.ndim != 2:
        raise ValueError(f"probs must have shape (N, C), got {probs.shape}")
    if probs.shape[0] != targets.shape[0]:
        raise ValueError(f"probs has {probs.shape[0]} rows but targets has {targets.shape[0]}")
    if probs.shape[1] != len(class_names):
        raise ValueError(f"probs has {probs.shape[1]} columns but {len(class_names)} class names were given")
    return probs, targets


# --------------------------------------------------------------------------------------------------------------
# Confusion matrix
# --------------------------------------------------------------------------------------------------------------


def plot_confusion_matrix(
    matrix: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    normalize: bool = False,
    title: str | None = None,
) -> Path:
    """Confusion matrix heatmap (rows: true class, columns: predicted), counts or row-normalised."""
    counts = np.asarray(matrix, dtype=float)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"matrix must have shape ({n}, {n}) for {n} class names, got {counts.shape}")
    row_totals = counts.sum(axis=1)
    if normalize:
        # An empty row (class absent from the evaluation set) shows 0 % rather than NaN.
        values = np.divide(
            counts, row_totals[:, None], out=np.zeros_like(counts), where=row_totals[:, None] > 0
        )
        values *= 100.0
        vmax = 100.0
        cbar_label = "Share of true class (%)"
        title = title or "Confusion matrix (row-normalised)"
        row_labels = [
            f"{name}\n(n={int(total)})" for name, total in zip(class_names, row_totals, strict=True)
        ]
    else:
        values = counts
        vmax = max(float(values.max()), 1.0)
        cbar_label = "Number of images"
        title = title or "Confusion matrix"
        row_labels = list(class_names)

    side = max(4.5, 1.1 * n + 2.5)
    with saved_figure(path, figsize=(side + 1.0, side)) as (fig, ax):
        image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
        cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        cbar.set_label(cbar_label)
        if normalize:
            cbar.ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
        font = 12 if n <= 4 else (10 if n <= 8 else 8)
        for i in range(n):
            for j in range(n):
                v = values[i, j]
                text = f"{v:.1f}%" if normalize else f"{int(round(v))}"
                colour = "white" if v > 0.55 * vmax else "black"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=font)
        ax.set_xticks(range(n), labels=list(class_names))
        ax.set_yticks(range(n), labels=row_labels)
        long_names = max((len(c) for c in class_names), default=0) > 8 or n > 4
        if long_names:
            plt.setp(ax.get_xticklabels(), rotation=35, ha="right", rotation_mode="anchor")
        ax.set_xlabel("Predicted class")
        ax.set_ylabel("True class")
        ax.set_title(title)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=1.5)
        ax.tick_params(which="minor", length=0)
    return Path(path)


# --------------------------------------------------------------------------------------------------------------
# ROC and precision-recall
# --------------------------------------------------------------------------------------------------------------


def plot_roc_curves(probs: np.ndarray, targets: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """One-vs-rest ROC curve per class with its AUC in the legend, plus the chance diagonal."""
    probs, targets = _check_scores(probs, targets, class_names)
    with saved_figure(path, figsize=(6.0, 5.5)) as (_fig, ax):
        ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="Chance (AUC 0.500)")
        for k, name in enumerate(class_names):
            positives = targets == k
            n_pos = int(positives.sum())
            if n_pos == 0 or n_pos == len(targets):
                # One-vs-rest ROC is undefined without both positives and negatives.
                reason = "absent" if n_pos == 0 else "no negatives"
                ax.plot([], [], color=series_colour(k), linestyle=":", label=f"{name} ({reason})")
                continue
            fpr, tpr, _ = roc_curve(positives, probs[:, k])
            ax.plot(
                fpr,
                tpr,
                color=series_colour(k),
                linestyle=_linestyle(k),
                linewidth=2,
                label=f"{name} (AUC {auc(fpr, tpr):.3f}, n={n_pos})",
            )
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("False positive rate (1 − specificity)")
        ax.set_ylabel("True positive rate (sensitivity)")
        ax.set_title("ROC curves (one-vs-rest)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    return Path(path)


def plot_pr_curves(probs: np.ndarray, targets: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """One-vs-rest precision-recall curve per class with average precision in the legend."""
    probs, targets = _check_scores(probs, targets, class_names)
    with saved_figure(path, figsize=(6.0, 5.5)) as (_fig, ax):
        for k, name in enumerate(class_names):
            positives = targets == k
            n_pos = int(positives.sum())
            if n_pos == 0:
                ax.plot([], [], color=series_colour(k), linestyle=":", label=f"{name} (absent)")
                continue
            precision, recall, _ = precision_recall_curve(positives, probs[:, k])
            ap = average_precision_score(positives, probs[:, k])
            prevalence = n_pos / len(targets)
            ax.step(
                recall,
                precision,
                where="post",
                color=series_colour(k),
                linestyle=_linestyle(k),
                linewidth=2,
                label=f"{name} (AP {ap:.3f}, prevalence {prevalence:.2f})",
            )
            # A random classifier's precision equals the class prevalence.
            ax.axhline(prevalence, color=series_colour(k), linestyle=":", linewidth=1, alpha=0.7)
        ax.plot([], [], color="0.4", linestyle=":", linewidth=1, label="Chance level (= prevalence)")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.05)
        ax.set_aspect("equal")
        ax.set_xlabel("Recall (sensitivity)")
        ax.set_ylabel("Precision (positive predictive value)")
        ax.set_title("Precision-recall curves (one-vs-rest)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    return Path(path)


# --------------------------------------------------------------------------------------------------------------
# Reliability diagram
# --------------------------------------------------------------------------------------------------------------


def plot_reliability(
    curves: dict[str, dict[str, np.ndarray]], path: Path, title: str = "Reliability diagram"
) -> Path:
    """Reliability diagram: accuracy vs confidence per bin for one or more calibrations (e.g. before/after temperature scaling), with the diagonal; each curve's label (e.g. with its ECE, bcd.evaluation.stats.calibration_report) in the legend."""
    if not curves:
        raise ValueError("curves is empty: nothing to plot")
    with saved_figure(
        path,
        nrows=2,
        ncols=1,
        sharex=True,
        figsize=(6.0, 6.8),
        gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08},
    ) as (_fig, (ax, ax_hist)):
        ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="Perfect calibration")
        n_curves = len(curves)
        lo, hi = 1.0, 0.0
        for i, (label, curve) in enumerate(curves.items()):
            edges = np.asarray(curve["edges"], dtype=float)
            count = np.asarray(curve["count"], dtype=float)
            conf = np.asarray(curve["confidence"], dtype=float)
            acc = np.asarray(curve["accuracy"], dtype=float)
            if not (len(edges) == len(count) + 1 == len(conf) + 1 == len(acc) + 1):
                raise ValueError(
                    f"curve {label!r}: edges must have one more entry than confidence/accuracy/count"
                )
            lo, hi = min(lo, float(edges[0])), max(hi, float(edges[-1]))
            keep = (count > 0) & np.isfinite(conf) & np.isfinite(acc)
            ax.plot(
                conf[keep],
                acc[keep],
                color=series_colour(i),
                linestyle=_linestyle(i),
                marker="os^Dv"[i % 5],
                markersize=6,
                linewidth=2,
                label=label,
            )
            # Overlaid translucent step histograms: every bin stays aligned with its confidence range.
            ax_hist.stairs(count, edges, fill=True, color=series_colour(i), alpha=0.25 if n_curves > 1 else 0.5)
            ax_hist.stairs(count, edges, color=series_colour(i), linestyle=_linestyle(i), linewidth=1.5)
        ax.set_xlim(lo, hi)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("Accuracy (fraction correct)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
        ax_hist.set_xlabel("Confidence (max predicted probability)")
        ax_hist.set_ylabel("Images\nper bin")
        ax_hist.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
        ax_hist.set_ylim(bottom=0)
        ax_hist.grid(axis="y", alpha=0.3)
    return Path(path)


# --------------------------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------------------------

_LOSS_COLUMNS = (("train/loss_epoch", "train loss"), ("train/loss", "train loss"), ("val/loss", "val loss"))
_SCORE_COLUMNS = (
    ("train/acc", "train accuracy"),
    ("val/acc", "val accuracy"),
    ("val/macro_f1", "val macro F1"),
)


def _read_epoch_table(metrics_csv: Path) -> dict[str, dict[int, float]]:
    """Column -> {epoch: value}, keeping the last non-empty numeric value of each column per epoch."""
    table: dict[str, dict[int, float]] = {}
    with Path(metrics_csv).open(newline="") as handle:
        for row in csv.DictReader(handle):
            raw_epoch = (row.get("epoch") or "").strip()
            if not raw_epoch:
                continue
            try:
                epoch = int(float(raw_epoch))
            except ValueError:
                continue
            for column, raw in row.items():
                if column in (None, "epoch", "step") or raw is None or not raw.strip():
                    continue
                try:
                    value = float(raw)
                except ValueError:
                    continue
                if math.isfinite(value):
                    table.setdefault(column, {})[epoch] = value
    return table


def _plot_series(
    ax, table: dict[str, dict[int, float]], columns: list[tuple[str, str]], styles: dict
) -> None:
    for i, (column, label) in enumerate(columns):
        series = table[column]
        epochs = sorted(series)
        values = [series[e] for e in epochs]
        colour, linestyle = styles.get(column, (series_colour(i), "-"))
        ax.plot(
            epochs,
            values,
            color=colour,
            linestyle=linestyle,
            linewidth=2,
            marker="o" if len(epochs) <= 40 else None,
            markersize=4,
            label=label,
        )


def plot_training_curves(metrics_csv: Path, path: Path) -> Path | None:
    """Loss and accuracy per epoch (train and val) from a Lightning CSVLogger metrics.csv; None if the file is missing or has no epoch rows."""
    metrics_csv = Path(metrics_csv)
    if not metrics_csv.is_file():
        return None
    table = _read_epoch_table(metrics_csv)
    if not table:
        return None

    loss_cols: list[tuple[str, str]] = []
    for column, label in _LOSS_COLUMNS:
        if column in table and label not in {lab for _, lab in loss_cols}:
            loss_cols.append((column, label))
    score_cols = [(c, lab) for c, lab in _SCORE_COLUMNS if c in table]
    panels = [
        (cols, ylabel, name)
        for cols, ylabel, name in (
            (loss_cols, "Loss", "Loss"),
            (score_cols, "Accuracy / macro F1" if "val/macro_f1" in table else "Accuracy", "Accuracy"),
        )
        if cols
    ]
    if not panels:
        return None

    # Same colour per split across panels (train blue, val orange), F1 dashed green.
    styles = {
        "train/loss_epoch": (series_colour(0), "-"),
        "train/loss": (series_colour(0), "-"),
        "val/loss": (series_colour(1), "-"),
        "train/acc": (series_colour(0), "-"),
        "val/acc": (series_colour(1), "-"),
        "val/macro_f1": (series_colour(2), "--"),
    }
    with saved_figure(path, nrows=1, ncols=len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False) as (
        fig,
        axes,
    ):
        for ax, (cols, ylabel, name) in zip(axes[0], panels, strict=True):
            _plot_series(ax, table, cols, styles)
            ax.set_xlabel("Epoch")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{name} per epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if name == "Accuracy":
                values = [v for c, _ in cols for v in table[c].values()]
                if all(0.0 <= v <= 1.0 for v in values):
                    ax.set_ylim(-0.02, 1.02)
                ax.legend(loc="lower right")
            else:
                ax.legend(loc="upper right")
        fig.suptitle("Training curves", fontsize=13, fontweight="bold")
        fig.tight_layout()
    return Path(path)


def plot_shift_curves(rows: Sequence[ShiftRow], path: Path) -> Path:
    """Accuracy and macro-F1 against shift strength, one line per shift kind, with the CI as a band."""
    kinds = list(dict.fromkeys(row.kind for row in rows))
    with saved_figure(path, ncols=2, figsize=(10, 4)) as (fig, axes):
        for ax, metric, label in zip(axes, ("acc", "macro_f1"), ("accuracy", "macro-F1"), strict=True):
            for i, kind in enumerate(kinds):
                points = sorted(((r.strength, getattr(r, metric)) for r in rows if r.kind == kind), key=lambda p: p[0])
                x = [100 * s for s, _ in points]
                ax.plot(x, [e.value for _, e in points], marker="o", color=series_colour(i), label=kind)
                ax.fill_between(x, [e.low for _, e in points], [e.high for _, e in points],
                                color=series_colour(i), alpha=0.15)
            ax.set_xlabel("shift strength s (%)")
            ax.set_ylabel(label)
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{label} under colour shifts")
            ax.legend(loc="lower left")
    return path
