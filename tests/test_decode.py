"""Tests for bcd.data.decode: every supported mode becomes HxWx3 uint8 RGB, every broken file a clear error."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from bcd.data.decode import IMAGE_EXTENSIONS, UnreadableImageError, read_rgb


def _rgb_noise(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Deterministic random RGB image."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _jpeg_bytes(arr: np.ndarray, **save_kwargs: object) -> bytes:
    """Encode an array as JPEG bytes with PIL."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, **save_kwargs)
    return buf.getvalue()


def test_image_extensions_are_lowercase_suffixes() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"} == IMAGE_EXTENSIONS


def test_rgb_jpeg_round_trip(tmp_path: Path) -> None:
    # Smooth colour ramps survive JPEG (noise would not), so values can be compared to catch channel swaps.
    yy, xx = np.mgrid[0:48, 0:64]
    arr = np.stack([xx * 4, yy * 5, np.full_like(xx, 60)], axis=-1).astype(np.uint8)
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg_bytes(arr))
    out = read_rgb(path)
    assert out.shape == (48, 64, 3)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous
    assert np.abs(out.astype(int) - arr.astype(int)).mean() < 3


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg_bytes(_rgb_noise(h=20, w=50), exif=exif.tobytes()))
    assert read_rgb(path).shape == (50, 20, 3)


def test_grayscale_png_replicated_to_three_equal_channels(tmp_path: Path) -> None:
    gray = np.arange(0, 240, dtype=np.uint8).reshape(12, 20)
    path = tmp_path / "g.png"
    Image.fromarray(gray, mode="L").save(path)
    out = read_rgb(path)
    assert out.shape == (12, 20, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_transparent_pixels_become_white(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # opaque red-ish half
    rgba[:, :4, 3] = 255
    rgba[:, 4:, 3] = 0  # fully transparent half (colour underneath is black)
    path = tmp_path / "t.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    out = read_rgb(path)
    assert out.shape == (8, 8, 3)
    assert (out[:, 4:] == 255).all()
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])


def test_palette_png_with_and_without_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (6, 4))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (3, 0, 6, 4))
    plain = tmp_path / "p.png"
    pal.save(plain)
    out = read_rgb(plain)
    assert out.shape == (4, 6, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 5], [0, 0, 255])

    transparent = tmp_path / "pt.png"
    pal.save(transparent, transparency=1)
    out = read_rgb(transparent)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 5], [255, 255, 255])


def test_16bit_grayscale_png_scaled_not_clipped(tmp_path: Path) -> None:
    gray16 = np.array([[65535, 32768, 0, 257]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(gray16).save(path)
    assert Image.open(path).mode == "I;16"
    out = read_rgb(path)
    assert out.shape == (1, 4, 3)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert abs(int(out[0, 1, 0]) - 128) <= 1
    assert out[0, 2, 0] == 0
    assert out[0, 3, 0] == 1


def test_16bit_rgb_png_from_opencv_keeps_colour_order(tmp_path: Path) -> None:
    bgr16 = np.zeros((5, 7, 3), dtype=np.uint16)
    bgr16[..., 2] = 65535  # OpenCV stores BGR, so channel 2 is red
    path = tmp_path / "red16.png"
    assert cv2.imwrite(str(path), bgr16)
    out = read_rgb(path)
    assert out.shape == (5, 7, 3)
    assert out.dtype == np.uint8
    assert (out[..., 0] == 255).all()
    assert (out[..., 1:] == 0).all()


def test_zero_byte_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(UnreadableImageError, match="empty") as info:
        read_rgb(path)
    assert info.value.path == path
    assert str(info.value) == f"{path}: {info.value.reason}"


def test_text_file_with_image_suffix_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(UnreadableImageError, match="not an image"):
        read_rgb(path)


def test_truncated_jpeg_fails_at_read_time(tmp_path: Path) -> None:
    data = _jpeg_bytes(_rgb_noise(h=64, w=64))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match="truncated"):
        read_rgb(path)


def test_corrupt_jpeg_with_garbage_middle(tmp_path: Path) -> None:
    data = bytearray(_jpeg_bytes(_rgb_noise(h=64, w=64)))
    header_end = 20  # SOI + JFIF APP0 segment; everything after (tables, scan) becomes noise
    garbage = np.random.default_rng(1).integers(0, 256, len(data) - header_end - 2, dtype=np.uint8)
    data[header_end:-2] = garbage.tobytes()
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(UnreadableImageError, match="corrupt"):
        read_rgb(path)


def test_max_pixels_exceeded(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 50)).save(path)
    with pytest.raises(UnreadableImageError, match="too large") as info:
        read_rgb(path, max_pixels=4_999)
    assert "100 x 50" in info.value.reason
    assert read_rgb(path, max_pixels=5_000).shape == (50, 100, 3)
    assert read_rgb(path, max_pixels=None).shape == (50, 100, 3)


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_rgb(tmp_path / "nope.png")


def test_refuses_to_run_with_truncated_images_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import ImageFile

    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        read_rgb(path)


def test_cmyk_and_la_converted(tmp_path: Path) -> None:
    rgb = Image.fromarray(np.full((4, 6, 3), (200, 100, 50), np.uint8))
    rgb.convert("CMYK").save(tmp_path / "c.jpg")
    assert np.abs(read_rgb(tmp_path / "c.jpg")[0, 0].astype(int) - [200, 100, 50]).max() <= 3
    Image.fromarray(np.array([[[10, 255], [10, 0]]], np.uint8), "LA").save(tmp_path / "la.png")
    assert read_rgb(tmp_path / "la.png")[0].tolist() == [[10, 10, 10], [255, 255, 255]]


def test_pil_decompression_bomb_is_wrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(UnreadableImageError, match="too large"):
        read_rgb(path, max_pixels=None)
