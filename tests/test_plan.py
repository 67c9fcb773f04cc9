"""The split planner (bcd.data.plan.plan_split) is the only place a split is computed: the datamodule loads the plan
it is given without planning again, sweeps and cross-validation plan without a datamodule, and the plan written to a
run dir is the manifest a rerun reads back to the same split."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bcd.data import datamodule as datamodule_module
from bcd.data.datamodule import SmearDataModule
from bcd.data.plan import plan_split
from bcd.data.sources import DatasetError
from bcd.data.spec import dataset_config
from tests.helpers.paths import REPO


def test_the_datamodule_loads_a_given_plan_without_planning_again(synthetic_root: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    options = {"name": "t", "layout": "folder", "root": str(synthetic_root), "num_workers": 0}
    plan = plan_split(dataset_config(options), "multiclass", seed=3)
    assert {s.split for s in plan.samples} == {"train", "val", "test"} and len(plan.group_ids) == len(plan.samples)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the datamodule planned again")

    monkeypatch.setattr(datamodule_module, "plan_split", refuse)
    datamodule = SmearDataModule(**options, img_size=32, seed=3, plan=plan)
    datamodule.setup()
    assert [s.path for s in datamodule.split_samples("train")] == [s.path for s in plan.split_samples("train")]
    assert len(datamodule.datasets["val"]) == len(plan.split_samples("val"))
    assert datamodule.describe()["counts"] == plan.counts()
    (tmp_path / "run").mkdir()
    datamodule.prepare(tmp_path / "run", expected_classes=plan.class_names)  # a given plan: checked, written, kept
    assert datamodule.plan is plan and (tmp_path / "run" / "split_manifest.csv").is_file()
    with pytest.raises(DatasetError, match="differ from the checkpoint's"):
        datamodule.prepare(expected_classes=["a", "b"])

    # written to a run dir and read back, the plan is the same split
    plan.write(tmp_path)
    again = plan_split(dataset_config({**options, "split_manifest": str(tmp_path / "split_manifest.csv")}),
                       "multiclass", seed=99)
    assert [(s.path, s.split) for s in again.samples] == [(s.path, s.split) for s in plan.samples]


def test_a_plan_refuses_bad_options_before_reading_a_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dataset.on_bad_file: 'ignore' is not one of"):
        dataset_config({"name": "t", "root": str(tmp_path / "missing"), "on_bad_file": "ignore"})
    spec = dataset_config({"name": "t", "root": str(tmp_path / "missing"), "batch_size": 0})
    with pytest.raises(DatasetError, match="dataset.batch_size: 0 must be >= 1"):
        plan_split(spec, "multiclass", 0)
    with pytest.raises(ValueError, match=r"dataset: unknown option\(s\) \['dedupe'\]"):
        dataset_config({"name": "t", "root": ".", "dedupe": "near"})


def test_only_the_planner_assigns_splits() -> None:
    """assign_splits is called by plan_split and, for the val part of a CV fold's training images, bcd.data.folds."""
    callers = sorted(
        str(path.relative_to(REPO)) for path in (REPO / "bcd").rglob("*.py")
        if any(isinstance(node, ast.Call) and getattr(node.func, "id", None) == "assign_splits"
               for node in ast.walk(ast.parse(path.read_text())))
    )
    assert callers == ["bcd/data/folds.py", "bcd/data/plan.py"]
