"""The human-readable outputs of an evaluation: report.md and MODEL_CARD.md."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bcd.evaluation.result import SHIFT_METRICS, CalibrationSummary, EvaluationResult, ShiftCheck
from bcd.evaluation.stats import Estimate
from bcd.reporting.markdown import markdown_table
from bcd.runs.trained import TrainedRun

HEADLINE = [
    ("acc", "Accuracy"),
    ("balanced_acc", "Balanced accuracy"),
    ("macro_f1", "Macro F1"),
    ("macro_precision", "Macro precision"),
    ("macro_recall", "Macro recall"),
    ("auroc", "AUROC (one-vs-rest, macro)"),
    ("sensitivity", "Sensitivity, malignant vs benign"),
    ("specificity", "Specificity, malignant vs benign"),
]
INTENDED_USE = (
    "Research support and screening studies on peripheral blood smear images. It is not a diagnostic "
    "device: a hematologist or pathologist must review every case, and it has not been validated on "
    "images from other hospitals, microscopes, cameras or staining protocols."
)


# what each split method (bcd.data.splits.split_method) kept on one side of the split
SPLIT_METHODS = {
    "image-level": "images assigned one by one: duplicates and images of one patient can sit in train and test",
    "exact-dedup": "byte-identical files kept on one side; near-duplicates and images of one patient can still "
                   "sit in train and test",
    "near-dedup": "near-duplicate images (perceptual hash) kept on one side; images of one patient can still "
                  "sit in train and test",
    "proxy-group": "proxy patient groups (clusters of acquisition appearance, a stand-in for the missing patient "
                   "IDs) and duplicates kept on one side",
    "real-group": "the data's own groups (e.g. patients) and duplicates kept on one side",
}


def shift_table(shift: ShiftCheck) -> list[list[str]]:
    """Rows (shift, strength, accuracy, macro-F1) for a markdown table."""
    return [
        [row.kind, f"±{row.strength:.0%}" if row.strength else "none",
         *(getattr(row, m).format() for m in SHIFT_METRICS)]
        for row in shift.rows
    ]


def _headline(result: EvaluationResult) -> list[tuple[str, Estimate]]:
    """The headline metrics the evaluation has, with their labels."""
    return [(label, result.metrics[key]) for key, label in HEADLINE if key in result.metrics]


def _headline_rows(result: EvaluationResult) -> list[list[str]]:
    return [[label, estimate.format()] for label, estimate in _headline(result)]


def summary_rows(result: EvaluationResult) -> list[tuple[str, str]]:
    """The headline of metrics.json as rows of the review page's summary table (the numbers report.md shows)."""
    level = f"{result.ci_level:.0%} CI"
    rows = [(f"{label} [{level}]", estimate.format()) for label, estimate in _headline(result)]
    robust = result.robust_acc
    if robust:
        rows.append((f"robust_acc: accuracy under {robust.kind} ±{robust.strength:.0%} [{level}]",
                     robust.estimate.format()))
    background = result.background_only
    if background:
        rows.append((f"background only: accuracy with the cells removed [{level}]",
                     f"{background.acc.format()} (chance {background.chance:.3f})"
                     + ("; flagged: the model reads the slide" if background.flagged else "")))
    occlusion = result.occlusion
    if occlusion:
        rows.append((f"corners occluded / same area elsewhere: accuracy [{level}]",
                     f"{occlusion.corners.format()} / {occlusion.elsewhere.format()}"
                     + ("; flagged: the model reads the corners" if occlusion.flagged else "")))
    calibration = result.calibration
    rows.append(("ECE before / after temperature scaling", f"{calibration.before.ece:.4f} / "
                 + (f"{calibration.after.ece:.4f} (T = {calibration.temperature:.3f})"
                    if calibration.after else f"no temperature: {calibration.status}")))
    rows.append(("split method", SPLIT_METHODS.get(result.split_method, result.split_method)))
    return rows


def _per_class_rows(result: EvaluationResult) -> list[list[str]]:
    estimates = result.metrics
    return [
        [name, *(estimates[f"{metric}/{name}"].format() for metric in ("precision", "recall", "f1")),
         int(estimates[f"support/{name}"].value)]
        for name in result.class_names
    ]


