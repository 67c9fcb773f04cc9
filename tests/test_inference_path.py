"""One inference path: bcd.evaluate and bcd.predict (torch and ONNX) give every image the same calibrated
probabilities and OOD score, and flag the same images, with and without test-time augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.commands import read_rows, run_evaluate, run_export, run_predict, train_tiny

PARITY = 1e-4  # conf/export.yaml parity_tolerance


def probabilities(row: dict) -> np.ndarray:
    """The prob_<class> columns of a row, in column order."""
    return np.array([float(v) for k, v in row.items() if k.startswith("prob_")])


def evaluate_then_predict(tmp_path: Path, synthetic_cache: Path, tta: bool, *predict_overrides: str):
    """Train (tested with or without tta), evaluate the val split, predict the same val images; the rows of both."""
    summary = train_tiny(tmp_path / "run", synthetic_cache, f"tta={str(tta).lower()}", "trainer.max_epochs=2")
    checkpoint = summary.checkpoints.last
    result, out = run_evaluate(tmp_path, f"ckpt_path={checkpoint}", "split=val", "shift=none", "wandb=false",
                               "ood_quantile=0.5", name="evaluate")
    assert result["tta"] is tta
    evaluated = read_rows(out / "predictions.csv")
    listing = tmp_path / "val.csv"
    listing.write_text("path\n" + "".join(f"{row['path']}\n" for row in evaluated))
    summary_predict, predicted, _ = run_predict(tmp_path, f"ckpt_path={checkpoint}", f"inputs={listing}",
                                                *predict_overrides)
    return evaluated, predicted, summary_predict, checkpoint


def assert_same_scores(evaluated: list[dict], predicted: list[dict], tolerance: float,
                       threshold: float | None = None) -> None:
    """Per image: the same calibrated probabilities and OOD score; the same images out of distribution (with another
    runtime, `threshold` given: apart from images whose score lies within `tolerance` of it)."""
    assert [row["path"] for row in predicted] == [row["path"] for row in evaluated]
    for ours, theirs in zip(predicted, evaluated, strict=True):
        np.testing.assert_allclose(probabilities(ours), probabilities(theirs), atol=tolerance)
        assert float(ours["ood_score"]) == pytest.approx(float(theirs["ood_score"]), abs=tolerance)
        assert ours["predicted_label"] == theirs["predicted_label"]
    # ood_quantile=0.5 of these very images: the threshold is one of their own scores
    undecided = set() if threshold is None else {
        row["path"] for row in evaluated if abs(float(row["ood_score"]) - threshold) <= tolerance}
    flagged = {row["path"] for row in predicted if row["ood"] == "True"} - undecided
    assert flagged == {row["path"] for row in evaluated if row["ood"] == "True"} - undecided
    assert 0 < len(flagged) < len(predicted)  # the flag can fire


@pytest.mark.parametrize("tta", [True, False])
def test_predict_scores_the_val_images_as_evaluate_did(tta: bool, tmp_path: Path, synthetic_cache: Path) -> None:
    evaluated, predicted, summary, _ = evaluate_then_predict(tmp_path, synthetic_cache, tta)
    assert summary["tta"] is tta and summary["temperature"] not in (None, 1.0)
    assert summary["calibration"].endswith(".tta.calibration.json" if tta else "last.calibration.json")
    assert_same_scores(evaluated, predicted, 1e-5)


def test_the_onnx_export_scores_them_alike(tmp_path: Path, synthetic_cache: Path) -> None:
    summary = train_tiny(tmp_path / "run", synthetic_cache, "tta=true", "trainer.max_epochs=2")
    checkpoint = summary.checkpoints.last
    run_evaluate(tmp_path, f"ckpt_path={checkpoint}", "split=val", "shift=none", "wandb=false", "ood_quantile=0.5",
                 name="evaluate")
    evaluated = read_rows(tmp_path / "evaluate" / "predictions.csv")
    export = run_export(tmp_path / "export", f"ckpt_path={checkpoint}")
    assert export["tta"] is True and export["parity"]["max_abs_diff_probs"] <= PARITY
    listing = tmp_path / "val.csv"
    listing.write_text("path\n" + "".join(f"{row['path']}\n" for row in evaluated))
    _, predicted, _ = run_predict(tmp_path, f"ckpt_path={checkpoint}", f"inputs={listing}", "runtime=onnx",
                                  f"onnx_path={tmp_path / 'export' / 'model.onnx'}")
    threshold = json.loads(Path(checkpoint).with_name("last.tta.calibration.json").read_text())["ood_threshold"]
    assert_same_scores(evaluated, predicted, PARITY, threshold)


def test_a_calibration_is_applied_only_to_the_views_it_was_fitted_on(tmp_path: Path, synthetic_cache: Path) -> None:
    _, _, _, checkpoint = evaluate_then_predict(tmp_path, synthetic_cache, True)
    fitted = Path(checkpoint).with_name("last.tta.calibration.json")
    with pytest.raises(ValueError, match="fitted with tta=true, but this run scores with tta=false"):
        run_predict(tmp_path, f"ckpt_path={checkpoint}", f"inputs={tmp_path / 'val.csv'}", "tta=false",
                    f"calibration={fitted}")
    # without a calibration for one view, predict reports scores but flags nothing out of distribution
    summary, rows, _ = run_predict(tmp_path, f"ckpt_path={checkpoint}", f"inputs={tmp_path / 'val.csv'}", "tta=false")
    assert summary["calibration"] is None and summary["out_of_distribution"] is None
    assert all(row["ood"] == "" for row in rows)


def test_the_ood_flag_does_not_depend_on_the_colour_warning(tmp_path: Path, synthetic_cache: Path) -> None:
    """A colour far outside the training range warns, but only the energy decides `ood`."""
    from PIL import Image

    evaluated, _, _, checkpoint = evaluate_then_predict(tmp_path, synthetic_cache, False)
    tinted = tmp_path / "tinted"
    tinted.mkdir()
    for i, row in enumerate(evaluated):
        image = np.asarray(Image.open(row["path"]).convert("RGB"), dtype=np.float64)
        Image.fromarray((image * [1.0, 0.6, 0.6]).astype(np.uint8)).save(tinted / f"{i}.png")
    _, rows, _ = run_predict(tmp_path, f"ckpt_path={checkpoint}", f"inputs={tinted}")
    assert all(row["colour_warning"] for row in rows)
    calibration = Path(checkpoint).with_name("last.calibration.json").read_text()
    threshold = json.loads(calibration)["ood_threshold"]
    for row in rows:
        assert row["ood"] == str(float(row["ood_score"]) > threshold)
