"""`python -m bcd.evaluate` on a checkpoint trained in the test: metrics with CIs, calibration, plots, report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from bcd.runs.summary import RunSummary
from tests.helpers.cli import run_cli
from tests.helpers.commands import run_evaluate


def test_evaluate_writes_the_whole_report(trained_copy: RunSummary, tmp_path: Path) -> None:
    result, out = run_evaluate(tmp_path, f"ckpt_path={trained_copy.checkpoints.best}")
    n_test = sum(trained_copy.dataset.counts["test"].values())
    assert result["n_images"] == n_test
    for name in ("acc", "balanced_acc", "macro_f1", "auroc", "sensitivity", "specificity", "f1/Benign"):
        estimate = result["metrics"][name]
        assert estimate["low"] <= estimate["value"] <= estimate["high"], name
    # the point estimate is the one training reported for the same checkpoint and split
    assert result["metrics"]["acc"]["value"] == pytest.approx(trained_copy.metrics.test["test/acc"], abs=1e-6)
    assert result["metrics"]["macro_f1"]["value"] == pytest.approx(trained_copy.metrics.test["test/macro_f1"], abs=1e-6)
    assert result["calibration"]["temperature"] > 0
    assert {"ece", "brier"} <= set(result["calibration"]["before"]) and result["calibration"]["after"]

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["acc"] == result["metrics"]["acc"]
    fitted = json.loads((out / "calibration.json").read_text())
    assert fitted["temperature"] == result["calibration"]["temperature"]
    assert fitted["score"] == "energy" and fitted["ood_quantile"] == 0.95 and fitted["tta"] is False
    best = Path(trained_copy.checkpoints.best)
    assert json.loads(best.with_name(f"{best.stem}.calibration.json").read_text()) == fitted
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == n_test
    assert {"path", "true_label", "predicted_label", "prob_Pro", "confidence", "ood_score", "ood", "abstain"} <= set(rows[0])
    report = (out / "report.md").read_text()
    assert "| Benign |" in report and "95% CI" in report and "ECE" in report
    card = (out / "MODEL_CARD.md").read_text()
    assert "Intended use" in card and "not a diagnostic" in card and "no patient IDs" in card
    for png in ("confusion_matrix", "confusion_matrix_normalized", "roc", "precision_recall", "reliability",
                "training_curves"):
        image = Image.open(out / f"{png}.png")
        assert image.format == "PNG" and image.width > 300 and image.height > 300, png
        assert f"{png}.png" in report
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1
    # the review page beside the report, and its gallery (with the images) in W&B
    assert (out / "report.html").is_file() and len(list((out / "review").glob("*.jpg"))) >= 2 * n_test
    (table,) = (out / "wandb").glob("offline-run-*/files/media/table/evaluate/gallery_*.table.json")
    gallery = json.loads(table.read_text())
    assert gallery["columns"][:3] == ["image", "gradcam", "file"] and len(gallery["data"]) == n_test


def test_evaluate_a_new_dataset_on_all_images(trained: RunSummary, image_folder: Path, tmp_path: Path) -> None:
    overrides = [f"ckpt_path={trained.checkpoints.last}", "dataset=folder", f"dataset.root={image_folder}",
                 "split=all", "wandb=false"]
    result, out = run_evaluate(tmp_path, *overrides)
    assert result["n_images"] == 48
    assert not (out / "wandb").exists()
    # a temperature fitted on other data is not stored as the checkpoint's own
    last = Path(trained.checkpoints.last)
    assert not last.with_name(f"{last.stem}.calibration.json").exists()


def test_evaluate_refuses_a_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        run_evaluate(tmp_path, f"ckpt_path={tmp_path / 'nope.ckpt'}")


@pytest.mark.slow
def test_evaluate_from_the_command_line(trained_copy: RunSummary, tmp_path: Path) -> None:
    result = run_cli(["bcd.evaluate", f"ckpt_path={trained_copy.checkpoints.best}", "n_boot=100"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (report_dir,) = (tmp_path / "outputs" / "evaluate" / "runs").iterdir()
    assert (report_dir / "report.md").is_file() and (report_dir / "MODEL_CARD.md").is_file()


def test_tta_scores_every_orientation_alike(trained_copy: RunSummary, tmp_path: Path) -> None:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from bcd.inference.runners import TorchRunner, score_loader
    from bcd.inference.scores import probabilities
    from bcd.models.classifier import load_classifier

    model = load_classifier(trained_copy.checkpoints.best)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 3, 48, 48), dtype=np.uint8))
    turned = torch.rot90(images, 1, dims=(2, 3)).flip(3)  # another of the 8 views of each image
    targets = torch.zeros(6, dtype=torch.long)

    def probs(batch: torch.Tensor, tta: bool) -> np.ndarray:
        loader = DataLoader(TensorDataset(batch, targets), batch_size=4)
        logits, _ = score_loader(TorchRunner(model, torch.device("cpu")), loader, tta)
        assert logits.shape == (8 if tta else 1, 6, 4)  # one set of class logits per view
        return probabilities(logits).numpy()

    # the 8 views of an image and of its turned copy are the same set: TTA scores them alike, plain scoring not
    assert np.allclose(probs(images, True), probs(turned, True), atol=1e-5)
    assert not np.allclose(probs(images, False), probs(turned, False), atol=1e-5)

    result, out = run_evaluate(tmp_path, f"ckpt_path={trained_copy.checkpoints.last}", "tta=true", "wandb=false",
                               "shift.strengths=[0.15]")
    assert result["tta"] is True and "Test-time augmentation" in (out / "report.md").read_text()
    assert 0.0 <= result["robust_acc"]["value"] <= 1.0


def test_a_run_trained_with_tta_is_tested_evaluated_and_predicted_with_it(train_run, synthetic_root: Path,
                                                                           tmp_path: Path) -> None:
    from tests.helpers.commands import run_predict

    summary = train_run("tta=true")
    assert summary.tta is True
    for name in ("default", "single"):
        (tmp_path / name).mkdir()
    best = summary.checkpoints.best
    # bcd.evaluate's default (tta=null) follows the checkpoint, and its numbers are the ones the run's test gave
    result, _ = run_evaluate(tmp_path / "default", f"ckpt_path={best}", "wandb=false", "shift.strengths=[0.15]")
    assert result["tta"] is True
    assert result["metrics"]["acc"]["value"] == pytest.approx(summary.metrics.test["test/acc"], abs=1e-6)
    assert result["metrics"]["macro_f1"]["value"] == pytest.approx(summary.metrics.test["test/macro_f1"],
                                                                   abs=1e-6)
    single, _ = run_evaluate(tmp_path / "single", f"ckpt_path={best}", "wandb=false", "tta=false", "shift=none")
    assert single["tta"] is False
    predicted, _, _ = run_predict(tmp_path, f"ckpt_path={best}", f"inputs={synthetic_root}")
    assert predicted["tta"] is True


def test_images_are_scored_in_batches_that_fit_the_memory_budget(trained_copy: RunSummary, image_folder: Path,
                                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a peak of 100 MiB + 10 MiB per image, a budget of 0.2 GiB (205 MiB) holds 10 images: evaluate and predict
    score in batches of 10 (not necessarily a divisor: nothing is accumulated), and the numbers do not change."""
    from bcd.models import memory
    from tests.helpers.commands import run_predict
    from tests.test_memory import linear_peak

    whole, _ = run_evaluate(tmp_path, f"ckpt_path={trained_copy.checkpoints.best}", "wandb=false", "batch_size=32",
                            "shift=none", "report_html=false", name="whole")
    monkeypatch.setattr(memory, "probe_peak", linear_peak())
    fitted, _ = run_evaluate(tmp_path, f"ckpt_path={trained_copy.checkpoints.best}", "wandb=false", "batch_size=32",
                             "shift=none", "report_html=false", "memory_budget=0.2", name="fitted")
    assert (whole["batch_size"], fitted["batch_size"]) == (32, 10)
    for name in ("acc", "macro_f1", "auroc"):
        assert fitted["metrics"][name]["value"] == pytest.approx(whole["metrics"][name]["value"], abs=1e-6), name
    summary, _, _ = run_predict(tmp_path, f"ckpt_path={trained_copy.checkpoints.best}", f"inputs={image_folder}",
                                "batch_size=32", "memory_budget=0.2", "report_html=false")
    assert summary["batch_size"] == 10
    with pytest.raises(MemoryError, match=r"even a micro-batch of 1 .* raise memory_budget"):
        run_evaluate(tmp_path, f"ckpt_path={trained_copy.checkpoints.best}", "memory_budget=0.05", name="tiny")
