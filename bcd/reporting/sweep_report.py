"""Sweep report: turn a finished (or running) Optuna study into sweep.md, trials.csv and a few PNGs.

The optimisation history and the parameter importances are Optuna's own matplotlib plots
(`optuna.visualization.matplotlib`, no plotly needed). The metric-by-model and Pareto figures stay our own,
drawn like the evaluation report (`bcd.reporting.plots`), because Optuna has no per-choice mean ± std plot
and its Pareto plot needs a multi-objective study, not a metric against recorded user attrs.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import optuna
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization import matplotlib as optuna_plots

# Reuse the evaluation report's figure helper so both reports look alike (Agg backend, dpi, rc style).
from bcd.models.memory import GIB
from bcd.reporting.plots import DPI, saved_figure, series_colour

__all__ = ["write_sweep_report"]

# The columns the sweep writes as user attrs, in the order trials.csv lists them after the params.
_ATTR_COLUMNS = (
    "n_params",
    "train_images_per_s",
    "test_acc",
    "test_macro_f1",
    "duration_s",
    "run_dir",
    "error",
)
_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
_MODEL_PARAM = "model"
_MODEL_SIZE = re.compile(r"(?:^|[_-])b(\d+)$", re.IGNORECASE)
_ERROR_CHARS = 300

_HOW_TO_READ = """\
- The values are **validation** metrics, and the sweep picked the winner on the same split, so the best
  value is optimistic. Confirm the winner on the test split with `bcd.evaluate` (point it at the best
  trial's run dir) before quoting a number.
- `bcd.evaluate` reports bootstrap confidence intervals of about ±3–5 points on ~120 test images.
  Differences between trials smaller than that are noise: prefer the smaller or faster model among trials
  within that band of the best (the Pareto figure shows that trade-off).
- Parameter importances (fANOVA) come from a forest fitted to a handful of trials; read them as hints
  about where to search next, not as effects.
"""


class _SkipFigure(Exception):
    """Raised by a plot helper when the study cannot support its figure; the message says why."""


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------


def write_sweep_report(
    study: optuna.Study, sweep_dir: Path, metric: str = "val/macro_f1", direction: str = "maximize"
) -> Path:
    """Write sweep.md, trials.csv and the sweep's PNGs into sweep_dir; returns the sweep.md path."""
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    trials = list(study.get_trials(deepcopy=False))
    maximize = direction == "maximize"
    complete = _sorted_best_first(_complete_trials(trials), maximize)
    params = _param_names(trials)
    group = _group_param(trials)

    _write_trials_csv(trials, params, sweep_dir / "trials.csv")
    figures = {
        "metric_by_model.png": lambda path: _plot_metric_by_group(complete, group, metric, path),
        "pareto.png": lambda path: _plot_pareto(complete, group, metric, maximize, path),
        "history.png": lambda path: _plot_history(study, complete, metric, path),
        "importance.png": lambda path: _plot_importance(study, complete, metric, path),
    }
    outcomes = {name: _render(plot, sweep_dir / name) for name, plot in figures.items()}

    markdown = _markdown(study, trials, complete, params, metric, direction, outcomes, sweep_dir)
    report = sweep_dir / "sweep.md"
    report.write_text(markdown, encoding="utf-8")
    return report


def _render(plot: Callable[[Path], None], path: Path) -> str | None:
    """Run one plot helper; return None when it wrote `path`, else the reason it was skipped."""
    try:
        plot(path)
        return None
    except _SkipFigure as skip:
        # A PNG left from an earlier report of the same sweep would otherwise look current.
        path.unlink(missing_ok=True)
        return str(skip)


# --------------------------------------------------------------------------------------------------------------
# Trial helpers
# --------------------------------------------------------------------------------------------------------------


def _complete_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and _finite(t.value)]


def _sorted_best_first(trials: Sequence[FrozenTrial], maximize: bool) -> list[FrozenTrial]:
    return sorted(trials, key=lambda t: (-t.value if maximize else t.value, t.number))


def _param_names(trials: Sequence[FrozenTrial]) -> list[str]:
    """Union of param names over all trials, in the order they first appear (the search space order)."""
    names: dict[str, None] = {}
    for trial in trials:
        names.update(dict.fromkeys(trial.params))
    return list(names)


