"""Sweep report: sweep.md, trials.csv and the PNGs from an Optuna study, including empty and failed sweeps."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from bcd.reporting.sweep_report import _pareto_front, write_sweep_report
from tests.helpers.checks import assert_png

optuna.logging.set_verbosity(optuna.logging.WARNING)

MODELS = ["b0", "b1", "b2", "b3"]
N_PARAMS = {"b0": 4.0e6, "b1": 6.5e6, "b2": 7.7e6, "b3": 10.7e6}
SPEED = {"b0": 410.0, "b1": 290.0, "b2": 250.0, "b3": 170.0}
DISTRIBUTIONS = {
    "model": CategoricalDistribution([f"b{i}" for i in range(7)]),
    "optimizer.lr": FloatDistribution(1e-5, 1e-2, log=True),
    "loss": CategoricalDistribution(["ce", "focal"]),
}
FIGURES = ("metric_by_model.png", "pareto.png", "history.png", "importance.png")
ERROR = "CUDA out of memory. Tried to allocate 2.00 GiB"


def add_trial(
    study: optuna.Study, state: TrialState, params: dict, value: float | None = None, **kwargs
) -> None:
    distributions = {name: DISTRIBUTIONS[name] for name in params}
    study.add_trial(
        create_trial(params=params, distributions=distributions, value=value, state=state, **kwargs)
    )


def sweep_study() -> optuna.Study:
    """8 COMPLETE trials over b0..b3 x {ce, focal}, one PRUNED at epoch 3, one FAIL with an error."""
    study = optuna.create_study(direction="maximize", study_name="effnet-sweep")
    for i, (model, loss) in enumerate((m, loss) for m in MODELS for loss in ("ce", "focal")):
        value = 0.80 + 0.03 * MODELS.index(model) + (0.02 if loss == "focal" else 0.0) - 0.005 * (i % 3)
        attrs = {
            "run_dir": f"outputs/sweep/trial_{i}",
            "n_params": int(N_PARAMS[model]),
            "train_images_per_s": SPEED[model] * (1.0 + 0.05 * (i % 2)),
            "test_macro_f1": value - 0.02,
            "test_acc": value - 0.01,
            "duration_s": 120.0 + 10 * i,
        }
        params = {"model": model, "optimizer.lr": 10 ** (-4 + 0.2 * i), "loss": loss}
        add_trial(
            study, TrialState.COMPLETE, params, value, user_attrs=attrs, intermediate_values={0: value - 0.1}
        )
    add_trial(
        study, TrialState.PRUNED, {"model": "b4", "optimizer.lr": 1e-3, "loss": "ce"},
        intermediate_values={1: 0.41, 2: 0.44, 3: 0.45}, user_attrs={"run_dir": "outputs/sweep/trial_8"},
    )  # fmt: skip
    add_trial(
        study, TrialState.FAIL, {"model": "b4", "optimizer.lr": 3e-3, "loss": "focal"},
        user_attrs={"run_dir": "outputs/sweep/trial_9", "error": ERROR},
    )  # fmt: skip
    return study




@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One report of the standard sweep, shared by the tests that read it (the figures take a few seconds)."""
    return write_sweep_report(sweep_study(), tmp_path_factory.mktemp("sweep"))


def test_trials_csv_has_one_row_per_trial_with_params_and_attrs(report: Path) -> None:
    with (report.parent / "trials.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == [
        "number", "state", "value", "model", "optimizer.lr", "loss",
        "n_params", "train_images_per_s", "test_acc", "test_macro_f1", "duration_s", "run_dir", "error",
    ]  # fmt: skip
    assert len(rows) == 10
    assert [row["state"] for row in rows].count("COMPLETE") == 8
    failed = next(row for row in rows if row["state"] == "FAIL")
    assert failed["error"] == ERROR and failed["value"] == ""
    assert rows[0]["n_params"] == str(int(N_PARAMS["b0"]))


def test_sweep_md_names_best_trial_failures_and_pruning(report: Path) -> None:
    text = report.read_text()
    assert report.name == "sweep.md"
    assert "effnet-sweep" in text and "**maximize** `val/macro_f1`" in text
    # b3 + focal (trial 7) has the highest value in the synthetic sweep.
    assert "**Trial #7**" in text and "outputs/sweep/trial_7" in text
    assert "| COMPLETE | 8 |" in text and "| PRUNED | 1 |" in text and "| FAIL | 1 |" in text
    assert ERROR in text
    assert "PRUNED trial #8" in text and "epoch 3" in text
    table = [line for line in text.splitlines() if line.startswith("| #")]
    assert len(table) == 8 and table[0].startswith("| #7 |")
    for name in FIGURES:
        assert f"]({name})" in text
    assert "bcd.evaluate" in text and "optuna-dashboard sqlite:///" in text


@pytest.mark.parametrize("name", FIGURES)
def test_figures_are_readable_pngs(report: Path, name: str) -> None:
    assert_png(report.parent / name)


