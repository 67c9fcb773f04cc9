"""`python -m bcd.export` on checkpoints trained in the test: ONNX and TorchScript files that match torch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from bcd.runs.summary import RunSummary
from tests.helpers.cli import run_cli
from tests.helpers.commands import run_export
from tests.helpers.configs import IMG


def train_tiny(tmp_path_factory: pytest.TempPathFactory, synthetic_cache: Path, *overrides: str) -> RunSummary:
    """A tiny model trained on one batch with CSV logging (weights only need to exist); returns the summary."""
    from bcd.train import train
    from tests.helpers.configs import compose_train, tiny_overrides

    out = tmp_path_factory.mktemp("trained")
    fast = ["trainer.limit_train_batches=1", "test=false"]
    return train(compose_train([*tiny_overrides(synthetic_cache), *fast, f"paths.output_dir={out}", *overrides]))


@pytest.fixture(scope="module")
def onnx_export(trained: RunSummary, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The multiclass model exported to ONNX (the default format)."""
    out = tmp_path_factory.mktemp("export") / "onnx"
    return run_export(out, f"ckpt_path={trained.checkpoints.best}"), out


def torch_probabilities(ckpt_path: str, images: np.ndarray) -> np.ndarray:
    """What the checkpoint's Classifier says in torch: softmax of its per-class logits."""
    from bcd.models.classifier import load_classifier

    model = load_classifier(ckpt_path).eval()
    with torch.inference_mode():
        return model.probabilities(model(torch.from_numpy(images))).numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def new_images(count: int, seed: int) -> np.ndarray:
    """Random uint8 RGB images the model has never seen, (count, 3, IMG, IMG)."""
    return np.random.default_rng(seed).integers(0, 256, (count, 3, IMG, IMG), dtype=np.uint8)


def test_onnx_export_matches_torch(trained: RunSummary, onnx_export: tuple[dict, Path]) -> None:
    result, out = onnx_export
    onnx.checker.check_model(out / "model.onnx", full_check=True)
    saved = json.loads((out / "export.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["file"] == "model.onnx" and saved["format"] == "onnx" and saved["opset"] >= 17
    assert saved["class_names"] == trained.class_names and saved["img_size"] == IMG
    assert saved["input"]["shape"] == ["N", 3, IMG, IMG] and saved["output"]["shape"] == ["N", 4]
    n_test = sum(trained.dataset.counts["test"].values())
    assert saved["parity"]["n_images"] == min(16, n_test) and saved["parity"]["images"].startswith("test split")
    assert saved["parity"]["max_abs_diff_probs"] <= 1e-4 and saved["temperature"] is None


def test_onnx_runner_reproduces_torch_with_any_batch_size(trained: RunSummary, onnx_export: tuple[dict, Path]) -> None:
    from bcd.inference.runners import OnnxRunner

    runner = OnnxRunner(onnx_export[1] / "model.onnx", threads=1)
    assert runner.img_size == IMG and runner.class_names == trained.class_names
    for count in (5, 1):  # the export example had 2 images
        images = new_images(count, seed=count)
        probs = softmax(runner.class_logits(images).numpy())
        np.testing.assert_allclose(probs, torch_probabilities(trained.checkpoints.best, images), atol=1e-4)
    with pytest.raises(ValueError, match="uint8"):
        runner.class_logits(images.astype(np.float32))


def test_onnx_runner_refuses_a_missing_file(tmp_path: Path) -> None:
    from bcd.inference.runners import OnnxRunner

    with pytest.raises(FileNotFoundError, match="onnx_path"):
        OnnxRunner(tmp_path / "nope.onnx")


def test_torchscript_export_outside_a_run_dir(trained: RunSummary, tmp_path: Path) -> None:
    # a checkpoint copied on its own: no test split to check on (synthetic images), its calibration beside it
    ckpt = tmp_path / "alone" / "model.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(trained.checkpoints.best, ckpt)
    ckpt.with_name("model.calibration.json").write_text(json.dumps({"temperature": 1.5}))
    result = run_export(tmp_path / "out", f"ckpt_path={ckpt}", "format=torchscript", "parity_images=3")
    assert result["parity"]["max_abs_diff_probs"] <= 1e-4 and result["parity"]["n_images"] == 3
    assert result["parity"]["images"].startswith("synthetic") and result["temperature"] == 1.5
    scripted = torch.jit.load(str(tmp_path / "out" / "model.pt"))
    images = new_images(3, seed=7)
    with torch.inference_mode():
        probs = torch.softmax(scripted(torch.from_numpy(images)), dim=1).numpy()
    np.testing.assert_allclose(probs, torch_probabilities(str(ckpt), images), atol=1e-4)


def test_export_fails_when_the_file_disagrees_with_torch(trained: RunSummary, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import bcd.export

    monkeypatch.setattr(bcd.export, "max_probability_difference", lambda *args: 0.5)
    overrides = [f"ckpt_path={trained.checkpoints.best}", "format=torchscript", "parity_images=1"]
    with pytest.raises(RuntimeError, match="parity_tolerance"):
        run_export(tmp_path / "out", *overrides)
    # export.json is still written, so the failed export can be inspected
    assert json.loads((tmp_path / "out" / "export.json").read_text())["parity"]["max_abs_diff_probs"] == 0.5


def test_binary_model_exports_two_columns(tmp_path_factory: pytest.TempPathFactory, synthetic_cache: Path,
                                          tmp_path: Path) -> None:
    from bcd.inference.runners import OnnxRunner

    binary = train_tiny(tmp_path_factory, synthetic_cache, "task=binary", "loss=bce")
    result = run_export(tmp_path / "out", f"ckpt_path={binary.checkpoints.best}", "parity_images=4")
    assert result["class_names"] == ["benign", "malignant"] and result["output"]["shape"] == ["N", 2]
    logits = OnnxRunner(tmp_path / "out" / "model.onnx").class_logits(new_images(3, seed=3)).numpy()
    assert logits.shape == (3, 2) and np.all(logits[:, 0] == 0)


def test_export_refuses_an_unknown_format_and_a_missing_checkpoint(trained: RunSummary, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format=onnx"):
        run_export(tmp_path / "a", f"ckpt_path={trained.checkpoints.best}", "format=tflite")
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        run_export(tmp_path / "b", f"ckpt_path={tmp_path / 'nope.ckpt'}")


@pytest.mark.slow
def test_export_from_the_command_line(trained: RunSummary, tmp_path: Path) -> None:
    # TorchScript: the default (ONNX) is covered above, and a second ONNX export costs ~8 s on a test machine
    result = run_cli(["bcd.export", f"ckpt_path={trained.checkpoints.best}", "format=torchscript"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (export_dir,) = (tmp_path / "outputs" / "export" / "runs").iterdir()
    assert (export_dir / "model.pt").is_file() and (export_dir / "export.log").is_file()
    assert json.loads((export_dir / "export.json").read_text())["command"].startswith("python -m bcd.export")