def _group_param(trials: Sequence[FrozenTrial]) -> str | None:
    """The param to colour and group by: `model` when swept, else the first categorical param."""
    categorical: dict[str, None] = {}
    for trial in trials:
        for name, distribution in trial.distributions.items():
            if isinstance(distribution, CategoricalDistribution):
                categorical.setdefault(name, None)
    if _MODEL_PARAM in categorical or any(_MODEL_PARAM in t.params for t in trials):
        return _MODEL_PARAM
    return next(iter(categorical), None)


def _choice_order(value: Any) -> tuple:
    """Sort key for categorical choices: EfficientNet sizes b0 < b1 < ... < b7 first, then numbers, then text."""
    match = _MODEL_SIZE.search(str(value))
    if match:
        return (0, int(match.group(1)), str(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (1, float(value), str(value))
    return (2, 0.0, str(value))


def _attr_float(trial: FrozenTrial, name: str) -> float | None:
    value = trial.user_attrs.get(name)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _duration_s(trial: FrozenTrial) -> float | None:
    """The sweep's own timing when it recorded one, else Optuna's start/complete timestamps."""
    duration = _attr_float(trial, "duration_s")
    if duration is None and trial.datetime_start and trial.datetime_complete:
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
    return duration


def _pruned_epoch(trial: FrozenTrial) -> int | None:
    """The last step the trial reported before the pruner stopped it (None when it reported nothing)."""
    return max(trial.intermediate_values) if trial.intermediate_values else None


# --------------------------------------------------------------------------------------------------------------
# Pareto front
# --------------------------------------------------------------------------------------------------------------


def _pareto_front(
    objective: Sequence[float], cost: Sequence[float], maximize_objective: bool, maximize_cost: bool
) -> np.ndarray:
    """Boolean mask of the non-dominated points for two criteria (e.g. metric vs parameter count).

    A point is dominated when another is at least as good on both criteria and strictly better on one;
    ties (identical points) are all kept on the front.
    """
    # Flip signs so that "larger is better" on both axes.
    a = np.asarray(objective, dtype=float) * (1.0 if maximize_objective else -1.0)
    b = np.asarray(cost, dtype=float) * (1.0 if maximize_cost else -1.0)
    if a.shape != b.shape:
        raise ValueError(f"objective has {a.size} values but cost has {b.size}")
    at_least = (a[None, :] >= a[:, None]) & (b[None, :] >= b[:, None])
    strictly = (a[None, :] > a[:, None]) | (b[None, :] > b[:, None])
    return ~np.any(at_least & strictly, axis=1)


# --------------------------------------------------------------------------------------------------------------
# trials.csv
# --------------------------------------------------------------------------------------------------------------


def _write_trials_csv(trials: Sequence[FrozenTrial], params: Sequence[str], path: Path) -> None:
    columns = ["number", "state", "value", *params, *_ATTR_COLUMNS]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for trial in trials:
            row: dict[str, Any] = {"number": trial.number, "state": trial.state.name, "value": trial.value}
            row.update({name: trial.params.get(name) for name in params})
            row.update({name: trial.user_attrs.get(name) for name in _ATTR_COLUMNS})
            row["duration_s"] = _duration_s(trial)
            writer.writerow(row)


# --------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------


def _groups(trials: Sequence[FrozenTrial], group: str | None) -> list[Any]:
    if group is None:
        return []
    return sorted({t.params[group] for t in trials if group in t.params}, key=_choice_order)


def _better(maximize: bool) -> str:
    return "higher is better" if maximize else "lower is better"


def _plot_metric_by_group(
    complete: Sequence[FrozenTrial], group: str | None, metric: str, path: Path
) -> None:
    """Objective per choice of the grouping param: every trial as a point, mean ± std across trials."""
    if group is None:
        raise _SkipFigure("the study has no categorical parameter to group trials by")
    choices = _groups(complete, group)
    if not choices:
        raise _SkipFigure(f"no COMPLETE trial has a `{group}` parameter and a value")
    rng = np.random.default_rng(0)  # fixed jitter, so re-running the report gives the same PNG
    width = max(5.5, 0.9 * len(choices) + 2.5)
    with saved_figure(path, figsize=(width, 4.5)) as (fig, ax):
        labels = []
        for i, choice in enumerate(choices):
            values = np.array([t.value for t in complete if t.params.get(group) == choice])
            jitter = rng.uniform(-0.12, 0.12, size=values.size)
            ax.scatter(i + jitter, values, s=22, color=series_colour(i), alpha=0.55, linewidths=0, zorder=2)
            spread = values.std(ddof=1) if values.size > 1 else 0.0
            ax.errorbar(
                i + 0.3, values.mean(), yerr=spread, fmt="o", color=series_colour(i), markersize=7,
                markeredgecolor="black", capsize=4, elinewidth=1.5, zorder=3,
            )  # fmt: skip
            labels.append(f"{choice}\n(n={values.size})")
        ax.set_xticks(range(len(choices)), labels=labels)
        ax.set_xlim(-0.6, len(choices) - 0.3)
        ax.set_xlabel(group)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} by {group}")
        ax.grid(axis="y", alpha=0.3)
        ax.text(
            0.99, 0.01, "dots: trials; circle with bars: mean ± std", transform=ax.transAxes,
            ha="right", va="bottom", fontsize=8, color="0.35",
        )  # fmt: skip


def _plot_pareto(
    complete: Sequence[FrozenTrial], group: str | None, metric: str, maximize: bool, path: Path
) -> None:
    """Objective vs model size and vs training throughput, with each panel's Pareto front highlighted."""
    panels = (
        ("n_params", "Parameters (log scale)", False),
        ("train_images_per_s", "Training throughput (images/s)", True),
    )
    if not any(_attr_float(t, attr) is not None for t in complete for attr, _, _ in panels):
        raise _SkipFigure("no COMPLETE trial recorded `n_params` or `train_images_per_s`")
    choices = _groups(complete, group)
    with saved_figure(path, figsize=(11, 4.5), ncols=2, sharey=True) as (fig, axes):
        for ax, (attr, label, maximize_attr) in zip(axes, panels, strict=True):
            _pareto_panel(ax, complete, attr, maximize_attr, maximize, group, choices)
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
        axes[0].set_xscale("log")
        # Plain "4M, 6M, 10M" reads better than matplotlib's 4x10^6 for the narrow range of B0-B7 sizes.
        axes[0].xaxis.set_major_formatter(FuncFormatter(_millions))
        axes[0].xaxis.set_minor_formatter(FuncFormatter(lambda value, _: _millions(value, minor=True)))
        axes[0].set_ylabel(f"{metric} ({_better(maximize)})")
        axes[0].set_title("Metric vs model size")
        axes[1].set_title("Metric vs training speed")
        handles, labels = axes[0].get_legend_handles_labels()
        if not handles:
            handles, labels = axes[1].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), title=group, frameon=False)
        fig.tight_layout()


