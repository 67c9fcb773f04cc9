"""Export a checkpoint for deployment: `python -m bcd.export ckpt_path=... [format=onnx|torchscript]`.

The exported model takes uint8 RGB images (N, 3, H, W), normalises them itself and returns per-class logits.
Every export is checked against torch on the run's test images (else synthetic smears) before it is trusted.
"""

from __future__ import annotations

import logging
from importlib.metadata import version
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import onnx
import torch
from omegaconf import DictConfig

from bcd.data.dataset import load_image, resize_square
from bcd.data.sources import read_manifest
from bcd.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES
from bcd.data.synthetic import generate_image
from bcd.models.classifier import Classifier, load_classifier
from bcd.models.onnx_runner import OnnxRunner
from bcd.reporting.trained_run import TrainedRun, evaluation_dataset_config
from bcd.utils.run import command_line, ensure_new_run_dir, write_json

log = logging.getLogger(__name__)

FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.pt"}
PARITY_RUNTIMES = {"onnx": f"onnxruntime {version('onnxruntime')} CPUExecutionProvider",
                   "torchscript": f"torch.jit {version('torch')} CPU"}
RESIZE = "area when shrinking, bicubic when enlarging (bcd.data.dataset.resize_square)"


class ExportedClassifier(torch.nn.Module):
    """The graph an exported file holds: uint8 images in, one logit per class out (binary: [0, z])."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        # Lightning's flag for this (LightningModule.to_torchscript sets it): torch.jit.trace reads every
        # attribute of a module, and `trainer` raises outside a Trainer (pytorch/pytorch#67146)
        classifier._jit_is_scripting = True
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-class logits (N, C) for a uint8 (N, 3, H, W) RGB batch."""
        return self.classifier.class_logits(self.classifier(images))


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export cfg.ckpt_path as cfg.format, check parity with torch and write export.json; returns its contents."""
    if cfg.format not in FILE_NAMES:
        raise ValueError(f"format: {cfg.format!r} is not one of {list(FILE_NAMES)}; set format=onnx or format=torchscript")
    if cfg.parity_images < 1:
        raise ValueError(f"parity_images: {cfg.parity_images} must be >= 1 (every export is checked against torch)")
    out = Path(cfg.paths.output_dir)
    ensure_new_run_dir(out)
    run = TrainedRun.from_checkpoint(cfg.ckpt_path)
    classifier = load_classifier(run.checkpoint)
    model = ExportedClassifier(classifier).eval()
    img_size = run.img_size(classifier.hparams["model"])
    calibration, calibration_path = run.calibration(cfg.calibration)

    path = out / FILE_NAMES[cfg.format]
    # batch 2, not 1: torch.export would specialise a batch dimension of size 1 to a constant
    example = torch.zeros(2, 3, img_size, img_size, dtype=torch.uint8)
    if cfg.format == "onnx":
        opset = export_onnx(model, example, path, cfg.opset)
    else:
        opset = None
        export_torchscript(model, example, path)
    images, source = parity_images(run, img_size, cfg.parity_images)
    max_diff = max_probability_difference(model, path, images)

    n_classes = len(classifier.class_names)
    result = {
        "format": cfg.format,
        "file": path.name,
        "checkpoint": str(run.checkpoint),
        "class_names": classifier.class_names,
        "task": classifier.hparams.task,
        "model": classifier.hparams.model["name"],
        "img_size": img_size,
        "input": {"name": "images", "dtype": "uint8", "shape": ["N", 3, img_size, img_size], "color": "RGB",
                  "range": [0, 255], "resize": RESIZE},
        "output": {"name": "logits", "dtype": "float32", "shape": ["N", n_classes],
                   "meaning": "per-class logits; probabilities = softmax(logits / temperature)"},
        "temperature": calibration.get("temperature"),
        "calibration_file": str(calibration_path) if calibration_path else None,
        "parity": {"max_abs_diff_probs": max_diff, "n_images": len(images), "images": source,
                   "tolerance": cfg.parity_tolerance, "runtime": PARITY_RUNTIMES[cfg.format]},
        "opset": opset,
        "versions": {name: version(name) for name in ("torch", "onnx", "onnxruntime")},
        "command": command_line(),
    }
    write_json(out / "export.json", result)
    if not max_diff <= cfg.parity_tolerance:
        raise RuntimeError(
            f"parity_tolerance: the exported {path} disagrees with torch by {max_diff:.3g} in probability "
            f"(> {cfg.parity_tolerance}) on {len(images)} images; this export is wrong. Try the other format or "
            "another opset=..., and report the model name and versions in export.json"
        )
    log.info("exported %s (max |p_torch - p_%s| = %.2g on %d images)", path, cfg.format, max_diff, len(images))
    return result


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int | None) -> int:
    """Write the model as ONNX with a dynamic batch axis, check the file and return its opset."""
    # The default, torch.export-based ("dynamo") exporter of torch 2.14 exports timm EfficientNets (tested on
    # test_efficientnet and efficientnet_b0 at 224 px: probabilities equal to torch within 1e-8), so we keep
    # it; it takes seconds longer than dynamo=False, which PyTorch has deprecated. One file (no .onnx.data):
    # EfficientNet weights are far below ONNX's 2 GB limit, and a single file is easier to ship.
    for name in ("onnxscript", "onnx_ir"):  # they log every optimiser pass at INFO, burying our own lines
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.onnx.export(
        model,
        (example,),
        path,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    onnx.checker.check_model(path, full_check=True)
    return next(o.version for o in onnx.load(path, load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Write the model as TorchScript, traced (the batch size stays free); the parity check loads it back."""
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    traced.save(str(path))


def parity_images(run: TrainedRun, img_size: int, count: int) -> tuple[np.ndarray, str]:
    """Up to `count` uint8 (N, 3, H, W) images: the run's test split when its data is at hand, else synthetic."""
    try:
        dataset = evaluation_dataset_config(run)
    except FileNotFoundError:
        dataset = None
    if dataset is not None and Path(dataset.root).is_dir():
        samples, _ = read_manifest(dataset.split_manifest, Path(dataset.root), dataset.classes,
                                   key="dataset.split_manifest")
        paths = [s.path for s in samples if s.split == "test"][:count]
        if paths:
            images = [load_image(p, img_size, dataset.get("max_pixels")) for p in paths]
            return np.stack(images).transpose(0, 3, 1, 2).copy(), f"test split of {run.run_dir}"
    log.warning("parity check on synthetic images: %s has no test images at hand", run.checkpoint)
    rng = np.random.default_rng(0)
    images = [resize_square(generate_image(i % len(SYNTHETIC_CLASSES), rng, max(img_size, 64)), img_size)
              for i in range(count)]
    return np.stack(images).transpose(0, 3, 1, 2).copy(), "synthetic (bcd.data.synthetic)"


@torch.inference_mode()
def max_probability_difference(model: torch.nn.Module, path: Path, images: np.ndarray) -> float:
    """Largest |softmax difference| between torch and the exported file on the same images."""
    batch = torch.from_numpy(images)
    expected = torch.softmax(model(batch).double(), dim=1)
    if path.suffix == ".onnx":
        exported = torch.from_numpy(OnnxRunner(path).class_logits(images))
    else:
        exported = torch.jit.load(str(path))(batch)
    return float((torch.softmax(exported.double(), dim=1) - expected).abs().max())


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    export(cfg)


if __name__ == "__main__":
    main()
