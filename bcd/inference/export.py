"""Exporting a Classifier for deployment (ONNX or TorchScript: uint8 images in, per-class logits out) and the
parity check that the exported file scores images as the checkpoint does (bcd.inference.runners and scores)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from bcd.data.reader import DEFAULT_READER, resize_square
from bcd.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES
from bcd.data.synthetic import generate_image
from bcd.inference.runners import OnnxRunner, TorchRunner, view_logits
from bcd.inference.scores import probabilities
from bcd.models.classifier import Classifier

log = logging.getLogger(__name__)

FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.pt"}
RESIZE = "area when shrinking, bicubic when enlarging (bcd.data.reader.resize_square)"


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


class TorchScriptRunner:
    """A TorchScript export (model.pt) behind the runner interface, for its parity check."""

    def __init__(self, path: Path, class_names: list[str]) -> None:
        self.module = torch.jit.load(str(path))
        self.class_names = class_names

    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Per-class logits (N, C) of a uint8 NCHW batch."""
        return self.module(images)


@torch.inference_mode()
def max_probability_difference(classifier: Classifier, path: Path, images: torch.Tensor, tta: bool) -> float:
    """Largest |difference| of the probabilities p(1) (bcd.inference.scores) between the checkpoint in torch and
    the exported file, scored through the same runner interface with the same views."""
    exported = OnnxRunner(path) if path.suffix == ".onnx" else TorchScriptRunner(path, classifier.class_names)
    expected = probabilities(view_logits(TorchRunner(classifier, torch.device("cpu")), images, tta).double())
    actual = probabilities(view_logits(exported, images, tta).double())
    return float((actual - expected).abs().max())


def parity_images(paths: Sequence[Path], img_size: int, count: int) -> tuple[np.ndarray, str]:
    """Up to `count` uint8 (N, 3, S, S) images for the parity check: the first of `paths` (a run's test split), else
    synthetic ones; and which of the two."""
    if paths:
        images = [DEFAULT_READER.load(path, img_size) for path in paths[:count]]
        return np.stack(images).transpose(0, 3, 1, 2).copy(), "test split"
    rng = np.random.default_rng(0)
    images = [resize_square(generate_image(i % len(SYNTHETIC_CLASSES), rng, max(img_size, 64)), img_size)
              for i in range(count)]
    return np.stack(images).transpose(0, 3, 1, 2).copy(), "synthetic (bcd.data.synthetic)"