def _millions(value: float, position: int | None = None, minor: bool = False) -> str:
    """Tick label in millions; minor ticks only at 2, 3, 4, 6 x 10^k so labels do not collide."""
    if value <= 0:
        return ""
    mantissa = round(value / 10 ** math.floor(math.log10(value)))
    if minor and mantissa not in (2, 3, 4, 6):
        return ""
    return f"{value / 1e6:g}M"


def _pareto_panel(
    ax: Any,
    complete: Sequence[FrozenTrial],
    attr: str,
    maximize_attr: bool,
    maximize: bool,
    group: str | None,
    choices: Sequence[Any],
) -> None:
    """One Pareto panel: trials coloured by group, front connected and ringed, front trials numbered."""
    points = [
        (t, x) for t in complete if (x := _attr_float(t, attr)) is not None and (maximize_attr or x > 0)
    ]
    if not points:
        ax.text(0.5, 0.5, f"no trial recorded `{attr}`", transform=ax.transAxes, ha="center", color="0.4")
        return
    xs = np.array([x for _, x in points])
    ys = np.array([t.value for t, _ in points])
    for i, choice in enumerate(choices or [None]):
        chosen = [k for k, (t, _) in enumerate(points) if group is None or t.params.get(group) == choice]
        if chosen:
            ax.scatter(xs[chosen], ys[chosen], s=36, color=series_colour(i), label=str(choice), zorder=2)
    if group is not None:
        # Trials without the grouping param (conditional search spaces) still belong on the plot.
        ungrouped = [k for k, (t, _) in enumerate(points) if group not in t.params]
        if ungrouped:
            ax.scatter(xs[ungrouped], ys[ungrouped], s=36, color="0.6", label="(unset)", zorder=2)
    front = _pareto_front(ys, xs, maximize_objective=maximize, maximize_cost=maximize_attr)
    order = np.argsort(xs[front])
    ax.plot(xs[front][order], ys[front][order], "--", color="black", linewidth=1, zorder=1)
    ax.scatter(
        xs[front], ys[front], s=110, facecolors="none", edgecolors="black", linewidths=1.3,
        label="Pareto front", zorder=3,
    )  # fmt: skip
    for k in np.flatnonzero(front):
        ax.annotate(f"#{points[k][0].number}", (xs[k], ys[k]), xytext=(5, 5), textcoords="offset points",
                    fontsize=8)  # fmt: skip


