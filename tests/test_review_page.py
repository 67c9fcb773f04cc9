"""report.html in a real browser (headless Chromium): the numbers of metrics.json, a confusion matrix whose cells show
exactly their images, the Grad-CAM toggle, sorting, names that stay text, no request to any host, and a first
screen of a 17,000-image page in under 3 seconds."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcd.runs.summary import RunSummary
from tests.helpers.browser import open_page
from tests.helpers.commands import read_rows, run_evaluate, run_predict

SCRIPT_NAME = "<script>x<img src=x onerror=window.hacked=1>.jpg"  # markup that would run if injected


@pytest.fixture(scope="module")
def evaluated(trained: RunSummary, synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An evaluation of every image of a copy of the data in which one file name holds a <script> tag."""
    root = tmp_path_factory.mktemp("data") / "images"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns(".*"))
    first = sorted((root / "Early").glob("*.jpg"))[0]
    first.rename(first.with_name(SCRIPT_NAME))
    _, out = run_evaluate(tmp_path_factory.mktemp("evaluate"), f"ckpt_path={trained.checkpoints.last}",
                          "dataset=folder", f"dataset.root={root}", "dataset.classes=[Benign,Early,Pre,Pro]",
                          "split=all", "wandb=false", "shift.strengths=[0.15]", "review.gradcam_per_class=2")
    return out


def shown(page) -> list[str]:
    """The names of the images the gallery shows now."""
    return page.locator("#gallery .card .name").all_text_contents()


def test_the_page_shows_the_numbers_of_metrics_json(evaluated: Path, tmp_path: Path) -> None:
    from bcd.evaluation.result import EvaluationResult

    metrics = EvaluationResult.read(evaluated / "metrics.json")
    with open_page(evaluated / "report.html") as visit:
        visit.page.wait_for_selector("#gallery .card")
        visit.page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
        summary = dict(zip(visit.page.locator("table >> nth=0 >> th").all_text_contents(),
                           visit.page.locator("table >> nth=0 >> td").all_text_contents(), strict=True))
        assert visit.errors == [] and visit.outside_requests() == []
    assert summary["Accuracy [95% CI]"] == metrics.metrics["acc"].format()
    assert summary["Macro F1 [95% CI]"] == metrics.metrics["macro_f1"].format()
    assert summary["robust_acc: accuracy under channel_gain ±15% [95% CI]"] == metrics.robust_acc.estimate.format()
    assert (tmp_path / "review.png").stat().st_size > 10_000


def test_each_confusion_matrix_cell_shows_exactly_its_images(evaluated: Path) -> None:
    rows = read_rows(evaluated / "predictions.csv")
    root = Path(rows[0]["path"]).parents[1]
    expected: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        key = (row["true_label"], row["predicted_label"])
        expected.setdefault(key, set()).add(Path(row["path"]).relative_to(root).as_posix())
    classes = ["Benign", "Early", "Pre", "Pro"]
    with open_page(evaluated / "report.html") as visit:
        page = visit.page
        clicked = 0
        for t, true in enumerate(classes):
            for p, predicted in enumerate(classes):
                button = page.locator(f'#matrix td[data-cell="{t},{p}"] button')
                if not expected.get((true, predicted)):
                    assert button.count() == 0
                    continue
                button.click()
                assert set(shown(page)) == expected[(true, predicted)], (true, predicted)
                clicked += 1
        assert clicked == len(expected) and visit.errors == []


def test_gradcam_toggle_sorting_and_names_that_stay_text(evaluated: Path) -> None:
    with open_page(evaluated / "report.html") as visit:
        page = visit.page
        page.select_option("#sort", "confidence-asc")
        confidences = [float(text.rsplit("(", 1)[1].rstrip("%)")) for text in
                       page.locator("#gallery .card > div:nth-child(2)").all_text_contents()]
        assert confidences == sorted(confidences) and len(confidences) > 1
        before = page.locator("#gallery img").evaluate_all("images => images.map(image => image.src)")
        page.check("#gradcam")
        after = page.locator("#gallery img").evaluate_all("images => images.map(image => image.src)")
        changed = [a for a, b in zip(after, before, strict=True) if a != b]
        assert changed and all("gradcam" in src for src in changed)
        page.select_option("#sort", "file")
        assert SCRIPT_NAME in " ".join(shown(page)).replace("Early/", "")
        assert page.evaluate("window.hacked") is None  # the name was shown, never run
        page.locator("#gallery img").first.click()
        assert page.locator("#zoom").is_visible() and "large" in page.locator("#zoom-image").get_attribute("src")
        assert visit.errors == [] and visit.outside_requests() == []


def test_the_predict_page_shows_what_needs_a_look_first_and_what_could_not_be_read(trained: RunSummary,
                                                                                  synthetic_root: Path,
                                                                                  tmp_path: Path) -> None:
    folder = tmp_path / "new"
    shutil.copytree(synthetic_root / "Pro", folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    tinted = np.asarray(Image.open(next(folder.glob("*.jpg"))).convert("RGB"), dtype=np.float64) * [1.0, 0.5, 0.5]
    Image.fromarray(tinted.astype(np.uint8)).save(folder / "tinted.png")
    summary, rows, out = run_predict(tmp_path, f"ckpt_path={trained.checkpoints.last}", f"inputs={folder}")
    with open_page(out / "report.html") as visit:
        page = visit.page
        first = page.locator("#gallery .card").first.text_content()
        unreadable = page.locator("table >> nth=-1").text_content()
        assert visit.errors == [] and visit.outside_requests() == []
    flagged = [row for row in rows if not row["error"] and (row["abstain"] == "True" or row["colour_warning"])]
    assert flagged and ("abstained" in first or "colour" in first)
    assert "broken.jpg" in unreadable and "corrupt" in unreadable
    assert summary["errors"] == 1


def test_a_page_of_17000_images_shows_its_first_screen_in_under_3_seconds(tmp_path: Path) -> None:
    from bcd.inference.scores import score_images
    from bcd.reporting.review import GallerySizes, GalleryWriter, gallery_items, write_review_page

    n, classes = 17_000, ["Benign", "Early", "Pre", "Pro"]
    rng = np.random.default_rng(0)
    scores = score_images(rng.normal(0, 3, (1, n, 4)), temperature=1.3, ood_threshold=-2.0)
    gallery = GalleryWriter(tmp_path, GallerySizes())
    for index in range(8):  # a few real image files, shared by every row: the page does not care
        gallery.add(index, rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), rng.random((32, 32)))
    files = {k: gallery.files[k % 8] for k in range(n)}
    names = [f"Class{k % 4}/image_{k:05d}.jpg" for k in range(n)]
    items = gallery_items(names, scores, [""] * n, files, targets=rng.integers(0, 4, n))
    page_path = write_review_page(tmp_path / "report.html", mode="evaluate", title="17,000 images", subtitle="",
                                  class_names=classes, items=items, gradcam_rule="every image")
    with open_page(None) as visit:
        started = time.perf_counter()
        visit.open(page_path)
        visit.page.wait_for_selector("#gallery .card img")
        elapsed = time.perf_counter() - started
        status = visit.page.locator("#status").text_content()
        assert visit.errors == []
    assert status.startswith("17000 of 17000 images; page 1 of")
    assert elapsed < 3.0, f"the first screen took {elapsed:.2f} s"
