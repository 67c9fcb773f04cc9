"""Colour shifts, colour augmentation, colour normalisation and the out-of-range colour warning."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from bcd.data.colour_range import colour_range, colour_statistics, out_of_range
from bcd.data.colour_shift import (
    HED_FROM_RGB,
    RGB_FROM_HED,
    SHIFT_KINDS,
    apply_shift,
    channel_gain,
    hed_jitter,
    image_key,
    shift_draw,
)
from bcd.data.dataset import SmearDataset
from bcd.data.decode import read_rgb
from bcd.data.shifted import ShiftedImages
from bcd.data.transforms import ColourShift
from bcd.models.colour_norm import lab_to_rgb, rgb_to_lab
from bcd.models.registry import build_named
from tests.helpers.commands import run_export, run_predict
from tests.helpers.configs import IMG, compose_train, tiny_overrides

NORMS = {
    "gray_world": {},
    "white_patch": {"quantile": 0.99, "target": 240.0},
    "quantile_balance": {"quantile": 0.05},
    "reinhard": {"reference_mean": [87.4, 2.1, -10.8], "reference_std": [11.5, 9.9, 14.4]},
}


def smear_paths(root: Path) -> list[Path]:
    """The synthetic dataset's images, sorted."""
    return sorted(root.rglob("*.jpg"))


@pytest.mark.parametrize("kind", SHIFT_KINDS)
def test_strength_zero_is_the_identity_and_shifts_are_seeded_per_image(kind: str, synthetic_root: Path) -> None:
    image = read_rgb(smear_paths(synthetic_root)[0])
    u = shift_draw(0, kind, "Benign/a.jpg")
    assert apply_shift(image, kind, 0.0, u) is image
    assert not np.array_equal(apply_shift(image, kind, 0.15, u), image)
    np.testing.assert_array_equal(u, shift_draw(0, kind, "Benign/a.jpg"))
    assert not np.array_equal(u, shift_draw(1, kind, "Benign/a.jpg"))
    assert not np.array_equal(u, shift_draw(0, kind, "Benign/b.jpg"))
    with pytest.raises(ValueError, match="shift kind"):
        shift_draw(0, "sepia", "x")


def test_channel_gain_scales_and_saturates_like_a_camera() -> None:
    image = np.full((2, 2, 3), 200, np.uint8)
    shifted = channel_gain(image, np.array([1.15, 0.85, 1.0]))
    assert shifted[0, 0].tolist() == [230, 170, 200]
    assert channel_gain(image, np.array([1.5, 1.0, 1.0]))[0, 0, 0] == 255


def test_hed_jitter_matches_the_per_pixel_stain_formula(synthetic_root: Path) -> None:
    """The table-and-affine HED jitter equals Tellez et al.'s per-pixel float64 formula to within one level."""
    image = read_rgb(smear_paths(synthetic_root)[0])
    scale, shift = np.array([1.12, 0.9, 1.05]), np.array([0.04, -0.06, 0.02])
    density = -np.log((image.astype(np.float64) + 1.0) / 256.0)
    stains = density.reshape(-1, 3) @ HED_FROM_RGB * scale + shift
    expected = np.clip(np.rint(256.0 * np.exp(-(stains @ RGB_FROM_HED)) - 1.0), 0, 255).reshape(image.shape)
    shifted = hed_jitter(image, scale, shift)
    assert np.abs(shifted.astype(int) - expected).max() <= 1
    assert (shifted != expected).mean() < 1e-3
    assert (shifted != image).mean() > 0.5  # the jitter did change the stain


def test_shifted_images_do_not_depend_on_order_model_or_run(synthetic_root: Path) -> None:
    paths = smear_paths(synthetic_root)[:6]
    first = ShiftedImages(paths, [0] * 6, IMG, "channel_gain", 0.15, seed=3)
    again = ShiftedImages(paths[::-1], [0] * 6, IMG, "channel_gain", 0.15, seed=3)
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(first.image(i), again.image(5 - i))
        assert image_key(path) == f"{path.parent.name}/{path.name}"
    other_seed = ShiftedImages(paths, [0] * 6, IMG, "channel_gain", 0.15, seed=4)
    assert not np.array_equal(first.image(0), other_seed.image(0))
    plain = SmearDataset(paths, [0] * 6, IMG)
    unshifted = ShiftedImages(paths, [0] * 6, IMG, "hed", 0.0, seed=3)
    for i in range(6):
        assert torch.equal(plain[i][0], unshifted[i][0])


