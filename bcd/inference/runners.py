"""What runs a model: the checkpoint's Classifier in torch or its ONNX export in ONNX Runtime, behind one interface,
and the one function that turns a batch of images into per-view class logits."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from bcd.inference.views import dihedral_views
from bcd.models.classifier import Classifier
from bcd.utils.devices import device_of
from bcd.utils.progress import progress
from bcd.utils.stored import load_stored_json

RUNTIMES = ("torch", "onnx")


class Runner(Protocol):
    """uint8 RGB images (N, 3, S, S) in, per-class logits (N, C) out."""

    class_names: list[str]

    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Per-class logits (N, C) of a uint8 NCHW batch."""
        ...


def pick_device(accelerator: str = "auto") -> torch.device:
    """The device inference runs on: the one training and memory planning use (bcd.utils.devices.device_of)."""
    return torch.device(device_of(accelerator))


class TorchRunner:
    """The checkpoint's Classifier on one torch device (in eval mode)."""

    def __init__(self, model: Classifier, device: torch.device | None = None) -> None:
        self.model = model.eval() if device is None else model.eval().to(device)
        self.class_names = list(model.class_names)

    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Per-class logits (N, C) on the model's device."""
        return self.model.class_logits(self.model(images.to(self.model.device, non_blocking=True)))


class OnnxRunner:
    """An exported bcd ONNX model (`python -m bcd.export`) in ONNX Runtime on the CPU."""

    def __init__(self, onnx_path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort  # only ONNX runs pay for importing it

        self.path = Path(onnx_path).expanduser().resolve()
        if not self.path.is_file():
            raise FileNotFoundError(
                f"onnx_path: {self.path} does not exist; pass the model.onnx written by `python -m bcd.export`"
            )
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """What export.json next to the file records ({} when there is none)."""
        export_json = self.path.with_name("export.json")
        return load_stored_json(export_json, "an export.json") if export_json.is_file() else {}

    @property
    def img_size(self) -> int:
        """The square input size the model takes (H = W)."""
        size = self.session.get_inputs()[0].shape[-1]
        if isinstance(size, int):
            return size
        if isinstance(self.metadata.get("img_size"), int):
            return self.metadata["img_size"]
        raise ValueError(f"onnx_path: {self.path} has no fixed input size and no export.json beside it")

    @property
    def class_names(self) -> list[str]:
        """The classes of the logits' columns, in order."""
        names = self.metadata.get("class_names")
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise FileNotFoundError(
                f"onnx_path: {self.path.with_name('export.json')} is missing or names no classes; keep the "
                "export.json that `python -m bcd.export` wrote next to the .onnx file"
            )
        return names

    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Per-class logits (N, C) of a uint8 (N, 3, S, S) RGB batch, as a CPU tensor."""
        array = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        size = self.img_size
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != (3, size, size):
            raise ValueError(
                f"images: expected a uint8 array of shape (N, 3, {size}, {size}) (RGB, resized with "
                f"bcd.data.reader.resize_square), got {array.dtype} {array.shape}"
            )
        return torch.from_numpy(self.session.run(None, {self.input_name: np.ascontiguousarray(array)})[0])


def make_runner(runtime: str, model: Classifier, device: torch.device, onnx_path: str | None = None) -> Runner:
    """The runner for cfg.runtime: the checkpoint in torch, or its ONNX export (which must predict its classes)."""
    if runtime == "torch":
        return TorchRunner(model, device)
    if runtime == "onnx":
        if onnx_path is None:
            raise ValueError("onnx_path: runtime=onnx needs the model.onnx written by bcd.export (onnx_path=...)")
        runner = OnnxRunner(onnx_path)
        if runner.class_names != model.class_names:
            raise ValueError(f"onnx_path: {onnx_path} predicts {runner.class_names}, the checkpoint {model.class_names}")
        return runner
    raise ValueError(f"runtime: {runtime!r} is not one of {list(RUNTIMES)}")


def view_logits(runner: Runner, images: torch.Tensor, tta: bool) -> torch.Tensor:
    """Per-view class logits (V, N, C) of a uint8 NCHW batch: V = 1, or the 8 dihedral views with tta."""
    views = dihedral_views(images) if tta else [images]
    return torch.stack([runner.class_logits(view).float() for view in views])


@torch.inference_mode()
def score_loader(
    runner: Runner, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], tta: bool, description: str = "scoring"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-view class logits (V, N, C) as float64 and targets (N,) of every (images, targets) batch, in order
    (with a progress bar of `description` on a terminal)."""
    logits, targets = [], []
    total = len(batches) if hasattr(batches, "__len__") else None
    for images, batch_targets in progress(batches, f"{description}{' (8 views)' if tta else ''}: batches", total):
        logits.append(view_logits(runner, images, tta).cpu())
        targets.append(torch.as_tensor(batch_targets))
    if not logits:
        raise ValueError("no images to score")
    return torch.cat(logits, dim=1).double().numpy(), torch.cat(targets).numpy()
