"""Inference throughput of the bcd classifier: torch eager, channels_last, torch.compile and ONNX Runtime."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from bcd.bench.measure import median_rate, recording_peak_rss
from bcd.config.checks import to_plain
from bcd.inference.export import ExportedClassifier, export_onnx
from bcd.inference.runners import OnnxRunner
from bcd.models.classifier import Classifier
from bcd.models.fitting import AUTOCAST_DTYPES

log = logging.getLogger(__name__)


def classifier(cfg: DictConfig, class_names: list[str], channels_last: bool) -> ExportedClassifier:
    """The bench's model as bcd.predict and bcd.export run it: uint8 images in, per-class logits out."""
    model = {**to_plain(cfg.model), "pretrained": False, "weights_path": None, "channels_last": channels_last}
    torch.manual_seed(0)  # same weights for every variant
    return ExportedClassifier(
        Classifier(class_names=class_names, task=cfg.task.name, model=model, loss=to_plain(cfg.loss),
                   optimizer=to_plain(cfg.optimizer), normalize=cfg.augmentation.normalize)
    ).eval()


def torch_runner(model: torch.nn.Module, device: str, precision: str) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 NCHW numpy batch -> logits, the way bcd.predict's TorchRunner runs it."""
    model = model.to(device)
    dtype = AUTOCAST_DTYPES.get(precision)

    @torch.inference_mode()
    def run(images: np.ndarray) -> np.ndarray:
        with torch.autocast(torch.device(device).type, dtype=dtype) if dtype else nullcontext():
            return model(torch.from_numpy(images).to(device, non_blocking=True)).float().cpu().numpy()

    return run


def runners(cfg: DictConfig, class_names: list[str], device: str, precision: str, out_dir: Path) -> dict[str, Any]:
    """Every runtime to time, by name; a runtime that fails to build is kept as its error message."""
    eager = classifier(cfg, class_names, channels_last=False)
    fast = classifier(cfg, class_names, channels_last=True)
    built: dict[str, Any] = {"torch eager": torch_runner(eager, device, precision),
                             "torch channels_last": torch_runner(fast, device, precision)}
    if cfg.bench.compile:
        try:
            built["torch.compile"] = torch_runner(torch.compile(fast), device, precision)
        except Exception as e:  # compilers fail in many ways (no C++ compiler, unsupported op)
            built["torch.compile"] = f"{type(e).__name__}: {e}"
    if device == "cpu":  # bcd's OnnxRunner is ONNX Runtime's CPU provider
        path = out_dir / "model.onnx"
        try:
            example = torch.zeros(2, 3, cfg.model.img_size, cfg.model.img_size, dtype=torch.uint8)
            export_onnx(fast, example, path, opset=None)
            # as many threads as torch has here, so the two runtimes compete on equal terms
            built["onnxruntime"] = OnnxRunner(path, threads=torch.get_num_threads()).class_logits
        except Exception as e:  # an export failure is a result to report, not a reason to lose the bench
            built["onnxruntime"] = f"{type(e).__name__}: {e}"
    return built


def inference_section(cfg: DictConfig, class_names: list[str], device: str, precision: str,
                      out_dir: Path) -> dict[str, Any]:
    """Images/s of each runtime at each batch size, the largest probability difference to eager, and memory."""
    out_dir.mkdir(parents=True, exist_ok=True)
    size, timing = cfg.model.img_size, cfg.bench.timing
    rng = np.random.default_rng(0)
    inputs = {b: rng.integers(0, 256, (b, 3, size, size), dtype=np.uint8) for b in cfg.bench.inference_batch_sizes}
    eager_probabilities: dict[int, np.ndarray] = {}
    result: dict[str, Any] = {"device": device, "precision": precision, "runtimes": {}}
    for name, run in runners(cfg, class_names, device, precision, out_dir).items():
        if isinstance(run, str):
            result["runtimes"][name] = {"error": run}
            log.warning("inference %s: %s", name, run)
            continue
        record: dict[str, Any] = {"batches": {}}
        with recording_peak_rss(record):
            for batch, images in inputs.items():
                calls = max(1, cfg.bench.inference_images // batch)
                timed = median_rate(lambda r=run, x=images, n=calls: [r(x) for _ in range(n)], calls * batch,
                                    timing.warmup, timing.repeats, device)
                probabilities = torch.softmax(torch.as_tensor(run(images)).double(), dim=1).numpy()
                eager = eager_probabilities.setdefault(batch, probabilities)  # the first runtime is eager
                timed["max_abs_diff_probs_vs_eager"] = float(np.abs(probabilities - eager).max())
                record["batches"][str(batch)] = timed
        result["runtimes"][name] = record
    return result
