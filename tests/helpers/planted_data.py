"""Small synthetic datasets with things planted on purpose: acquisition sessions (a background tint each),
exact copies, resized and re-encoded copies, and a copy filed under the wrong class."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from bcd.data.synthetic import CLASS_NAMES, generate_image

SIZE = 48
# one lamp colour per session: channel balances further apart than the per-image jitter of the generator
SESSION_TINTS = ((1.0, 1.0, 1.0), (1.0, 0.86, 0.86), (0.86, 0.95, 1.0), (0.9, 1.0, 0.85))
CLASSES = ("Benign", "Pro")


def write_sessions(root: Path, per_session: int = 5, sessions: int = 4) -> dict[Path, str]:
    """<root>/<class>/s<k>_<i>.jpg for two classes, `sessions` tinted sessions each; returns path -> session."""
    session_of = {}
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for k, tint in enumerate(SESSION_TINTS[:sessions]):
            for i in range(per_session):
                rng = np.random.default_rng([CLASS_NAMES.index(name), k, i])
                path = root / name / f"s{k}_{i}.jpg"
                Image.fromarray(generate_image(CLASS_NAMES.index(name), rng, SIZE, tint=tint)).save(path, quality=95)
                session_of[path] = f"{name}/s{k}"
    return session_of


def plant_duplicates(root: Path) -> dict[str, tuple[Path, Path]]:
    """Plant an exact copy, a resized copy, a re-encoded copy and a copy under the other class (label conflict)."""
    source = root / "Benign"
    planted = {
        "exact": (source / "s0_0.jpg", source / "exact_copy.jpg"),
        "resized": (source / "s1_0.jpg", source / "resized_copy.jpg"),
        "reencoded": (source / "s2_0.jpg", source / "reencoded_copy.jpg"),
        "conflict": (source / "s3_0.jpg", root / "Pro" / "misfiled_copy.jpg"),
    }
    shutil.copyfile(*planted["exact"])
    with Image.open(planted["resized"][0]) as image:
        image.resize((40, 40), Image.Resampling.BICUBIC).save(planted["resized"][1], quality=90)
    for kind in ("reencoded", "conflict"):
        with Image.open(planted[kind][0]) as image:
            image.save(planted[kind][1], quality=70)
    return planted
