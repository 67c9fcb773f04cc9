"""Assertions several tests share."""

from __future__ import annotations

from pathlib import Path


def assert_png(path: Path, min_px: int = 300, min_bytes: int = 10_000) -> None:
    """A report figure: a valid PNG file of non-trivial size."""
    from PIL import Image

    assert path.is_file(), path
    assert path.stat().st_size > min_bytes, f"{path} is only {path.stat().st_size} bytes"
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert width > min_px and height > min_px, image.size
