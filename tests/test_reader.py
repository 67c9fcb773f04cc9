"""One image reader (bcd.data.reader.ImageReader): built from the config's max_pixels and handed to everything that
reads images, so a limit a user sets holds in training, the audit and every evaluation check; no reader defaults to
"no limit"."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcd.data.colour_features import colour_features
from bcd.data.colour_range import colour_range, colour_warnings
from bcd.data.datamodule import SmearDataModule
from bcd.data.dataset import AlteredImages, SmearDataset, build_cache
from bcd.data.decode import MAX_PIXELS, UnreadableImageError
from bcd.data.integrity import audit_files
from bcd.data.near_duplicates import perceptual_hashes
from bcd.data.occlusion import OccludedImages
from bcd.data.proxy_groups import proxy_group_ids
from bcd.data.reader import ImageReader
from bcd.data.shifted import ShiftedImages
from bcd.data.splits import split_groups
from bcd.evaluation.annotation_marks import annotation_audit
from bcd.evaluation.dataset_audit import audit_dataset
from bcd.evaluation.robustness import AlteredScoring, background_only, corner_occlusion, evaluate_shifts
from tests.helpers.paths import REPO

READERS = [SmearDataset, AlteredImages, ShiftedImages, OccludedImages, build_cache, audit_files, colour_range,
           colour_warnings, perceptual_hashes, colour_features, proxy_group_ids, split_groups, annotation_audit,
           audit_dataset]


@pytest.mark.parametrize("reads", READERS, ids=[f.__name__ for f in READERS])
def test_everything_that_reads_images_takes_a_reader_whose_default_has_the_limit(reads: object) -> None:
    parameters = inspect.signature(reads).parameters
    assert "max_pixels" not in parameters
    assert parameters["reader"].default == ImageReader(MAX_PIXELS)


@pytest.mark.parametrize("check", [evaluate_shifts, background_only, corner_occlusion],
                         ids=["evaluate_shifts", "background_only", "corner_occlusion"])
def test_every_evaluation_check_must_be_given_the_reader(check: object) -> None:
    """Each check scores through an AlteredScoring, whose reader has no default (the datamodule's must be passed)."""
    assert inspect.signature(check).parameters["scoring"].annotation == "AlteredScoring"
    assert inspect.signature(AlteredScoring).parameters["reader"].default is inspect.Parameter.empty


def test_no_module_defaults_max_pixels_to_no_limit() -> None:
    offenders = [f"{path.relative_to(REPO)}:{number}" for path in sorted((REPO / "bcd").rglob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), start=1)
                 if "max_pixels" in line and "= None" in line]
    assert offenders == []


def test_the_datamodule_reader_carries_the_configured_limit_into_the_checks(tmp_path: Path) -> None:
    """dataset.max_pixels becomes the datamodule's reader; the evaluation's altered images read with it refuse what
    it refuses (naming the file), and read with no limit when the user set max_pixels=null."""
    path = tmp_path / "big.png"
    Image.fromarray(np.full((60, 80, 3), 200, np.uint8)).save(path)
    datamodule = SmearDataModule(name="mine", layout="folder", root=str(tmp_path), max_pixels=4_000)
    assert datamodule.reader == ImageReader(4_000)
    shifted = ShiftedImages([path], [0], 32, "channel_gain", 0.1, reader=datamodule.reader)
    with pytest.raises(UnreadableImageError, match="big.png: image too large .*80 x 60"):
        shifted[0]
    unlimited = SmearDataModule(name="mine", layout="folder", root=str(tmp_path), max_pixels=None).reader
    assert ShiftedImages([path], [0], 32, "channel_gain", 0.1, reader=unlimited)[0][0].shape == (3, 32, 32)
