"""`python -m bcd.cv`: grouped, stratified k folds, one run per fold, and the aggregate of their predictions."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from bcd.cv import compose_cv, ensure_plan, run_cv
from bcd.data.folds import assign_folds, fold_split, read_folds
from bcd.data.sources import Sample
from bcd.evaluation.cv import read_predictions
from bcd.models.metrics import point_metrics
from bcd.utils.errors import ConfigError
from tests.helpers.cli import run_cli
from tests.helpers.configs import tiny_overrides

CLASSES = ["Benign", "Early", "Pre", "Pro"]


def grouped_labels(seed: int = 0) -> tuple[list[str], list[str]]:
    """80 labels (20 per class) in groups of 1 to 3 images of one class."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for name in CLASSES:
        i = 0
        while i < 20:
            size = min(int(rng.integers(1, 4)), 20 - i)
            labels += [name] * size
            groups += [f"{name}-{i}"] * size
            i += size
    return labels, groups


def test_folds_are_disjoint_cover_every_image_keep_groups_and_are_stratified() -> None:
    labels, groups = grouped_labels()
    folds = assign_folds(labels, groups, n_folds=4, seed=0)
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3]  # every image in exactly one fold
    fold_of_group = defaultdict(set)
    for group, fold in zip(groups, folds, strict=True):
        fold_of_group[group].add(int(fold))
    assert all(len(f) == 1 for f in fold_of_group.values())
    for fold in range(4):
        counts = Counter(label for label, f in zip(labels, folds, strict=True) if f == fold)
        assert all(abs(counts[name] - 5) <= 2 for name in CLASSES), counts  # 20 / 4 per class, groups of <= 3
    assert (assign_folds(labels, groups, 4, seed=0) == folds).all()
    assert not (assign_folds(labels, groups, 4, seed=1) == folds).all()


def test_a_fold_split_tests_its_fold_and_carves_a_grouped_val() -> None:
    labels, groups = grouped_labels()
    samples = [Sample(path=Path(f"/x/{i}.jpg"), label=label) for i, label in enumerate(labels)]
    folds = assign_folds(labels, groups, 4, seed=0)
    split = fold_split(samples, folds, 2, val_fraction=0.15, seed=0, groups=groups)
    assert [s.split == "test" for s in split] == [f == 2 for f in folds]
    assert Counter(s.split for s in split)["val"] >= 8
    sides = defaultdict(set)
    for sample, group in zip(split, groups, strict=True):
        sides[group].add(sample.split)
    assert all(len(s) == 1 for s in sides.values())


def test_too_many_folds_for_the_groups_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"folds: 5 folds need at least 5 independent images/groups, the data has 3"
    ):
        assign_folds(["a", "a", "b", "b"], ["g0", "g0", "g1", "g2"], 5, seed=0)