@contextmanager
def _optuna_figure() -> Iterator[None]:
    """Keep an Optuna plot's side effects local: its ggplot style, its ExperimentalWarning, its open figures."""
    before = set(plt.get_fignums())
    with plt.rc_context(), warnings.catch_warnings():
        # experimental in Optuna since 2.2: the warning would repeat on every report, and
        # tests/test_sweep_report.py is what notices if these plots change
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            yield
        finally:
            for number in set(plt.get_fignums()) - before:
                plt.close(number)


def _save_axes(ax: Axes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(path, dpi=DPI, bbox_inches="tight")


def _plot_history(study: optuna.Study, complete: Sequence[FrozenTrial], metric: str, path: Path) -> None:
    """Optuna's optimisation history: every COMPLETE trial's value and the best so far (study.direction)."""
    if not complete:
        raise _SkipFigure("no COMPLETE trials yet")
    with _optuna_figure():
        _save_axes(optuna_plots.plot_optimization_history(study, target_name=metric), path)


def _plot_importance(study: optuna.Study, complete: Sequence[FrozenTrial], metric: str, path: Path) -> None:
    """Optuna's parameter-importance bar chart, with the fANOVA evaluator (seed 0, so reruns agree)."""
    if len(complete) < 2:
        raise _SkipFigure(f"needs at least 2 COMPLETE trials, the study has {len(complete)}")
    varying = [n for n in _param_names(complete) if len({repr(t.params.get(n)) for t in complete}) > 1]
    if not varying:
        raise _SkipFigure("no parameter takes more than one value across the COMPLETE trials")
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    with _optuna_figure():
        try:
            ax = optuna_plots.plot_param_importances(study, evaluator=evaluator, target_name=metric)
        except (ValueError, RuntimeError) as error:
            # Optuna refuses e.g. search spaces that differ between trials; the report still stands without it.
            raise _SkipFigure(f"Optuna could not compute importances: {error}") from error
        if not ax.patches:
            raise _SkipFigure("Optuna returned no importances: no parameter varies across COMPLETE trials")
        ax.set_xlabel(f"Importance for {metric} (fANOVA, share of variance)")
        _save_axes(ax, path)


# --------------------------------------------------------------------------------------------------------------
# sweep.md
# --------------------------------------------------------------------------------------------------------------

_FIGURE_TITLES = {
    "metric_by_model.png": "Metric by {group}",
    "pareto.png": "Metric vs cost (Pareto front)",
    "history.png": "Optimisation history",
    "importance.png": "Parameter importance",
}


def _cell(value: Any) -> str:
    """Format one markdown table cell: short numbers, and no characters that would break the table."""
    if value is None:
        return "–"
    if isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    return " ".join(text.split()).replace("|", "\\|")


def _n_params_text(value: float | None) -> str:
    return "–" if value is None else f"{value / 1e6:.2f} M"


def _score_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _speed_text(value: float | None) -> str:
    """Training images/s: whole numbers from 10 up, two significant digits below (B6 on a CPU is ~0.5)."""
    if value is None:
        return "–"
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _params_text(trial: FrozenTrial) -> str:
    return ", ".join(f"`{name}={_cell(value)}`" for name, value in trial.params.items()) or "(none)"


def _error_text(trial: FrozenTrial) -> str:
    # a trial fails without an error when its worker died: Optuna fails it once its heartbeat is stale
    default = "no error recorded: the worker stopped during the trial (killed, or its heartbeat went stale)"
    error = " ".join(str(trial.user_attrs.get("error", default)).split())
    if len(error) > _ERROR_CHARS:
        error = error[:_ERROR_CHARS] + " … (full text in trials.csv)"
    return error.replace("`", "'")


def _markdown(
    study: optuna.Study,
    trials: Sequence[FrozenTrial],
    complete: Sequence[FrozenTrial],
    params: Sequence[str],
    metric: str,
    direction: str,
    outcomes: dict[str, str | None],
    sweep_dir: Path,
) -> str:
    lines = [
        f"# Sweep report: {study.study_name}",
        "",
        f"Objective: **{direction}** `{metric}` (validation split). {len(trials)} trials in total.",
        "",
        *_counts_section(trials),
        *_best_section(complete, metric),
        *_table_section(complete, params, metric),
        *_problem_section(trials),
        *_figures_section(outcomes, _group_param(trials)),
        "## How to read this",
        "",
        _HOW_TO_READ,
        "## Live view",
        "",
        "Watch a running sweep (and browse every trial's curves) with Optuna Dashboard on the study's storage:",
        "",
        "```bash",
        f"optuna-dashboard sqlite:///{(sweep_dir / 'study.db').resolve()}",
        "```",
        "",
        "Use the storage URL the sweep was launched with if it is not the `study.db` next to this report.",
        "",
    ]
    return "\n".join(lines)


def _counts_section(trials: Sequence[FrozenTrial]) -> list[str]:
    lines = ["| state | trials |", "| --- | ---: |"]
    lines += [f"| {state.name} | {sum(t.state == state for t in trials)} |" for state in _STATES]
    return [*lines, ""]


def _best_section(complete: Sequence[FrozenTrial], metric: str) -> list[str]:
    lines = ["## Best trial", ""]
    if not complete:
        return [*lines, "No COMPLETE trials yet, so there is no best trial.", ""]
    best = complete[0]
    lines += [
        f"- **Trial #{best.number}**: `{metric}` = **{best.value:.4f}**",
        f"- Params: {_params_text(best)}",
    ]
    for attr, label in (("test_macro_f1", "test macro F1"), ("test_acc", "test accuracy")):
        value = _attr_float(best, attr)
        if value is not None:
            lines.append(f"- {label}: {value:.4f}")
    lines.append(f"- Run dir: `{best.user_attrs.get('run_dir', 'not recorded')}`")
    return [*lines, ""]


def _table_section(complete: Sequence[FrozenTrial], params: Sequence[str], metric: str) -> list[str]:
    header = ["trial", *params, metric, "test_acc", "n_params", "img/s", "micro-batch x accumulation",
              "peak memory: predicted / measured"]
    lines = [
        "## COMPLETE trials (best first)",
        "",
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "| " + " | ".join(["---:"] + ["---"] * len(params) + ["---:"] * 6) + " |",
    ]
    for trial in complete:
        row = [
            f"#{trial.number}",
            *(_cell(trial.params.get(name)) for name in params),
            f"{trial.value:.4f}",
            _score_text(_attr_float(trial, "test_acc")),
            _n_params_text(_attr_float(trial, "n_params")),
            _speed_text(_attr_float(trial, "train_images_per_s")),
            _memory_plan_text(trial),
            f"{_gib_text(_attr_float(trial, 'predicted_peak_bytes'))} / "
            f"{_gib_text(_attr_float(trial, 'measured_peak_bytes'))}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    if not complete:
        lines += ["", "_No COMPLETE trials yet._"]
    return [*lines, ""]


def _memory_plan_text(trial: FrozenTrial) -> str:
    """'8 x 4': the micro-batch the trial trained with and how many it accumulated per optimizer step."""
    micro, accumulate = trial.user_attrs.get("micro_batch"), trial.user_attrs.get("accumulate")
    return "-" if micro is None else f"{micro} x {accumulate}"


def _gib_text(value: float | None) -> str:
    """Bytes in GiB, '-' when not recorded (a given micro_batch predicts nothing)."""
    return "-" if value is None else f"{value / GIB:.2f} GiB"


def _problem_section(trials: Sequence[FrozenTrial]) -> list[str]:
    failed = [t for t in trials if t.state == TrialState.FAIL]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    lines = ["## FAIL and PRUNED trials", ""]
    if not failed and not pruned:
        return [*lines, "None.", ""]
    for trial in failed:
        lines.append(f"- FAIL trial #{trial.number} ({_params_text(trial)}): `{_error_text(trial)}`")
    for trial in pruned:
        epoch = _pruned_epoch(trial)
        if epoch is None:
            stopped = "pruned before it reported a value"
        else:
            stopped = f"pruned at epoch {epoch} (last value {trial.intermediate_values[epoch]:.4f})"
        lines.append(f"- PRUNED trial #{trial.number} ({_params_text(trial)}): {stopped}")
    return [*lines, ""]


def _figures_section(outcomes: dict[str, str | None], group: str | None) -> list[str]:
    lines = ["## Figures", ""]
    for name, skipped in outcomes.items():
        title = _FIGURE_TITLES[name].format(group=group or _MODEL_PARAM)
        if skipped is None:
            lines += [f"### {title}", "", f"![{title}]({name})", ""]
        else:
            lines += [f"### {title}", "", f"_Skipped: {skipped}._", ""]
    return lines