def test_colour_shift_augmentation_follows_the_item_seed() -> None:
    image = np.full((8, 8, 3), 150, np.uint8)
    augment = A.Compose([ColourShift("channel_gain", 0.25, p=1.0)])

    def draw(seed: int) -> np.ndarray:
        augment.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return augment(image=image)["image"]

    np.testing.assert_array_equal(draw(1), draw(1))
    assert not np.array_equal(draw(1), draw(2))
    gains = draw(1)[0, 0] / 150.0
    assert np.all((gains >= 0.75 - 0.01) & (gains <= 1.25 + 0.01))
    with pytest.raises(ValueError, match="ColourShift.kind"):
        ColourShift("sepia")
    with pytest.raises(ValueError, match="ColourShift.limit"):
        ColourShift("hed", limit=1.5)


def test_lab_conversion_round_trips() -> None:
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16))).float()
    assert torch.allclose(lab_to_rgb(rgb_to_lab(images)), images, atol=0.05)


@pytest.mark.parametrize("name", NORMS)
def test_normalisation_brings_colour_shifted_copies_together(name: str, synthetic_root: Path) -> None:
    """Two copies of one smear under different per-channel gains: much closer after the normalisation."""
    image = read_rgb(smear_paths(synthetic_root)[3])
    copies = [channel_gain(image, np.array(g)) for g in ([1.1, 0.9, 0.95], [0.9, 1.05, 1.1])]
    batch = torch.from_numpy(np.stack(copies).transpose(0, 3, 1, 2).copy()).float()
    norm = build_named("colour_norm", {"name": name, **NORMS[name]}, "colour_norm")

    def relative_distance(pair: torch.Tensor) -> float:
        # distance between the copies, relative to the image's own contrast, so output scales compare
        return float((pair[0] - pair[1]).abs().mean() / (pair[0] - pair[0].mean()).abs().mean())

    assert relative_distance(norm(batch)) < 0.5 * relative_distance(batch)


def test_an_unknown_normalisation_is_refused() -> None:
    with pytest.raises(ValueError, match="colour_norm.name"):
        build_named("colour_norm", {"name": "macbeth"}, "colour_norm")
    with pytest.raises(ValueError, match="colour_norm.quantile"):
        build_named("colour_norm", {"name": "quantile_balance", "quantile": 2.0}, "colour_norm")


def test_colour_range_flags_a_tinted_image_and_not_a_normal_one(synthetic_root: Path) -> None:
    paths = smear_paths(synthetic_root)
    ranges = colour_range(paths[1:])
    normal = read_rgb(paths[0])
    assert out_of_range(colour_statistics(normal), ranges) == []
    tinted = channel_gain(normal, np.array([1.0, 0.6, 0.6]))
    warnings = out_of_range(colour_statistics(tinted), ranges)
    assert warnings and any(w.startswith("mean_green=") for w in warnings)


@pytest.fixture(scope="module")
def normalised_run(tmp_path_factory: pytest.TempPathFactory, synthetic_cache: Path) -> dict:
    """A tiny model trained with quantile-balance normalisation and channel-gain augmentation."""
    from bcd.train import train

    out = tmp_path_factory.mktemp("normalised")
    overrides = [*tiny_overrides(synthetic_cache), "colour_norm=quantile_balance", "augmentation=stain",
                 f"paths.output_dir={out}"]
    return train(compose_train(overrides))


