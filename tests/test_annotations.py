"""Burned-in annotation marks: found in the corners wherever flips and rotations put them, filled inside the model
(dataset.mask_annotations=true, ONNX included), flagged by the audit when the corners carry the class; the
background-only check of bcd.evaluate; and audit.fail_on stopping a run on a planted label conflict."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bcd.data.sources import DatasetError
from bcd.data.synthetic import generate_image
from bcd.evaluation.annotation_marks import annotation_audit
from bcd.models.annotations import AnnotationMask, annotation_regions, mark_pixels
from tests.helpers.commands import run_evaluate

SIZE = 64
STAMPS = {"A": (200, 40, 50), "B": (20, 20, 20)}  # a red label for class A, a black one for class B


def stamped(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """The image with a small label of text-like strokes burned into its bottom-right corner."""
    out = image.copy()
    for column in range(SIZE - 15, SIZE - 3, 3):
        out[SIZE - 8 : SIZE - 3, column : column + 2] = colour
    return out


def write_stamped(root: Path, per_class: int = 16, stamp: bool = True) -> list[tuple[Path, str]]:
    """Two classes of the same kind of smear, told apart by nothing but their corner labels."""
    written = []
    for label, colour in STAMPS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = generate_image(0, np.random.default_rng([ord(label), i]), SIZE)
            path = root / label / f"{i}.png"
            Image.fromarray(stamped(image, colour) if stamp else image).save(path)
            written.append((path, label))
    return written


def tensor(path: Path) -> torch.Tensor:
    """An image file as a (1, 3, H, W) float tensor in 0..255."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1).float()[None]


def test_the_mask_finds_the_label_in_any_corner_and_fills_it(tmp_path: Path) -> None:
    (path, _), *_ = write_stamped(tmp_path / "stamped", per_class=1)
    (plain, _), *_ = write_stamped(tmp_path / "plain", per_class=1, stamp=False)
    image, base = tensor(path), tensor(plain)
    for turn in (lambda x: x, lambda x: torch.rot90(x, 1, (2, 3)), lambda x: torch.flip(x, (2,)),
                 lambda x: torch.rot90(x, 2, (2, 3))):
        turned = turn(image)
        assert mark_pixels(turned).sum() >= mark_pixels(turn(base)).sum() + 20 and annotation_regions(turned).any()
        masked = AnnotationMask()(turned)
        assert mark_pixels(masked).sum() <= mark_pixels(turn(base)).sum()  # the label is gone
        assert (masked != turned).any(dim=1).float().mean() < 0.06  # and little else changed


def test_the_audit_flags_corners_that_carry_the_class_and_the_mask_removes_it(tmp_path: Path) -> None:
    written = write_stamped(tmp_path / "stamped")
    paths, labels = [p for p, _ in written], [label for _, label in written]
    audit = annotation_audit(paths, labels, [str(p) for p in paths], folds=4)
    assert audit.corner_score.balanced_accuracy > 0.9 and audit.warning()
    # the stamp's corner, but for a few images where a dark synthetic nucleus outweighs it in another corner
    assert audit.corners.count("bottom-right") >= 0.75 * len(paths) and {"red", "black"} <= set(audit.kinds)
    masked_root = tmp_path / "masked"
    for path, label in written:  # what the model sees with dataset.mask_annotations=true
        (masked_root / label).mkdir(parents=True, exist_ok=True)
        masked = AnnotationMask()(tensor(path))[0].permute(1, 2, 0).round().byte().numpy()
        Image.fromarray(masked).save(masked_root / label / path.name)
    masked_paths = [masked_root / label / path.name for path, label in written]
    after = annotation_audit(masked_paths, labels, [str(p) for p in masked_paths], folds=4)
    assert not after.warning() and after.corners.count("bottom-right") <= 0.25 * len(paths)
    assert after.corner_score.balanced_accuracy < audit.corner_score.balanced_accuracy - 0.15


def test_mask_annotations_is_part_of_the_model_and_of_its_onnx_export(train_run, tmp_path: Path) -> None:
    import onnxruntime

    from bcd.models.classifier import load_classifier

    summary = train_run("dataset.mask_annotations=true", "trainer.limit_train_batches=1", "test=false")
    model = load_classifier(summary.checkpoints.last).eval()
    assert isinstance(model.annotation_mask, AnnotationMask)
    images = torch.from_numpy(np.stack([stamped(generate_image(0, np.random.default_rng(i), SIZE), STAMPS["A"])
                                        for i in range(2)]).transpose(0, 3, 1, 2).copy())
    images = torch.nn.functional.interpolate(images.float(), size=48).round().to(torch.uint8)
    with torch.no_grad():  # the forward fills the label first: the same as feeding the filled image
        filled = AnnotationMask()(images.float()).round().to(torch.uint8)
        torch.testing.assert_close(model(images), model(filled), atol=1e-4, rtol=0)
    path = tmp_path / "mask.onnx"
    torch.onnx.export(AnnotationMask(), (images.float(),), path, input_names=["images"], output_names=["out"],
                      dynamo=True)
    (exported,) = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": images.float().numpy()})
    np.testing.assert_allclose(exported, AnnotationMask()(images.float()).numpy(), atol=1e-3)


def test_the_background_only_check_flags_a_model_that_reads_the_slide(train_run, tmp_path: Path) -> None:
    root = tmp_path / "tinted"
    for label, tint in {"A": (1.0, 0.75, 0.75), "B": (0.75, 0.85, 1.0)}.items():  # the class is in the glass
        (root / label).mkdir(parents=True)
        for i in range(24):
            image = generate_image(0, np.random.default_rng([ord(label), i]), 48, tint=tint)
            Image.fromarray(image).save(root / label / f"{i}.png")
    summary = train_run("dataset=folder", f"dataset.root={root}", "colour_norm=none", "augmentation=none",
                        "trainer.max_epochs=6", "optimizer.lr=0.01", "test=false")
    result, out = run_evaluate(tmp_path, f"ckpt_path={summary.checkpoints.last}", "split=all", "shift=none",
                               "wandb=false", "report_html=false")
    background = result["background_only"]
    assert background["chance"] == 0.5 and background["flagged"], background
    assert "well above chance: the model reads the slide" in (out / "report.md").read_text()


def test_audit_fail_on_stops_a_run_with_a_label_conflict(train_run, image_folder: Path) -> None:
    source = sorted((image_folder / "Pro").glob("*.jpg"))[0]
    shutil.copy(source, image_folder / "Benign" / "copy_filed_as_benign.jpg")
    data = ["dataset=folder", f"dataset.root={image_folder}"]
    with pytest.raises(DatasetError, match="byte-identical files with different labels") as error:
        train_run(*data, "audit.fail_on=[label_conflicts]")
    assert "copy_filed_as_benign.jpg (Benign" in str(error.value) and source.name in str(error.value)
    summary = train_run(*data, "trainer.limit_train_batches=1", "test=false")  # by default: a warning, and it trains
    assert summary.dataset.problems == {"label_conflicts": 1, "duplicates_across_splits": 0}
