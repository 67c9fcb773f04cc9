"""report.html: one self-contained review page per evaluation or prediction run.

The page shows the report's numbers (report.md and MODEL_CARD.md rendered to HTML, the same text), a confusion
matrix whose cells filter the gallery, and a gallery of every image (thumbnail, classes, probabilities, the
correct/error, abstained, out-of-distribution and colour flags, an optional Grad-CAM overlay, a larger copy on
click) with sorting, filters and pages, so that 17,000 images open as fast as 100. Images are files under
review/ beside the page and everything else is inline: the folder can be zipped and mailed, and the page makes
no request to any host. Jinja2 (already installed with torch) fills the template with autoescaping, markdown-it
(installed with rich) renders the markdown with raw HTML disabled, and the gallery's data travels as JSON whose
`<`, `>` and `&` are escaped, drawn with textContent: a file name can never become markup.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup
from PIL import Image

from bcd.inference.scores import ImageScores
from bcd.reporting.overlays import overlay

GALLERY_DIR = "review"


@dataclass(frozen=True)
class GallerySizes:
    """Longest sides of the gallery's thumbnails and of the larger copy a click opens."""

    thumbnail: int = 160
    large: int = 512


def _fit(image: np.ndarray, longest: int) -> Image.Image:
    """The image scaled so that its longest side is at most `longest` (never enlarged)."""
    picture = Image.fromarray(image)
    scale = min(1.0, longest / max(picture.size))
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.Resampling.LANCZOS) if scale < 1.0 else picture


class GalleryWriter:
    """Writes each image's thumbnail and larger copy (and, when explained, its Grad-CAM overlay at both sizes)
    under <page dir>/review/, as the images come, and remembers the files for the page."""

    def __init__(self, page_dir: Path, sizes: GallerySizes, folder: str = GALLERY_DIR) -> None:
        self.folder = page_dir / folder
        self.folder.mkdir(parents=True, exist_ok=False)
        self.sizes = sizes
        self.files: dict[int, dict[str, str | None]] = {}

    def add(self, index: int, image: np.ndarray, heatmap: np.ndarray | None = None) -> None:
        """Write the files of image number `index` (an H x W x 3 uint8 array; heatmap: its Grad-CAM map)."""
        names = {"th": self._save(image, f"{index:06d}", self.sizes.thumbnail),
                 "lg": self._save(image, f"{index:06d}-large", self.sizes.large), "ct": None, "cl": None}
        if heatmap is not None:
            blended = overlay(image, heatmap)
            names["ct"] = self._save(blended, f"{index:06d}-gradcam", self.sizes.thumbnail)
            names["cl"] = self._save(blended, f"{index:06d}-gradcam-large", self.sizes.large)
        self.files[index] = names

    def _save(self, image: np.ndarray, stem: str, longest: int) -> str:
        """Save a JPEG copy, returning its path relative to the page."""
        _fit(image, longest).save(self.folder / f"{stem}.jpg", quality=88)
        return f"{self.folder.name}/{stem}.jpg"


def gallery_items(
    names: Sequence[str],
    scores: ImageScores,
    colour_warnings: Sequence[str],
    files: dict[int, dict[str, str | None]],
    targets: Sequence[int] | None = None,
    splits: Sequence[str | None] | None = None,
) -> list[dict[str, Any]]:
    """What the page knows of every image (short keys: the page may hold 17,000 of them)."""
    items = []
    for k, name in enumerate(names):
        target = None if targets is None else int(targets[k])
        probs = scores.probabilities[k]
        items.append({
            "i": k, "n": name, "t": target, "p": int(scores.predicted[k]), "c": round(float(scores.confidence[k]), 5),
            "pr": [round(float(p), 5) for p in probs],
            # the loss of the calibrated probability of the true class: what "sort by loss" orders by
            "l": None if target is None else round(-math.log(max(float(probs[target]), 1e-12)), 5),
            "o": None if scores.ood is None else bool(scores.ood[k]),
            "e": None if math.isnan(scores.ood_score[k]) else round(float(scores.ood_score[k]), 5),
            "a": bool(scores.abstain[k]), "w": colour_warnings[k], "s": None if splits is None else splits[k],
            **files.get(k, {"th": None, "lg": None, "ct": None, "cl": None}),
        })
    return items


def markdown_html(text: str) -> Markup:
    """CommonMark with tables, raw HTML disabled (so names in the text stay text)."""
    return Markup(MarkdownIt("commonmark", {"html": False}).enable("table").render(text))


def _json_for_script(data: Any) -> Markup:
    """JSON that cannot end the <script> element it sits in."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return Markup(text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e"))


def write_review_page(
    path: Path,
    *,
    mode: str,
    title: str,
    subtitle: str,
    class_names: Sequence[str],
    items: list[dict[str, Any]],
    gradcam_rule: str = "",
    summary_rows: Sequence[tuple[str, Any]] = (),
    report_markdown: str | None = None,
    model_card_markdown: str | None = None,
    unreadable: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write report.html (mode: "evaluate", with true classes and a confusion matrix, or "predict"); the Grad-CAM
    switch and `gradcam_rule` (which images have maps) appear only when some item has an overlay."""
    environment = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    template = environment.from_string(files("bcd.reporting").joinpath("templates/review.html").read_text())
    page = template.render(
        mode=mode, title=title, subtitle=subtitle, summary_rows=summary_rows, gradcam_rule=gradcam_rule,
        has_gradcam=any(item.get("ct") for item in items),
        report_html=markdown_html(report_markdown) if report_markdown else None,
        model_card_html=markdown_html(model_card_markdown) if model_card_markdown else None,
        unreadable=unreadable,
        data_json=_json_for_script({"mode": mode, "classes": list(class_names), "items": items}),
    )
    with path.open("x") as handle:
        handle.write(page)
    return path