def _calibration_rows(calibration: CalibrationSummary) -> list[list[str]]:
    """ECE and Brier score before and (when a temperature was fitted) after temperature scaling, else why not."""
    rows = [["before temperature scaling", calibration.before]]
    if calibration.after:
        rows.append([f"after (T = {calibration.temperature:.3f}, fitted on val)", calibration.after])
    table = [[label, f"{values.ece:.4f}", f"{values.brier:.4f}"] for label, values in rows]
    if not calibration.after:
        table.append([f"no temperature scaling: {calibration.status}", "", ""])
    return table


def _data_lines(result: EvaluationResult, run: TrainedRun, datamodule: Any) -> list[str]:
    """Where the images came from and how they were split."""
    counts = {split: Counter(s.label for s in datamodule.split_samples(split)) for split in ("train", "val", "test")}
    duplicates = sum(n - 1 for n in Counter(s.sha1 for s in datamodule.samples).values() if n > 1)
    rows = [[split, *(counts[split][c] for c in datamodule.planned.source_classes), sum(counts[split].values())]
            for split in counts]
    return [
        f"- Dataset: **{datamodule.spec.name}** ({datamodule.data_dir}), fingerprint `{datamodule.planned.fingerprint}`",
        f"- Classes: {', '.join(datamodule.planned.source_classes)}"
        + (f"; benign: {', '.join(datamodule.spec.negative_classes)}" if datamodule.spec.negative_classes else ""),
        f"- Split method: **{result.split_method}**, stratified; "
        f"{SPLIT_METHODS.get(result.split_method, 'see the training run')} "
        f"({duplicates} byte-identical duplicate file(s) in the data).",
        "",
        *markdown_table(["split", *datamodule.planned.source_classes, "total"], rows),
    ]


def _shift_lines(result: EvaluationResult) -> list[str]:
    """The colour-shift table (when the evaluation ran one) and the background-only check beside it."""
    shift = result.shift
    if not shift:
        return _background_lines(result)
    lines = [
        "## Colour shifts (stain-shortcut check)",
        "",
        "The same images re-evaluated with their colours shifted as another lab's stain or camera would shift "
        "them (channel_gain: each of R, G, B times U[1-s, 1+s]; brightness: all channels times one factor; "
        f"hed: stain amounts jittered in haematoxylin-eosin-DAB space); seeded (seed {shift.seed}), so every "
        "model sees the same shifted images. A large drop means the model reads the stain, not the cell.",
        "",
        *markdown_table(["shift", "strength", "accuracy", "macro-F1"], shift_table(shift)),
        "",
    ]
    robust = result.robust_acc
    if robust:
        lines += [f"**robust_acc** (accuracy under {robust.kind} ±{robust.strength:.0%}): {robust.estimate.format()}",
                  ""]
    return lines + _background_lines(result)


def _background_lines(result: EvaluationResult) -> list[str]:
    """The background-only check, or nothing when it did not run."""
    background = result.background_only
    if not background:
        return _occlusion_lines(result)
    verdict = ("**well above chance: the model reads the slide (stain, lamp, marks), not only the cell**"
               if background.flagged else "not well above chance")
    return ["## Background only (cells removed)", "",
            "The same images with every stained cell (and mark) filled with the slide's background colour "
            "(bcd.data.background: a colour threshold, documented there).", "",
            f"Accuracy {background.acc.format()}, chance {background.chance:.3f}: {verdict} (flagged "
            f"when the lower bound exceeds chance by {background.flag_margin:.2f}).", ""] + _occlusion_lines(result)


def _occlusion_lines(result: EvaluationResult) -> list[str]:
    """The occlusion check, or nothing when it did not run."""
    occlusion = result.occlusion
    if not occlusion:
        return []
    verdict = ("**the corners cost far more than the same area elsewhere: the model reads something in the corners "
               "(a burned-in label, a stamp)**" if occlusion.flagged else "the corners cost no more than the same "
               "area elsewhere")
    return ["## Corners occluded (a shortcut in the corners?)", "",
            f"The same images with their four corner squares ({occlusion.side:.0%} of the side each) filled with the "
            "slide's background colour, against four squares of the same size elsewhere (bcd.data.occlusion).", "",
            f"Accuracy with the corners occluded {occlusion.corners.format()}, with the same area elsewhere "
            f"{occlusion.elsewhere.format()}; the drop {occlusion.drop.format()} (paired): "
            f"{verdict} (flagged from a drop of {occlusion.flag_drop:.2f} whose interval excludes 0).", ""]


