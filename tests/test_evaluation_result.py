"""metrics.json is written from one typed EvaluationResult and read back through it: a stored file of the wrong shape
is refused naming the key, one of an earlier version (no temperature status, no occlusion check) still reads, and
the review page's summary rows come from the record."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bcd.evaluation.result import EvaluationResult
from bcd.models.registry import StoredConfigError
from bcd.reporting.report import summary_rows


def stored_metrics() -> dict:
    """A metrics.json as bcd.evaluate of an earlier version wrote it (no occlusion, no temperature_status)."""
    estimate = {"value": 0.9, "low": 0.8, "high": 0.95}
    return {
        "checkpoint": "/runs/a/checkpoints/last.ckpt", "run_dir": "/runs/a", "split": "test", "n_images": 20,
        "tta": True, "runtime": "torch", "batch_size": 8, "split_method": "exact-dedup",
        "class_names": ["Benign", "Pre"], "ci_level": 0.95, "n_boot": 200,
        "metrics": {"acc": estimate, "macro_f1": estimate},
        "calibration": {"temperature": None, "n_bins": 15, "after": None, "before": {"ece": 0.05, "brier": 0.1}},
        "robust_acc": {"kind": "channel_gain", "strength": 0.15, **estimate},
        "shift": {"seed": 0, "rows": [{"kind": "channel_gain", "strength": 0.0, "acc": estimate, "macro_f1": estimate}],
                  "robust_acc": {"kind": "channel_gain", "strength": 0.15, **estimate}},
        "background_only": {"acc": estimate, "chance": 0.5, "flag_margin": 0.15, "flagged": True},
        "confusion_matrix": [[9, 1], [1, 9]],
    }


def test_an_earlier_metrics_json_reads_and_gives_the_summary_rows(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    oldest = {key: value for key, value in stored_metrics().items() if key not in ("runtime", "batch_size")}
    (tmp_path / "oldest.json").write_text(json.dumps(oldest))
    assert EvaluationResult.read(tmp_path / "oldest.json").batch_size is None  # before the memory plan
    path.write_text(json.dumps(stored_metrics()))
    result = EvaluationResult.read(path)
    assert result.metrics["acc"].format() == "0.900 [0.800–0.950]" and result.occlusion is None
    rows = dict(summary_rows(result))
    assert rows["ECE before / after temperature scaling"] == "0.0500 / no temperature: none fitted"
    assert rows["background only: accuracy with the cells removed [95% CI]"] == (
        "0.900 [0.800–0.950] (chance 0.500); flagged: the model reads the slide")
    # written back, the file has the same keys (a check that did not run stays out)
    result.write(tmp_path / "again.json")
    again = json.loads((tmp_path / "again.json").read_text())
    assert set(again) == set(stored_metrics()) and "occlusion" not in again
    assert again["calibration"]["temperature_status"] is None


def test_robust_acc_is_written_as_before(tmp_path: Path) -> None:
    """With the shift check: robust_acc at the top (null when the robust shift was not among those evaluated) and in
    shift only when found; without it: neither."""
    found = EvaluationResult.read(write(tmp_path / "found.json", stored_metrics())).as_dict()
    assert found["robust_acc"]["value"] == 0.9 and found["shift"]["robust_acc"]["strength"] == 0.15
    absent = {**stored_metrics(), "robust_acc": None}
    absent["shift"] = {key: value for key, value in absent["shift"].items() if key != "robust_acc"}
    written = EvaluationResult.read(write(tmp_path / "absent.json", absent)).as_dict()
    assert written["robust_acc"] is None and "robust_acc" not in written["shift"]
    unshifted = {key: value for key, value in stored_metrics().items() if key not in ("robust_acc", "shift")}
    written = EvaluationResult.read(write(tmp_path / "unshifted.json", unshifted)).as_dict()
    assert "robust_acc" not in written and "shift" not in written


def write(path: Path, data: dict) -> Path:
    """data as a JSON file at path."""
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("key", "value", "named"), [
    ("n_images", "many", "metrics.json.n_images"),
    ("metrics", {"acc": {"value": 0.9}}, "metrics.json.metrics.acc.low: missing"),
    ("shift", {"seed": 0, "rows": [{"kind": "hed"}]}, "metrics.json.shift.rows[0].strength: missing"),
    ("surprise", 1, "unknown field(s) ['surprise']"),
])
def test_a_metrics_json_of_the_wrong_shape_is_refused_naming_the_key(tmp_path: Path, key: str, value: object,
                                                                     named: str) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({**stored_metrics(), key: value}))
    with pytest.raises(StoredConfigError, match=re.escape(named)):
        EvaluationResult.read(path)