def test_duplicates_and_the_group_column_stay_in_one_fold(image_folder: Path, tmp_path: Path) -> None:
    """Through the datamodule: a byte-identical copy and the manifest's groups share the fold of their group."""
    shutil.copy(image_folder / "Pre" / "pre_0003.jpg", image_folder / "Pre" / "pre_copy.jpg")
    rows = [
        (p.relative_to(image_folder).as_posix(), p.parent.name) for p in sorted(image_folder.glob("*/*.jpg"))
    ]
    manifest = tmp_path / "labels.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group"])
        writer.writerows([path, label, f"{label}-slide{i // 3}"] for i, (path, label) in enumerate(rows))
    overrides = [
        *(o for o in tiny_overrides(tmp_path) if not o.startswith("dataset")),
        "dataset=manifest",
        f"dataset.root={image_folder}",
        f"dataset.manifest={manifest}",
    ]
    plan = ensure_plan(tmp_path / "cv", compose_cv([*overrides, "folds=3"]), image_level=False)
    assert (
        plan["split_method"] == "real-group"
        and plan["n_images"] == len(rows)
        and sum(plan["fold_sizes"]) == len(rows)
    )
    with (tmp_path / "cv" / "folds.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    fold_of = {row["path"]: row["fold"] for row in table}
    assert fold_of["Pre/pre_0003.jpg"] == fold_of["Pre/pre_copy.jpg"]
    slides = defaultdict(set)
    for i, (path, label) in enumerate(rows):
        slides[f"{label}-slide{i // 3}"].add(fold_of[path])
    assert all(len(f) == 1 for f in slides.values())
    for fold in range(3):  # fold i is the test split of manifests/fold_<i>.csv
        with (tmp_path / "cv" / "manifests" / f"fold_{fold}.csv").open(newline="") as handle:
            tested = {row["path"] for row in csv.DictReader(handle) if row["split"] == "test"}
        assert tested == {path for path, f in fold_of.items() if f == str(fold)}
    with pytest.raises(ConfigError, match=r"cv.dir: .* was planned with other settings .*'folds': \(3, 4\)"):
        ensure_plan(tmp_path / "cv", compose_cv([*overrides, "folds=4"]), image_level=False)


def cv_args(synthetic_cache: Path, cv_dir: Path, *args: str) -> list[str]:
    """A tiny CV's command line: the tiny training overrides, 2 folds, in cv_dir."""
    return [*tiny_overrides(synthetic_cache), "folds=2", f"cv.dir={cv_dir}", "cv.n_boot=50", *args]


@pytest.fixture(scope="module")
def cli_cv(synthetic_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's command on tiny data, with the image-level comparison: the CV dir it wrote."""
    cv_dir = tmp_path_factory.mktemp("cli") / "cv"
    result = run_cli(
        ["bcd.cv", *cv_args(synthetic_cache, cv_dir, "cv.compare_image_level=true")], cwd=cv_dir.parent
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return cv_dir


def fold_predictions(cv_dir: Path, folds: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    return [read_predictions(cv_dir / f"fold_{fold}" / "predictions.csv", CLASSES) for fold in range(folds)]


@pytest.mark.slow
def test_cli_writes_every_fold_and_the_aggregate(cli_cv: Path) -> None:
    for run_dir in (cli_cv, cli_cv / "image-level"):
        assert len(read_folds(run_dir / "folds.csv")) == 48
        for fold in range(2):
            assert (run_dir / f"fold_{fold}" / "summary.json").is_file()
            assert (run_dir / f"fold_{fold}" / "predictions.csv").is_file()
    result = json.loads((cli_cv / "cv.json").read_text())
    assert (result["folds"], result["n_images"], result["split_method"]) == (2, 48, "exact-dedup")
    assert [r["split_method"] for r in result["compare"]] == ["image-level"]
    report = (cli_cv / "cv_report.md").read_text()
    assert "## Mean ± std over folds" in report and "| image-level | 2 | 48 | 48 |" in report
    assert "## Folds: image-level" in report


@pytest.mark.slow
def test_aggregate_is_the_mean_of_the_folds_and_pooled_is_the_concatenation(cli_cv: Path) -> None:
    result = json.loads((cli_cv / "cv.json").read_text())
    predictions = fold_predictions(cli_cv)
    per_fold = [point_metrics(p, t, CLASSES, [1, 2, 3]) for p, t in predictions]
    for fold, metrics in enumerate(per_fold):
        assert result["per_fold"][fold]["metrics"]["macro_f1"] == pytest.approx(metrics["macro_f1"])
        tested = json.loads((cli_cv / f"fold_{fold}" / "summary.json").read_text())["metrics"]["test"]
        assert metrics["acc"] == pytest.approx(tested["test/acc"])  # the same images as the fold's own test
    for key in ("acc", "macro_f1", "balanced_acc", "auroc"):
        values = [m[key] for m in per_fold]
        assert result["mean"][key] == pytest.approx(np.mean(values))
        assert result["std"][key] == pytest.approx(np.std(values, ddof=1))
    pooled = point_metrics(
        np.concatenate([p for p, _ in predictions]),
        np.concatenate([t for _, t in predictions]),
        CLASSES,
        [1, 2, 3],
    )
    for key in ("acc", "macro_f1", "auroc", "sensitivity"):
        assert result["pooled"][key]["value"] == pytest.approx(pooled[key])
        assert result["pooled"][key]["low"] <= pooled[key] <= result["pooled"][key]["high"]


@pytest.mark.slow
def test_folds_run_separately_aggregate_to_the_same_result(
    cli_cv: Path, synthetic_cache: Path, tmp_path: Path
) -> None:
    cv_dir = tmp_path / "cv"
    assert run_cv(cv_args(synthetic_cache, cv_dir, "cv.fold=1")) is None  # e.g. on another machine
    assert not (cv_dir / "cv.json").exists()
    with pytest.raises(ConfigError, match=r"cv.dir: folds \[0\] of .* are not finished; train them"):
        run_cv(cv_args(synthetic_cache, cv_dir, "cv.aggregate=true"))
    run_cv(cv_args(synthetic_cache, cv_dir, "cv.fold=0"))
    separate = run_cv(cv_args(synthetic_cache, cv_dir, "cv.aggregate=true", f"cv.compare=[{cli_cv}]"))
    together = json.loads((cli_cv / "cv.json").read_text())
    for key in ("mean", "std", "pooled", "per_fold", "confusion_matrix", "fold_sizes"):
        assert json.dumps(separate[key]) == json.dumps(together[key]), key
    assert [r["dir"] for r in separate["compare"]] == [str(cli_cv)]
    with pytest.raises(FileExistsError, match="bcd never overwrites results"):
        run_cv(cv_args(synthetic_cache, cv_dir, "cv.aggregate=true"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["folds=1"], r"folds: 1 must be an integer >= 2, e.g. folds=5"),
        (["folds=3", "cv.fold=3"], r"cv.fold: 3 is not a fold of folds=3; choose 0..2"),
        (
            ["cv.aggregate=true", "cv.dir=null"],
            r"cv.aggregate=true aggregates the finished folds of an existing CV dir",
        ),
        (["cv.aggregate=true"], r"cv.dir: .* is not a CV dir \(no cv_plan.json\)"),
        (["cv.compare=[/nonexistent/cv]"], r"cv.compare: /nonexistent/cv is not a CV dir"),
    ],
)
def test_mistakes_are_refused_before_training(tmp_path: Path, args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_cv([*tiny_overrides(tmp_path), f"cv.dir={tmp_path / 'cv'}", *args])
    assert not (tmp_path / "cv").exists()


@pytest.mark.slow
def test_cli_ranks_label_issue_candidates_from_the_out_of_fold_predictions(cli_cv: Path) -> None:
    rows = list(csv.DictReader((cli_cv / "label_issues.csv").open()))
    with (cli_cv / "label_issues.csv").open() as handle:
        assert handle.readline().strip() == "rank,path,given_label,suggested_label,self_confidence,fold"
    assert [int(row["rank"]) for row in rows] == list(range(1, len(rows) + 1))
    oof = {Path(row["path"]).name: row for fold in range(2)
           for row in csv.DictReader((cli_cv / f"fold_{fold}" / "predictions.csv").open())}
    for row in rows:  # each candidate's self-confidence is its out-of-fold probability of its own label
        prediction = oof[Path(row["path"]).name]
        assert float(row["self_confidence"]) == pytest.approx(float(prediction[f"prob_{row['given_label']}"]), abs=1e-5)
    kept = list(csv.DictReader((cli_cv / "label_issues_excluded.csv").open()))
    assert len(kept) == 48 - len(rows) and set(kept[0]) == {"path", "label", "group"}
    report = (cli_cv / "cv_report.md").read_text()
    assert "## Label-issue candidates" in report and "not corrections" in report
    assert (cli_cv / "label_issues.html").is_file() == bool(rows)