def write_report(
    path: Path,
    result: EvaluationResult,
    figures: Mapping[str, Path],
    run: TrainedRun,
    datamodule: Any,
) -> None:
    """report.md: the paper-style tables with confidence intervals, calibration and the figures."""
    class_names = result.class_names
    level = f"{result.ci_level:.0%}"
    lines = [
        f"# Evaluation of `{run.checkpoint.name}`",
        "",
        f"- Checkpoint: `{run.checkpoint}`",
        f"- Split: **{result.split}**, {result.n_images} images, split method **{result.split_method}**; "
        f"{level} confidence intervals from {result.n_boot} bootstrap resamples of the images.",
        *(["- Test-time augmentation: each image scored in its 8 flips and 90-degree rotations, probabilities "
           "averaged (`tta=true`, as `bcd.predict tta=true`)."] if result.tta else []),
        "",
        "## Headline metrics",
        "",
        *markdown_table(["metric", f"value [{level} CI], {result.split_method} split"], _headline_rows(result)),
        "",
        "## Per class",
        "",
        *markdown_table(["class", "precision", "recall", "F1", "support"], _per_class_rows(result)),
        "",
        "## Confusion matrix (rows: true, columns: predicted)",
        "",
        *markdown_table(["", *class_names], [[name, *row] for name, row in zip(class_names, result.confusion_matrix,
                                                                        strict=True)]),
        "",
        "## Calibration",
        "",
        *markdown_table(["", "ECE", "Brier"], _calibration_rows(result.calibration)),
        "",
        *_shift_lines(result),
        "## Data",
        "",
        *_data_lines(result, run, datamodule),
        "",
        "## Figures",
        "",
        *(f"![{name}]({figure.name})" for name, figure in figures.items()),
        "",
    ]
    path.write_text("\n".join(lines))


def _option(section: Mapping[str, Any]) -> str:
    """The option a recorded config section chose: its name (or, in runs of earlier versions, its class)."""
    return str(section.get("name") or str(section.get("_target_", "?")).rsplit(".", 1)[-1])


def write_model_card(
    path: Path, result: EvaluationResult, run: TrainedRun, datamodule: Any
) -> None:
    """MODEL_CARD.md: data, training recipe, metrics, calibration, intended use and known limitations."""
    config = run.config
    recipe = []
    if config is not None:  # the run's recorded config, read as text (plain data, nothing built from it)
        model, optimizer = config.get("model", {}), config.get("optimizer", {})
        recipe = [
            f"- Model: `{model.get('name')}` at {datamodule.img_size} px, head `{model.get('head')}`, "
            f"pretrained: {model.get('pretrained')}, weights file: {model.get('weights_path')}",
            f"- Task: {config.get('task', {}).get('name')}; loss `{_option(config.get('loss', {}))}`; optimizer "
            f"`{_option(optimizer)}` lr {optimizer.get('lr')}",
            f"- Epochs trained: {run.summary.epochs if run.summary else 'unknown'} (max "
            f"{config.get('trainer', {}).get('max_epochs')}); augmentation: "
            f"{', '.join(config.get('augmentation', {}).get('train') or {}) or 'none'}; seed {config.get('seed')}",
        ]
    calibration = result.calibration
    lines = [
        f"# Model card: `{run.checkpoint.name}`",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Data",
        "",
        *_data_lines(result, run, datamodule),
        "",
        "## Training",
        "",
        *recipe,
        "",
        f"## Performance on the {result.split} split ({result.n_images} images, {result.split_method} split)",
        "",
        *markdown_table(["metric", f"value [{result.ci_level:.0%} CI], {result.split_method} split"],
                        _headline_rows(result)),
        "",
        f"Calibration: ECE {calibration.before.ece:.4f} before"
        + (f", {calibration.after.ece:.4f} after temperature scaling (T = {calibration.temperature:.3f})"
           if calibration.after else f"; no temperature scaling ({calibration.status})")
        + ".",
        "",
        *_shift_lines(result),
        "## Known limitations",
        "",
        *([] if result.split_method == "real-group" else [
            f"- The split ({result.split_method}) is not by patient: the public Taleqani release has no patient "
            "IDs, so images of one patient (about 37 per patient) can be in both training and test; scores are "
            "optimistic for new patients (a proxy-group split or bcd.cv narrows, but cannot close, this gap)."]),
        "- The classes differ in stain colour and illumination as well as in cell morphology; a model can "
        "score high by recognising the slide rather than the cell, and may fail on another lab's stain.",
        "- Confidence intervals reflect resampling of these test images only, not variation between "
        "hospitals, devices or staining protocols.",
        "",
    ]
    path.write_text("\n".join(lines))
