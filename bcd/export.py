"""Export a checkpoint for deployment: `python -m bcd.export ckpt_path=... [format=onnx|torchscript]`.

The exported model takes uint8 RGB images (N, 3, H, W), normalises them itself and returns per-class logits.
Every export is checked against torch on the run's test images (else synthetic smears) before it is trusted,
with the views (tta) and the calibration that bcd.predict would apply.
"""

from __future__ import annotations

import logging
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from bcd.config.entry import entry_point
from bcd.inference.export import (
    FILE_NAMES,
    RESIZE,
    ExportedClassifier,
    export_onnx,
    export_torchscript,
    max_probability_difference,
    parity_images,
)
from bcd.inference.views import resolve_tta
from bcd.models.backbone import input_size
from bcd.models.classifier import load_classifier
from bcd.runs.run_dir import claim_run_dir, command_line, write_json
from bcd.runs.trained import TrainedRun

log = logging.getLogger(__name__)

PARITY_RUNTIMES = {"onnx": f"onnxruntime {version('onnxruntime')} CPUExecutionProvider",
                   "torchscript": f"torch.jit {version('torch')} CPU"}


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export cfg.ckpt_path as cfg.format, check parity with torch and write export.json; returns its contents."""
    if cfg.format not in FILE_NAMES:
        raise ValueError(f"format: {cfg.format!r} is not one of {list(FILE_NAMES)}; set format=onnx or format=torchscript")
    if cfg.parity_images < 1:
        raise ValueError(f"parity_images: {cfg.parity_images} must be >= 1 (every export is checked against torch)")
    out = Path(cfg.paths.output_dir)
    claim_run_dir(out)
    run = TrainedRun.from_checkpoint(cfg.ckpt_path)
    classifier = load_classifier(run.checkpoint)
    tta = resolve_tta(None, classifier.hparams)
    img_size = input_size(classifier.hparams["model"])
    calibration, calibration_path = run.calibration(cfg.calibration, tta, checkpoint_tta=tta)

    path = out / FILE_NAMES[cfg.format]
    model = ExportedClassifier(classifier).eval()
    # batch 2, not 1: torch.export would specialise a batch dimension of size 1 to a constant
    example = torch.zeros(2, 3, img_size, img_size, dtype=torch.uint8)
    opset = export_onnx(model, example, path, cfg.opset) if cfg.format == "onnx" else None
    if cfg.format == "torchscript":
        export_torchscript(model, example, path)
    images, source = parity_images(run.test_images(), img_size, cfg.parity_images)
    if source == "test split":
        source = f"test split of {run.run_dir}"
    else:
        log.warning("parity check on synthetic images: %s has no test images at hand", run.checkpoint)
    max_diff = max_probability_difference(classifier, path, torch.from_numpy(images), tta)

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
        "output": {"name": "logits", "dtype": "float32", "shape": ["N", len(classifier.class_names)],
                   "meaning": "per-class logits of one view; scores as bcd.inference.scores defines them"},
        "tta": tta,
        "temperature": calibration.temperature,
        "calibration": calibration.to_json(),
        "calibration_file": str(calibration_path) if calibration_path else None,
        "parity": {"max_abs_diff_probs": max_diff, "n_images": len(images), "images": source, "tta": tta,
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


@entry_point("export")
def main(cfg: DictConfig) -> None:
    """`python -m bcd.export` and `bcd-export`."""
    export(cfg)


if __name__ == "__main__":
    main()