def test_one_normalisation_in_training_evaluation_prediction_and_onnx(
    normalised_run: dict, synthetic_root: Path, tmp_path: Path
) -> None:
    from bcd.inference.runners import OnnxRunner
    from bcd.models.classifier import load_classifier

    ckpt = normalised_run.checkpoints.best
    model = load_classifier(ckpt).eval()
    assert model.hparams.colour_norm["name"] == "quantile_balance"
    assert set(model.colour_range) == {"mean_red", "mean_green", "mean_blue", "red_to_blue"}
    # the normalisation changes what the network sees, so it is really applied in forward
    images = np.stack([read_rgb(p).transpose(2, 0, 1) for p in smear_paths(synthetic_root)[:4]])
    batch = torch.from_numpy(images)
    with torch.inference_mode():
        logits = model.class_logits(model(batch)).numpy()
        without = model.net((batch.float() - model.pixel_mean) / model.pixel_std).numpy()
    assert not np.allclose(logits, without, atol=1e-4)

    export = run_export(tmp_path / "export", f"ckpt_path={ckpt}")
    assert export["parity"]["max_abs_diff_probs"] <= 1e-4
    np.testing.assert_allclose(OnnxRunner(tmp_path / "export" / "model.onnx").class_logits(images).numpy(), logits,
                               atol=1e-4)

    folder = tmp_path / "inputs"
    folder.mkdir()
    for i, path in enumerate(smear_paths(synthetic_root)[:4]):
        Image.open(path).save(folder / f"{i}.png")
    _, rows, _ = run_predict(tmp_path, f"ckpt_path={ckpt}", f"inputs={folder}", "calibration=null")
    probs = np.array([[float(v) for k, v in row.items() if k.startswith("prob_")] for row in rows])
    expected = torch.softmax(torch.from_numpy(logits), 1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_predict_warns_about_colours_outside_the_training_range(
    normalised_run: dict, synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = smear_paths(synthetic_root)[0]
    folder = tmp_path / "inputs"
    folder.mkdir()
    image = read_rgb(source)
    Image.fromarray(image).save(folder / "normal.png")
    Image.fromarray(channel_gain(image, np.array([1.0, 0.55, 0.55]))).save(folder / "tinted.png")
    summary, rows, out = run_predict(tmp_path, f"ckpt_path={normalised_run.checkpoints.best}",
                                     f"inputs={folder}")
    by_name = {Path(row["path"]).name: row for row in rows}
    assert by_name["normal.png"]["colour_warning"] == ""
    assert "mean_green" in by_name["tinted.png"]["colour_warning"]
    assert summary["colour_out_of_range"] == 1
    assert "tinted.png" in caplog.text and "colour out of the training range" in caplog.text
    assert json.loads((out / "predict.json").read_text())["colour_out_of_range"] == 1


def test_evaluate_reports_accuracy_under_colour_shifts(normalised_run: dict, tmp_path: Path) -> None:
    """Strength 0 reproduces the plain evaluation exactly; robust_acc is the ±15% channel-gain accuracy."""
    from tests.helpers.commands import run_evaluate

    result, out = run_evaluate(
        tmp_path, f"ckpt_path={normalised_run.checkpoints.best}", "shift.kinds=[channel_gain,hed]",
        "shift.strengths=[0.0,0.15]", "n_boot=50",
    )
    rows = {(r["kind"], r["strength"]): r for r in result["shift"]["rows"]}
    plain = result["metrics"]["acc"]
    for kind in ("channel_gain", "hed"):
        computed_at_zero = [r for r in result["shift"]["rows"] if r["kind"] == kind and r["strength"] == 0.0]
        assert all(r["acc"] == plain for r in computed_at_zero) and len(computed_at_zero) == 2
        assert 0.0 <= rows[(kind, 0.15)]["acc"]["value"] <= 1.0
    assert result["robust_acc"]["value"] == rows[("channel_gain", 0.15)]["acc"]["value"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["robust_acc"]["kind"] == "channel_gain" and metrics["robust_acc"]["strength"] == 0.15
    assert "robust_acc" in (out / "MODEL_CARD.md").read_text()
    report = (out / "report.md").read_text()
    assert "Colour shifts" in report and (out / "colour_shift.png").is_file()
    # every number says what its split kept apart: the training run's split method, recorded in summary.json
    assert normalised_run.dataset.split_method == result["split_method"] == "exact-dedup"
    assert "exact-dedup split" in report and "exact-dedup split" in (out / "MODEL_CARD.md").read_text()
    with (out / "predictions.csv").open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == result["n_images"]


@pytest.mark.parametrize("name", NORMS)
def test_every_normalisation_exports_to_onnx(name: str, tmp_path: Path) -> None:
    """Each normalisation runs in ONNX Runtime as in torch (it is part of every exported model)."""
    import onnxruntime

    norm = build_named("colour_norm", {"name": name, **NORMS[name]}, "colour_norm").eval()
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 3, IMG, IMG))).float()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(norm, (images,), path, input_names=["images"], output_names=["out"], dynamo=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (exported,) = session.run(None, {"images": images.numpy()})
    np.testing.assert_allclose(exported, norm(images).numpy(), atol=1e-3)
