"""What an evaluation found, as one typed record: metrics.json is written from it (and only from it), report.md,
MODEL_CARD.md, the review page and W&B read it, and a stored metrics.json is read back into it field by field
(plain data, checked like summary.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional  # noqa: UP035 - the schemas' annotations are read at run time

from bcd.evaluation.stats import Estimate
from bcd.models.registry import checked_file
from bcd.runs.run_dir import write_json

# the metrics every check reports per shift strength (accuracy and macro-F1, with CIs)
SHIFT_METRICS = ("acc", "macro_f1")


@dataclass
class ShiftRow:
    """One kind and strength of colour shift (strength 0: the plain images) and the model's metrics under it."""

    kind: str
    strength: float
    acc: Estimate
    macro_f1: Estimate


@dataclass
class RobustAccuracy:
    """The accuracy under the shift the evaluation names robust_acc (shift.robust_kind at shift.robust_strength)."""

    kind: str
    strength: float
    value: float
    low: float
    high: float

    @property
    def estimate(self) -> Estimate:
        """The accuracy and its CI."""
        return Estimate(self.value, self.low, self.high)


@dataclass
class ShiftCheck:
    """The colour-shift check: every shift row, seeded so every model sees the same shifted images."""

    seed: int
    rows: List[ShiftRow]  # noqa: UP006
    robust_acc: Optional[RobustAccuracy] = None  # noqa: UP045


@dataclass
class BackgroundCheck:
    """Accuracy with the cells removed, against chance; flagged when it is well above chance."""

    acc: Estimate
    chance: float
    flag_margin: float
    flagged: bool


@dataclass
class OcclusionCheck:
    """Accuracy with the corners occluded against the same area elsewhere, and the paired drop; flagged when the
    corners cost clearly more."""

    corners: Estimate
    elsewhere: Estimate
    drop: Estimate
    side: float
    flag_drop: float
    flagged: bool


@dataclass
class CalibrationQuality:
    """Expected calibration error and Brier score of one set of probabilities."""

    ece: float
    brier: float


@dataclass
class CalibrationSummary:
    """Calibration before and (when a temperature was fitted on val) after temperature scaling, else why not."""

    before: CalibrationQuality
    n_bins: int
    temperature: Optional[float] = None  # noqa: UP045
    after: Optional[CalibrationQuality] = None  # noqa: UP045
    # why no temperature was fitted, or "fitted" (metrics.json of earlier versions do not say)
    temperature_status: Optional[str] = None  # noqa: UP045

    @property
    def status(self) -> str:
        """Why no temperature was fitted ("none fitted" when the file does not say)."""
        return self.temperature_status or "none fitted"


# the checks an evaluation may skip: metrics.json leaves out the key of one that did not run (robust_acc goes with
# shift: null when the shifts evaluated do not include shift.robust_kind at shift.robust_strength)
OPTIONAL_CHECKS = ("shift", "background_only", "occlusion")


@dataclass(kw_only=True)
class EvaluationResult:
    """metrics.json: one evaluation of one checkpoint on one split."""

    checkpoint: str
    run_dir: str
    split: str
    n_images: int
    tta: bool
    # torch or onnx (metrics.json before the one inference path does not say)
    runtime: Optional[str] = None  # noqa: UP045
    # the evaluation's batch (evaluate's batch_size, or fewer when that many would not fit memory_budget; metrics.json
    # before the memory plan does not say)
    batch_size: Optional[int] = None  # noqa: UP045
    # the method that made the split (bcd.data.splits.split_method)
    split_method: Optional[str]  # noqa: UP045
    class_names: List[str]  # noqa: UP006
    ci_level: float
    n_boot: int
    metrics: Dict[str, Estimate]  # noqa: UP006
    calibration: CalibrationSummary
    confusion_matrix: List[List[int]]  # noqa: UP006 - rows: true class, columns: predicted
    robust_acc: Optional[RobustAccuracy] = None  # noqa: UP045
    shift: Optional[ShiftCheck] = None  # noqa: UP045
    background_only: Optional[BackgroundCheck] = None  # noqa: UP045
    occlusion: Optional[OcclusionCheck] = None  # noqa: UP045

    def estimate(self, name: str) -> Estimate | None:
        """A metric's estimate, None when the evaluation has no such metric (AUROC of one class, ...)."""
        return self.metrics.get(name)

    def as_dict(self) -> dict[str, Any]:
        """The plain data metrics.json holds (a check that did not run is left out)."""
        data = asdict(self)
        if self.shift is None:
            del data["robust_acc"]
        elif self.shift.robust_acc is None:
            del data["shift"]["robust_acc"]
        return {key: value for key, value in data.items() if not (key in OPTIONAL_CHECKS and value is None)}

    def write(self, path: Path) -> None:
        """Write metrics.json, refusing to replace an existing file."""
        write_json(path, self.as_dict())

    @classmethod
    def read(cls, path: Path) -> EvaluationResult:
        """A metrics.json, every field checked against this schema (plain data only)."""
        return checked_file(cls, path, "a metrics.json")

