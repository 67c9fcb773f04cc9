"""Running an exported bcd ONNX model (from `python -m bcd.export`) with ONNX Runtime on the CPU."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


class OnnxRunner:
    """Runs an exported bcd ONNX model with ONNX Runtime on the CPU."""

    def __init__(self, onnx_path: str | Path, threads: int | None = None) -> None:
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
        return json.loads(export_json.read_text()) if export_json.is_file() else {}

    @property
    def img_size(self) -> int:
        """The square input size the model takes (H = W)."""
        size = self.session.get_inputs()[0].shape[-1]
        if isinstance(size, int):
            return size
        if "img_size" in self.metadata:
            return int(self.metadata["img_size"])
        raise ValueError(f"onnx_path: {self.path} has no fixed input size and no export.json beside it")

    @property
    def class_names(self) -> list[str]:
        """The classes of the logits' columns, in order."""
        if "class_names" not in self.metadata:
            raise FileNotFoundError(
                f"onnx_path: {self.path.with_name('export.json')} is missing; keep the export.json that "
                "`python -m bcd.export` wrote next to the .onnx file"
            )
        return list(self.metadata["class_names"])

    def class_logits(self, images: np.ndarray) -> np.ndarray:
        """Per-class logits (N, C) for a uint8 (N, 3, H, W) RGB batch."""
        size = self.img_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(
                f"images: expected a uint8 array of shape (N, 3, {size}, {size}) (RGB, resized with "
                f"bcd.data.dataset.resize_square), got {images.dtype} {images.shape}"
            )
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images)})[0]