def test_optuna_figures_keep_their_style_and_warnings_to_themselves(tmp_path: Path) -> None:
    """Optuna's plots switch to ggplot and warn they are experimental; neither may leak into the caller."""
    style = dict(matplotlib.rcParams)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_sweep_report(sweep_study(), tmp_path / "first")
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
    assert dict(matplotlib.rcParams) == style and plt.get_fignums() == []
    # fANOVA runs with a fixed seed, so a rerun of the report draws the same importances
    write_sweep_report(sweep_study(), tmp_path / "second")
    for name in ("history.png", "importance.png"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()


def test_pareto_front_on_hand_made_points() -> None:
    # (metric, n_params): C is dominated by A (worse and bigger), D by B; E ties B exactly and stays.
    metric = [0.90, 0.95, 0.85, 0.93, 0.95]
    n_params = [4.0, 10.0, 7.0, 12.0, 10.0]
    front = _pareto_front(metric, n_params, maximize_objective=True, maximize_cost=False)
    np.testing.assert_array_equal(front, [True, True, False, False, True])
    # Throughput is maximised: the slow-but-best and fast-but-worse points both survive.
    speed = [400.0, 150.0, 500.0, 140.0]
    front = _pareto_front([0.90, 0.95, 0.85, 0.94], speed, maximize_objective=True, maximize_cost=True)
    np.testing.assert_array_equal(front, [True, True, True, False])
    # Minimising the metric (e.g. a loss) flips which low-cost point wins.
    front = _pareto_front([0.2, 0.1, 0.3], [1.0, 2.0, 1.0], maximize_objective=False, maximize_cost=False)
    np.testing.assert_array_equal(front, [True, True, False])


def test_empty_study_writes_report_without_figures(tmp_path: Path) -> None:
    path = write_sweep_report(optuna.create_study(direction="maximize", study_name="empty"), tmp_path)
    text = path.read_text()
    assert "No COMPLETE trials yet" in text and "| COMPLETE | 0 |" in text
    assert "| trial | val/macro_f1 | test_acc | n_params | img/s |" in text
    assert not list(tmp_path.glob("*.png"))
    with (tmp_path / "trials.csv").open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 0


def test_all_failed_study_lists_errors_and_skips_figures(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    for i, model in enumerate(("b5", "b6")):
        add_trial(study, TrialState.FAIL, {"model": model}, user_attrs={"error": f"boom {i} | bad"})
    add_trial(study, TrialState.PRUNED, {"model": "b0"})  # pruned before reporting, no user attrs
    text = write_sweep_report(study, tmp_path).read_text()
    assert "| FAIL | 2 |" in text and "boom 1 | bad" in text
    assert "pruned before it reported a value" in text
    assert text.count("_Skipped:") == 4
    assert not list(tmp_path.glob("*.png"))


def test_importance_skipped_with_reason_when_nothing_varies(tmp_path: Path) -> None:
    study = optuna.create_study(direction="minimize")
    for value in (0.3, 0.2):
        add_trial(study, TrialState.COMPLETE, {"model": "b0"}, value)
    text = write_sweep_report(study, tmp_path, metric="val/loss", direction="minimize").read_text()
    assert "no parameter takes more than one value" in text
    assert "**Trial #1**" in text  # minimising: 0.2 beats 0.3
    assert (tmp_path / "history.png").is_file() and not (tmp_path / "importance.png").exists()
    # No trial recorded n_params or throughput, so the Pareto figure is skipped too.
    assert not (tmp_path / "pareto.png").exists()


def test_without_model_param_groups_by_first_categorical(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    for i, loss in enumerate(("ce", "focal", "ce", "focal")):
        add_trial(
            study, TrialState.COMPLETE, {"optimizer.lr": 10 ** (-4 + 0.5 * i), "loss": loss}, 0.7 + 0.02 * i
        )
    text = write_sweep_report(study, tmp_path).read_text()
    assert "### Metric by loss" in text
    assert_png(tmp_path / "metric_by_model.png")


def test_table_shows_memory_plan_and_slow_speeds(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    gib = 1024**3
    attrs = {"train_images_per_s": 0.45, "micro_batch": 4, "accumulate": 8,
             "predicted_peak_bytes": 11.62 * gib, "measured_peak_bytes": 10.29 * gib}
    add_trial(study, TrialState.COMPLETE, {"model": "b6"}, 0.5, user_attrs=attrs)
    add_trial(study, TrialState.COMPLETE, {"model": "b0"}, 0.4, user_attrs={"train_images_per_s": 123.4})
    text = write_sweep_report(study, tmp_path).read_text()
    assert "| 0.45 | 4 x 8 | 11.62 GiB / 10.29 GiB |" in text  # B6 on a CPU is not "0 img/s"
    assert "| 123 | - | - / - |" in text  # no plan recorded: said, not invented
