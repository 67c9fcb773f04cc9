"""The label-issue candidates of a cross-validation: label_issues.csv, a contact sheet, a section of cv_report.md and
a review page (label_issues.html, the style of report.html), each saying that they are for a specialist to re-read,
not corrections."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bcd.data.decode import read_rgb
from bcd.data.sources import relative_name
from bcd.evaluation.label_issues import LabelIssue, OutOfFold
from bcd.inference.scores import ImageScores
from bcd.reporting.markdown import markdown_table
from bcd.reporting.overlays import SHEET_MAX_IMAGES, write_contact_sheet
from bcd.reporting.review import GallerySizes, GalleryWriter, gallery_items, write_review_page

CAVEAT = ("These are candidates for a specialist to read again, not corrections: the models that held each image "
          "out disagreed with its label, which a mislabelled image and a hard one both cause.")
METHOD = ("cleanlab's find_label_issues (confident learning) on the out-of-fold probabilities, ranked by "
          "self-confidence: the probability the fold model that never saw the image gave its label")
COLUMNS = ("rank", "path", "given_label", "suggested_label", "self_confidence", "fold")


def write_label_issues_csv(path: Path, issues: Sequence[LabelIssue]) -> None:
    """label_issues.csv: one row per candidate, most likely first."""
    with path.open("x", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows([i.rank, i.path, i.given, i.suggested, f"{i.self_confidence:.6f}", i.fold] for i in issues)


def label_issue_lines(issues: Sequence[LabelIssue], n_images: int, excluded_manifest: str) -> list[str]:
    """The section of cv_report.md."""
    lines = ["", "## Label-issue candidates", "", CAVEAT, "",
             f"- Method: {METHOD}.",
             f"- {len(issues)} of {n_images} images flagged; the list is `label_issues.csv`, the images "
             "`label_issues.png` and `label_issues.html`.",
             f"- A re-run without them: `dataset=manifest dataset.manifest={excluded_manifest}` with the same "
             "dataset.root (the dataset folder is never changed).", ""]
    if not issues:
        return [*lines, "No image was flagged."]
    pairs = Counter((i.given, i.suggested) for i in issues)
    lines += [*markdown_table(["given label", "suggested", "images"], [[g, s, n] for (g, s), n in pairs.most_common()]),
              "", *markdown_table(["rank", "image", "given", "suggested", "self-confidence", "fold"],
                                  [[i.rank, f"`{Path(i.path).name}`", i.given, i.suggested, f"{i.self_confidence:.3f}",
                                    i.fold] for i in issues[:20]])]
    return lines + (["", f"... and {len(issues) - 20} more in label_issues.csv"] if len(issues) > 20 else [])


def write_label_issue_pictures(cv_dir: Path, issues: Sequence[LabelIssue], out_of_fold: OutOfFold,
                               class_names: Sequence[str], root: Path) -> None:
    """label_issues.png (the first candidates) and label_issues.html (every candidate, in the review page)."""
    if not issues:
        return
    images = [read_rgb(issue.path) for issue in issues]
    shown = issues[:SHEET_MAX_IMAGES]
    write_contact_sheet(cv_dir / "label_issues.png", images[: len(shown)],
                        [f"#{i.rank} {i.given} -> {i.suggested} ({i.self_confidence:.2f})" for i in shown])
    gallery = GalleryWriter(cv_dir, GallerySizes(), folder="label_issues")
    for k, image in enumerate(images):
        gallery.add(k, image)
    index = {path: k for k, path in enumerate(out_of_fold.paths)}
    rows = [index[issue.path] for issue in issues]
    probs = out_of_fold.probabilities[rows]
    scores = ImageScores(probs, probs.argmax(1), probs.max(1), np.full(len(rows), np.nan), None,
                         np.zeros(len(rows), dtype=bool))
    names = [relative_name(Path(i.path), root) for i in issues]
    write_review_page(
        cv_dir / "label_issues.html", mode="evaluate", title=f"Label-issue candidates of {cv_dir.name}",
        subtitle=CAVEAT, class_names=class_names,
        items=gallery_items(names, scores, [""] * len(issues), gallery.files, out_of_fold.targets[rows],
                            [f"fold {i.fold}" for i in issues]),
        summary_rows=[("method", METHOD), ("candidates", f"{len(issues)} of {len(out_of_fold.paths)} images"),
                      ("columns", "true class = the given label, predicted = the label the fold model suggested")],
    )
