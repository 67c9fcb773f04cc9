"""A calibration as bcd.evaluate fits it and bcd.predict / bcd.export apply it: the temperature and the OOD
threshold, and the views (tta) they were fitted on. Read back as plain numbers, checked field by field."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from bcd.utils.stored import load_stored_json, short_repr

SCORE = "energy"


class CalibrationError(ValueError):
    """A calibration file that cannot be applied; the message names the file and the fix."""


@dataclass(frozen=True)
class Calibration:
    """What bcd.inference.scores.score_images needs from a fit on val: T and the energy threshold."""

    temperature: float | None = None
    # 'fitted', or why no temperature is given (too few val errors, a fit out of range, no val split)
    temperature_status: str = "no val split"
    ood_threshold: float | None = None
    ood_quantile: float | None = None
    # the views the fit was made on: a temperature and a threshold only mean something on the same views
    tta: bool = False
    fitted_on: str = "val"
    checkpoint: str | None = None
    score: str = SCORE

    def to_json(self) -> dict[str, Any]:
        """The fields as stored in calibration.json."""
        return asdict(self)

    def write(self, path: Path) -> None:
        """Write calibration.json, refusing to replace an existing file."""
        with path.open("x") as handle:
            json.dump(self.to_json(), handle, indent=2)
            handle.write("\n")

    def check_views(self, tta: bool, source: Path | str) -> None:
        """Refuse to apply a fit made on other views than the prediction's."""
        if self.tta != tta:
            raise CalibrationError(
                f"calibration: {source} was fitted with tta={str(self.tta).lower()}, but this run scores with "
                f"tta={str(tta).lower()}; its temperature and OOD threshold do not apply to these scores. Run with "
                f"tta={str(self.tta).lower()}, or fit one for tta={str(tta).lower()} with `python -m bcd.evaluate "
                f"ckpt_path=... tta={str(tta).lower()}`"
            )

    @classmethod
    def read(cls, path: Path, tta_of_legacy: bool) -> Calibration:
        """A calibration.json, checked; files of earlier bcd versions (an `ood` section, no `tta`) are accepted
        for the views they were fitted on, `tta_of_legacy` (the checkpoint's default)."""
        try:
            data = load_stored_json(path, "a calibration.json")
        except (OSError, ValueError) as error:
            raise CalibrationError(f"calibration: cannot read {path} as JSON ({error})") from error
        if not isinstance(data, dict):
            raise CalibrationError(f"calibration: {path} holds {type(data).__name__}, not a calibration object")
        if "ood" in data or "tta" not in data:
            data = _from_legacy(data, path, tta_of_legacy)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CalibrationError(f"calibration: {path} has unknown fields {unknown}; expected {sorted(known)}")
        if "temperature_status" not in data:  # written before the status was recorded
            data["temperature_status"] = "fitted" if data.get("temperature") is not None else "no temperature"
        calibration = cls(**data)
        calibration._check(path)
        return calibration

    def _check(self, path: Path) -> None:
        """Every field has the type and range it must have."""
        for name in ("temperature", "ood_threshold", "ood_quantile"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not math.isfinite(value)):
                raise CalibrationError(f"calibration: {path}: {name} is {short_repr(value)}, not a finite number (or null)")
        if self.temperature is not None and not self.temperature > 0:
            raise CalibrationError(f"calibration: {path} has temperature {self.temperature}; it must be > 0 (or null)")
        if not isinstance(self.tta, bool):
            raise CalibrationError(f"calibration: {path}: tta is {short_repr(self.tta)}, not true or false")
        for name in ("fitted_on", "checkpoint", "score", "temperature_status"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise CalibrationError(f"calibration: {path}: {name} is {short_repr(value)}, not a string")
        if self.score != SCORE:
            raise CalibrationError(f"calibration: {path}: OOD score {short_repr(self.score)} is not one bcd computes ({SCORE!r})")


def _from_legacy(data: dict[str, Any], path: Path, tta: bool) -> dict[str, Any]:
    """The fields of a calibration.json written before the views were recorded."""
    if tta:
        # the old fit with tta used the log of the mean probability, whose energy is always 0: nothing to keep
        raise CalibrationError(
            f"calibration: {path} was written by an earlier bcd for a checkpoint tested with tta=true, on scores "
            "bcd no longer uses; fit it again with `python -m bcd.evaluate ckpt_path=...`, or predict with tta=false"
        )
    ood = data.get("ood") or {}
    if not isinstance(ood, dict):
        raise CalibrationError(f"calibration: {path}: ood is {short_repr(ood)}, not an object")
    return {
        "temperature": data.get("temperature"),
        "ood_threshold": ood.get("threshold"),
        "ood_quantile": ood.get("quantile"),
        "tta": False,
        "fitted_on": data.get("fitted_on", "val"),
        "checkpoint": data.get("checkpoint"),
        "score": ood.get("score", SCORE),
    }
