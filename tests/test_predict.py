"""`python -m bcd.predict` on new images with a checkpoint trained in the test, and Grad-CAM on a toy CNN."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bcd.runs.summary import RunSummary
from tests.helpers.cli import run_cli
from tests.helpers.commands import run_predict
from tests.helpers.configs import IMG


@pytest.fixture(scope="module")
def new_images(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """A folder of unseen images: three JPEGs of other sizes, one PNG (in a subfolder) and one corrupt JPEG."""
    folder = tmp_path_factory.mktemp("new-images")
    sources = sorted(synthetic_root.rglob("*.jpg"))
    for i, (source, size) in enumerate(zip(sources[::9], [(60, 80), (100, 100), (40, 30)], strict=False)):
        Image.open(source).convert("RGB").resize(size).save(folder / f"cell{i}.jpg", quality=90)
    (folder / "more").mkdir()
    Image.open(sources[5]).convert("RGB").save(folder / "more" / "cell.png")
    rng = np.random.default_rng(0)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    return folder


def probabilities(row: dict) -> np.ndarray:
    """The prob_<class> columns of a row, in column order."""
    return np.array([float(v) for k, v in row.items() if k.startswith("prob_")])


def test_predict_a_folder_with_a_corrupt_image(trained: RunSummary, new_images: Path, tmp_path: Path) -> None:
    summary, rows, out = run_predict(tmp_path, f"ckpt_path={trained.checkpoints.best}", f"inputs={new_images}")
    assert len(rows) == 5 and summary["n_images"] == 5 and summary["errors"] == 1
    by_name = {Path(row["path"]).name: row for row in rows}
    broken = by_name["broken.jpg"]
    assert "corrupt" in broken["error"] and broken["predicted_label"] == "" and broken["prob_Benign"] == ""
    assert by_name["cell.png"]["predicted_label"] in trained.class_names and by_name["cell.png"]["error"] == ""
    for row in rows:
        if not row["error"]:
            assert probabilities(row).sum() == pytest.approx(1.0, abs=1e-4)
            assert float(row["confidence"]) == pytest.approx(probabilities(row).max())
            assert row["ood"] == ""  # no calibration file: no threshold
    assert sum(summary["predicted"].values()) == 4
    saved = json.loads((out / "predict.json").read_text())
    assert saved["temperature"] is None and saved["errors"] == 1


def test_abstain_below_makes_every_image_abstain(trained: RunSummary, new_images: Path, tmp_path: Path) -> None:
    summary, rows, _ = run_predict(tmp_path, f"ckpt_path={trained.checkpoints.best}", f"inputs={new_images}",
                                   "abstain_below=1.01")
    assert all(row["abstain"] == "True" for row in rows if not row["error"])
    assert summary["abstained"] == 4


def test_calibration_file_next_to_the_checkpoint(trained: RunSummary, new_images: Path, tmp_path: Path) -> None:
    """A <stem>.calibration.json beside the checkpoint sets the temperature and the OOD threshold."""
    _, plain, _ = run_predict(tmp_path, f"ckpt_path={trained.checkpoints.best}", f"inputs={new_images}")
    energies = sorted(float(row["ood_score"]) for row in plain if not row["error"])
    threshold = (energies[1] + energies[2]) / 2
    # a checkpoint outside its run dir: the image size comes from the checkpoint's own model config
    checkpoint = tmp_path / "model.ckpt"
    shutil.copy(trained.checkpoints.best, checkpoint)
    calibration = {"temperature": 2.0, "fitted_on": "val", "checkpoint": str(checkpoint),
                   "ood": {"score": "energy", "threshold": threshold, "quantile": 0.95, "fitted_on": "val"}}
    (tmp_path / "model.calibration.json").write_text(json.dumps(calibration))

    summary, calibrated, _ = run_predict(tmp_path, f"ckpt_path={checkpoint}", f"inputs={new_images}")
    assert summary["temperature"] == 2.0 and summary["out_of_distribution"] == 2
    for before, after in zip(plain, calibrated, strict=True):
        if before["error"]:
            continue
        # softmax(z / 2) is proportional to sqrt(softmax(z))
        expected = np.sqrt(probabilities(before))
        assert probabilities(after) == pytest.approx(expected / expected.sum(), abs=1e-4)
        assert after["ood_score"] == before["ood_score"]
        is_ood = float(after["ood_score"]) > threshold
        assert after["ood"] == str(is_ood)
        assert after["abstain"] == str(is_ood or float(after["confidence"]) < 0.5)


def test_predict_a_csv_of_relative_paths(trained: RunSummary, new_images: Path, tmp_path: Path) -> None:
    listing = new_images / "listing.csv"
    listing.write_text("path,note\ncell0.jpg,a\nmore/cell.png,b\n")
    try:
        _, rows, _ = run_predict(tmp_path, f"ckpt_path={trained.checkpoints.best}", f"inputs={listing}")
    finally:
        listing.unlink()
    assert [Path(row["path"]).name for row in rows] == ["cell0.jpg", "cell.png"]
    assert all(row["predicted_label"] and not row["error"] for row in rows)


def test_tta_prediction_is_invariant_to_a_90_degree_rotation(trained: RunSummary, synthetic_root: Path,
                                                             tmp_path: Path) -> None:
    source = sorted(synthetic_root.rglob("*.jpg"))[0]
    image = np.asarray(Image.open(source).convert("RGB").resize((IMG, IMG)))  # model size: no resampling
    folder = tmp_path / "rotated"
    folder.mkdir()
    Image.fromarray(image).save(folder / "a.png")
    Image.fromarray(np.ascontiguousarray(np.rot90(image))).save(folder / "b.png")
    _, rows, _ = run_predict(tmp_path, f"ckpt_path={trained.checkpoints.best}", f"inputs={folder}", "tta=true")
    assert probabilities(rows[0]) == pytest.approx(probabilities(rows[1]), abs=1e-5)
    assert float(rows[0]["ood_score"]) == pytest.approx(float(rows[1]["ood_score"]), abs=1e-5)


def test_gradcam_writes_overlays_and_a_contact_sheet(trained: RunSummary, new_images: Path, tmp_path: Path) -> None:
    _, rows, out = run_predict(tmp_path, f"ckpt_path={trained.checkpoints.best}", f"inputs={new_images}",
                               "gradcam=true", "batch_size=2")
    readable = [row for row in rows if not row["error"]]
    assert all(row["gradcam"].startswith("gradcam/") for row in readable)
    assert len(list((out / "gradcam").glob("*.png"))) == len(readable) + 1
    for name in [row["gradcam"] for row in readable] + ["gradcam/contact_sheet.png"]:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100, name


def test_predict_explains_bad_inputs(trained: RunSummary, tmp_path: Path) -> None:
    ckpt = f"ckpt_path={trained.checkpoints.best}"
    with pytest.raises(FileNotFoundError, match="inputs: .* does not exist"):
        run_predict(tmp_path, ckpt, f"inputs={tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="inputs: .* holds no images"):
        run_predict(tmp_path, ckpt, f"inputs={tmp_path / 'empty'}")
    (tmp_path / "list.csv").write_text("file\na.jpg\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        run_predict(tmp_path, ckpt, f"inputs={tmp_path / 'list.csv'}")
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        run_predict(tmp_path, f"ckpt_path={tmp_path / 'nope.ckpt'}", f"inputs={tmp_path}")
    with pytest.raises(ValueError, match="runtime"):
        run_predict(tmp_path, ckpt, f"inputs={tmp_path / 'list.csv'}", "runtime=tensorrt")


class QuadrantNet(nn.Module):
    """A toy CNN whose class 1 evidence is red pixels: conv (red detector) -> ReLU -> average pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0  # channel 0: the red value
            self.conv.weight[1, 1, 1, 1] = 1.0  # channel 1: the green value
            self.conv.bias.fill_(-10.0)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(2).flip(0))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 2)."""
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("quadrant", [(0, 0), (1, 1), (0, 1)])
def test_gradcam_concentrates_on_the_class_evidence(quadrant: tuple[int, int]) -> None:
    from bcd.inference.gradcam import gradcam

    size = 32
    images = torch.zeros(2, 3, size, size)
    rows, cols = (slice(q * size // 2, (q + 1) * size // 2) for q in quadrant)
    images[:, 0, rows, cols] = 255.0  # red square: evidence for class 1
    images[1, 1] = 255.0 * (torch.rand(size, size) > 0.5)  # distracting green noise
    heatmaps = gradcam(QuadrantNet(), images, classes=[1, 1])
    assert heatmaps.shape == (2, size, size)
    assert heatmaps.min() >= 0.0 and heatmaps.max() == pytest.approx(1.0)
    for heatmap in heatmaps:
        assert heatmap[rows, cols].sum() / heatmap.sum() > 0.9


def test_gradcam_of_the_trained_classifier(trained: RunSummary) -> None:
    from bcd.inference.gradcam import feature_layer, gradcam
    from bcd.models.classifier import load_classifier

    model = load_classifier(trained.checkpoints.best)
    assert feature_layer(model) is model.net.backbone.bn2
    running_mean = model.net.backbone.bn2.running_mean.clone()
    images = torch.randint(0, 256, (3, 3, IMG, IMG), dtype=torch.uint8)
    heatmaps = gradcam(model.train(), images)
    assert heatmaps.shape == (3, IMG, IMG) and heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
    # explaining changes nothing: training mode restored, BatchNorm statistics and weight gradients untouched
    assert model.training and torch.equal(model.net.backbone.bn2.running_mean, running_mean)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_predict_from_the_command_line(trained: RunSummary, new_images: Path, tmp_path: Path) -> None:
    result = run_cli(["bcd.predict", f"ckpt_path={trained.checkpoints.best}", f"inputs={new_images}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "predict" / "runs").iterdir()
    assert (run_dir / "predictions.csv").is_file() and (run_dir / "predict.json").is_file()
    assert "could not be read" in (run_dir / "predict.log").read_text()


def test_predict_with_the_onnx_export_matches_torch(trained: RunSummary, new_images: Path, tmp_path: Path) -> None:
    from tests.helpers.commands import run_export

    export_dir = tmp_path / "export"
    run_export(export_dir, f"ckpt_path={trained.checkpoints.best}", "format=onnx")
    common = [f"ckpt_path={trained.checkpoints.best}", f"inputs={new_images}", "tta=true"]
    _, torch_rows, _ = run_predict(tmp_path, *common)
    summary, onnx_rows, _ = run_predict(tmp_path, *common, "runtime=onnx", f"onnx_path={export_dir / 'model.onnx'}")
    assert summary["runtime"] == "onnx" and summary["errors"] == 1
    for torch_row, onnx_row in zip(torch_rows, onnx_rows, strict=True):
        assert torch_row["path"] == onnx_row["path"] and torch_row["predicted_label"] == onnx_row["predicted_label"]
        if not torch_row["error"]:
            np.testing.assert_allclose(probabilities(onnx_row), probabilities(torch_row), atol=1e-4)


def test_runtime_onnx_needs_its_file(trained: RunSummary, new_images: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="onnx_path"):
        run_predict(tmp_path, f"ckpt_path={trained.checkpoints.best}", f"inputs={new_images}", "runtime=onnx")
