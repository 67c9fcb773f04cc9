"""The dataset audit's report: audit.md, audit.json, the colour figure and the contact sheets of duplicates and
proxy groups, drawn from a bcd.evaluation.dataset_audit.DatasetAudit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bcd.data.colour_features import STAT_NAMES
from bcd.data.decode import read_rgb
from bcd.data.near_duplicates import NearPair
from bcd.data.proxy_groups import describe_proxy_groups
from bcd.evaluation.dataset_audit import DatasetAudit
from bcd.reporting.markdown import markdown_table
from bcd.reporting.overlays import SHEET_MAX_IMAGES, write_contact_sheet
from bcd.reporting.plots import saved_figure, series_colour
from bcd.runs.run_dir import write_json

__all__ = ["write_audit_report"]

# The colour figure's panels: a title and the STAT_NAMES it shows side by side.
COLOUR_PANELS = (
    ("Mean colour (0-255)", ("R mean", "G mean", "B mean")),
    ("Background: the glass between cells (0-255)", ("background R", "background G", "background B")),
    ("Optical density per channel", ("OD R", "OD G", "OD B")),
    ("Stain channels (colour deconvolution)", ("haematoxylin", "eosin", "DAB (residual)")),
)


def write_audit_report(out: Path, audit: DatasetAudit, examples: int = 12) -> dict[str, Any]:
    """Write audit.json, the PNGs and audit.md to out; returns the summary that audit.json holds."""
    out.mkdir(parents=True, exist_ok=True)
    summary = audit.summary()
    figures = {"colour_by_class": plot_colour_by_class(audit, out / "colour_by_class.png")}
    pairs = duplicate_examples(audit, examples)
    if pairs:
        figures["duplicates"] = pair_sheet(audit, pairs, out / "duplicates.png")
    if audit.proxy_ids:
        figures |= proxy_sheets(audit, out, per_cluster=examples)
    summary["figures"] = {name: path.name for name, path in figures.items()}
    write_json(out / "audit.json", summary)
    (out / "audit.md").write_text("\n".join(audit_markdown(audit, summary)) + "\n")
    return summary


def duplicate_examples(audit: DatasetAudit, limit: int) -> list[tuple[int, int, str]]:
    """Up to `limit` (first, second, caption) pairs for the sheet: label conflicts first, then near, then exact."""
    def rank(pair: NearPair) -> tuple[bool, bool]:
        first, second = audit.samples[pair.first], audit.samples[pair.second]
        return first.label == second.label, first.sha1 == second.sha1

    ranked = sorted(audit.near_pairs, key=rank)
    captions = []
    for pair in ranked[:limit]:
        first, second = audit.samples[pair.first], audit.samples[pair.second]
        kind = "identical" if first.sha1 == second.sha1 else f"{pair.distance} bits"
        conflict = " LABEL CONFLICT" if first.label != second.label else ""
        captions.append((pair.first, pair.second, f"{kind}{conflict}"))
    return captions


def pair_sheet(audit: DatasetAudit, pairs: Sequence[tuple[int, int, str]], path: Path) -> Path:
    """Duplicate pairs side by side (three pairs a row), each image titled with its file and the pair's kind."""
    images, titles = [], []
    for first, second, caption in pairs[: SHEET_MAX_IMAGES // 2]:
        for index in (first, second):
            sample = audit.samples[index]
            images.append(read_rgb(sample.path))
            titles.append(f"{_short(audit.relative(sample.path))}\n{caption}")
    return write_contact_sheet(path, images, titles, columns=6)


def proxy_sheets(audit: DatasetAudit, out: Path, per_cluster: int) -> dict[str, Path]:
    """One contact sheet per class: a row of images from each of its proxy clusters."""
    sheets = {}
    for label in audit.class_names:
        clusters = sorted({p for p, s in zip(audit.proxy_ids, audit.samples, strict=True) if p and s.label == label})
        if not clusters:
            continue
        columns = max(1, min(per_cluster, SHEET_MAX_IMAGES // len(clusters)))
        images, titles = [], []
        for cluster in clusters[: SHEET_MAX_IMAGES // columns]:
            members = [i for i, p in enumerate(audit.proxy_ids) if p == cluster]
            padding = columns - min(columns, len(members))
            for i in members[:columns]:
                images.append(read_rgb(audit.samples[i].path))
                titles.append(f"{cluster} ({len(members)})\n{_short(audit.relative(audit.samples[i].path))}")
            # blank cells keep every cluster on its own row of the sheet
            images += [np.full((8, 8, 3), 255, dtype=np.uint8)] * padding
            titles += [""] * padding
        sheets[f"proxy_groups_{label}"] = write_contact_sheet(
            out / f"proxy_groups_{label}.png", images, titles, columns=columns
        )
    return sheets


def plot_colour_by_class(audit: DatasetAudit, path: Path) -> Path:
    """Per-class mean (points) and standard deviation (error bars) of the colour and stain statistics."""
    labels = np.array([s.label for s in audit.samples])
    classes = [name for name in audit.class_names if (labels == name).any()]
    width = 0.8 / len(classes)
    with saved_figure(path, nrows=2, ncols=2, figsize=(11.0, 8.0)) as (fig, axes):
        for ax, (title, stats) in zip(axes.flat, COLOUR_PANELS, strict=True):
            columns = [STAT_NAMES.index(stat) for stat in stats]
            x = np.arange(len(stats))
            for k, name in enumerate(classes):
                rows = audit.colour.stats[labels == name][:, columns]
                # points, not bars: the differences that matter are small next to the distance from zero
                ax.errorbar(x + (k - (len(classes) - 1) / 2) * width, rows.mean(axis=0), yerr=rows.std(axis=0),
                            fmt="o", color=series_colour(k), capsize=3, label=f"{name} (n={len(rows)})")
            ax.set_xticks(x, [stat.replace(" mean", "") for stat in stats])
            ax.set_title(title)
            ax.grid(axis="y", alpha=0.3)
        axes.flat[0].legend(loc="best")
        fig.suptitle("Colour by class: mean ± std over images", fontsize=13, fontweight="bold")
        fig.tight_layout()
    return path


def audit_markdown(audit: DatasetAudit, summary: dict[str, Any]) -> list[str]:
    """audit.md, section by section."""
    return [
        f"# Dataset audit: {audit.name}",
        "",
        f"- Root: `{audit.root}`; classes: {', '.join(audit.class_names)}",
        f"- Readable images: {summary['readable_images']}; unreadable: {len(summary['bad_files'])}; "
        f"other files not read: {len(summary['other_files'])}",
        "",
        *_warning_lines(audit, summary),
        "## Images per class",
        "",
        *markdown_table(["class", "images"], list(summary["counts"].items())),
        "",
        "## Sizes, modes and formats (as stored)",
        "",
        *markdown_table(["property", "values"], [[key, _counts(summary[key])] for key in ("sizes", "modes", "formats")]),
        "",
        *_file_lines(summary),
        *_duplicate_lines(audit, summary),
        *_colour_lines(audit, summary),
        *_annotation_lines(summary),
        *_split_lines(audit, summary),
    ]


def _warning_lines(audit: DatasetAudit, summary: dict[str, Any]) -> list[str]:
    shortcut = summary["colour_shortcut"]
    lines = []
    if audit.shortcut_warning():
        lines.append(
            f"- **Colour shortcut**: colour histograms alone predict the class with balanced accuracy "
            f"{shortcut['balanced_accuracy']:.3f} (chance {shortcut['chance']:.3f}). A network can score high by "
            "recognising the stain or the lamp, not the cells: test it under a colour shift."
        )
    marks = summary["annotation_marks"]
    if marks["warning"]:
        lines.append(
            f"- **Annotation shortcut**: the image corners predict the class with balanced accuracy "
            f"{marks['corner_score']['balanced_accuracy']:.3f}, {marks['difference']:+.3f} against patches from the "
            "middle of the edges: burned-in marks carry the class. Consider dataset.mask_annotations=true."
        )
    exact = summary["exact_duplicates"]["groups"]
    near = len(summary["near_duplicates"]["pairs_not_exact"])
    if exact or near:
        lines.append(f"- **Duplicates**: {exact} group(s) of byte-identical files and {near} near-duplicate pair(s) "
                     f"(perceptual hashes ≤ {audit.near_threshold} bits apart, not identical).")
    if summary["label_conflicts"]:
        lines.append(f"- **Label conflicts**: {len(summary['label_conflicts'])} duplicate group(s) carry different labels.")
    if summary["bad_files"]:
        lines.append(f"- **Unreadable files**: {len(summary['bad_files'])}.")
    return ["## Warnings", "", *(lines or ["None."]), ""]


def _annotation_lines(summary: dict[str, Any]) -> list[str]:
    """Where burned-in marks sit per class, and the corner-shortcut score against its control."""
    marks = summary["annotation_marks"]
    score = lambda key: f"{marks[key]['balanced_accuracy']:.3f} ({marks[key]['folds']} folds)"  # noqa: E731
    rows = [[name, c["images"], c["with_mark"], _counts(c["kinds"]) or "-", _counts(c["corners"]) or "-"]
            for name, c in marks["per_class"].items()]
    return [
        "## Annotation marks (burned-in labels)", "",
        "Marks found by bcd.models.annotations' colour rule (strongly red, or black) in the image corners; "
        "`dataset.mask_annotations=true` fills them with the background colour inside the model.", "",
        *markdown_table(["class", "images", "with a mark", "kind", "corner"], rows), "",
        *markdown_table(["patches (colour histograms, grouped CV)", "balanced accuracy"], [
            ["the four corners", score("corner_score")],
            ["control: four same-size patches at the middle of the edges", score("control_score")],
            ["the kind of mark alone (red, black, none)", score("kind_score")],
        ]), "",
        f"Corners minus control: **{marks['difference']:+.3f}** (a warning from {marks['warn_margin']:+.2f}: "
        "`annotation_warn_margin`). Background colour alone already predicts the class on smear data, so the "
        "corners are read against the control, not against chance.", "",
    ]


def _file_lines(summary: dict[str, Any]) -> list[str]:
    bad = [[f"`{path}`", reason] for path, reason in summary["bad_files"].items()]
    other = [[f"`{path}`", "not read: no image extension"] for path in summary["other_files"]]
    rows = bad + other
    return ["## Unreadable, empty and non-image files", "", *(markdown_table(["file", "reason"], rows) if rows else ["None."]), ""]


def _duplicate_lines(audit: DatasetAudit, summary: dict[str, Any]) -> list[str]:
    exact = [[i + 1, ", ".join(f"`{m['path']}` ({m['label']})" for m in group)]
             for i, group in enumerate(summary["exact_duplicates"]["list"])]
    near = [[f"`{p['paths'][0]}` ({p['labels'][0]})", f"`{p['paths'][1]}` ({p['labels'][1]})", p["distance_bits"]]
            for p in summary["near_duplicates"]["pairs_not_exact"]]
    conflicts = [[", ".join(f"`{m['path']}` ({m['label']})" for m in group)] for group in summary["label_conflicts"]]
    return [
        "## Exact duplicates (same bytes)",
        "",
        *(markdown_table(["group", "files"], exact) if exact else ["None."]),
        "",
        f"## Near-duplicates (perceptual hash, ≤ {audit.near_threshold} of 64 bits apart, not byte-identical)",
        "",
        "Resized, re-encoded or re-saved copies. `dataset.dedup=near` keeps them on one split side; "
        "`dataset.near_threshold` sets the distance.",
        "",
        *(markdown_table(["image", "near-duplicate", "bits apart"], near) if near else ["None."]),
        "",
        *(["![duplicates](duplicates.png)", ""] if "duplicates" in summary["figures"] else []),
        "## Label conflicts (duplicates with different labels)",
        "",
        *(markdown_table(["files"], conflicts) if conflicts else ["None."]),
        "",
    ]


def _colour_lines(audit: DatasetAudit, summary: dict[str, Any]) -> list[str]:
    shown = [stat for _, stats in COLOUR_PANELS for stat in stats]
    colour = summary["colour"]
    rows = [[stat, *(f"{colour[c][stat]['mean']:.3g} ± {colour[c][stat]['std']:.2g}" for c in colour)] for stat in shown]
    shortcut = summary["colour_shortcut"]
    verdict = "**well above chance: a colour shortcut exists**" if shortcut["warning"] else "not far above chance"
    return [
        "## Colour by class",
        "",
        "Mean ± std over the images of each class. Optical density is -log10((I+1)/256); stain channels are "
        "Ruifrok & Johnston's haematoxylin/eosin/DAB colour deconvolution.",
        "",
        *markdown_table(["statistic", *colour], rows),
        "",
        "![colour by class](colour_by_class.png)",
        "",
        "## Can colour alone predict the class?",
        "",
        f"A logistic regression on per-image colour histograms ({shortcut['folds']}-fold cross-validation, "
        "folds keep duplicate/group clusters whole): balanced accuracy "
        f"**{shortcut['balanced_accuracy']:.3f}** (folds {', '.join(f'{s:.3f}' for s in shortcut['fold_scores'])}), "
        f"chance {shortcut['chance']:.3f}: {verdict}.",
        "",
    ]


def _split_lines(audit: DatasetAudit, summary: dict[str, Any]) -> list[str]:
    grouping = summary["split_grouping"]
    lines = [
        "## What a split keeps together",
        "",
        f"- dataset.dedup={audit.dedup}: split method **{grouping['split_method']}**, "
        f"{grouping['independent_groups']} independent groups of images.",
        "",
    ]
    if audit.proxy_ids:
        sizes = grouping["proxy_cluster_sizes"]
        lines += [
            "### Proxy groups (a proxy, not patients)",
            "",
            describe_proxy_groups(audit.proxy_ids) + ".",
            "",
            *markdown_table(["class", "clusters", "images per cluster"], [[c, len(s), s] for c, s in sizes.items()]),
            "",
            *(f"![{name}]({file})" for name, file in summary["figures"].items() if name.startswith("proxy_groups_")),
            "",
        ]
    return lines


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key}: {n}" for key, n in counts.items())


def _short(relative: str, keep: int = 28) -> str:
    """A file name short enough for a contact-sheet title."""
    name = relative.rsplit("/", 1)[-1]
    return name if len(name) <= keep else "…" + name[-keep:]
