"""Strict, uniform image decoding: every image becomes an HxWx3 uint8 RGB array or a clear error."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "MAX_PIXELS", "UnreadableImageError", "read_audited_rgb", "read_rgb"]

# the most pixels an image may have before bcd refuses to decode it (decompression bombs, wrong files)
MAX_PIXELS = 100_000_000

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

# Leading bytes of the formats we accept, so a file PIL cannot parse can be reported as a *corrupt* image
# rather than "not an image" when it clearly started life as one.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "WEBP"),
)

# OpenCV >= 4.10 decodes straight to RGB; older versions decode to BGR and convert
_IMREAD_COLOR_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class UnreadableImageError(ValueError):
    """A file that cannot be decoded as an image; carries the path and a short reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type[UnreadableImageError], tuple[Path, str]]:
        """Pickle by (path, reason) so the error survives DataLoader worker processes."""
        return (type(self), (self.path, self.reason))


def read_rgb(path: str | Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode an image file to an HxWx3 uint8 RGB array (EXIF orientation applied)."""
    path = Path(path)
    # One read into memory: the audit hashes the same bytes, and BytesIO avoids PIL keeping file handles open.
    data = path.read_bytes()
    return decode_bytes(data, path, max_pixels=max_pixels)


def read_audited_rgb(path: str | Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """read_rgb for a file the audit has already decoded strictly: the same pixels, about 2x faster for JPEGs."""
    data = Path(path).read_bytes()
    image = decode_jpeg_fast(data) if _plain_jpeg(data) else None
    return image if image is not None else decode_bytes(data, path, max_pixels=max_pixels)


def decode_jpeg_fast(data: bytes) -> np.ndarray | None:
    """Decode a plain JPEG with OpenCV's libjpeg-turbo (pixel-identical to PIL's); None when it cannot."""
    # Not strict (a truncated JPEG decodes with a grey tail and a warning), hence only for audited files.
    # OpenCV (already needed by albumentations) decoded 224 px smears ~2x faster than the strict PIL path
    # (bcd.bench's loader section measures both); simplejpeg would be another dependency for a few % more.
    buffer = np.frombuffer(data, np.uint8)
    if _IMREAD_COLOR_RGB is not None:
        return cv2.imdecode(buffer, _IMREAD_COLOR_RGB)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _plain_jpeg(data: bytes) -> bool:
    """A JPEG that OpenCV decodes exactly like read_rgb: no EXIF (orientation) and no Adobe (CMYK) segment."""
    head = data[:65536]
    return head.startswith(b"\xff\xd8\xff") and b"Exif\x00\x00" not in head and b"Adobe" not in head


def decode_bytes(data: bytes, path: str | Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode in-memory file bytes to an HxWx3 uint8 RGB array; `path` is used only in error messages."""
    path = Path(path)
    _require_strict_truncation()
    if not data:
        raise UnreadableImageError(path, "empty file (0 bytes)")

    try:
        img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # The warning only arrives here as an exception when the caller turned warnings into errors.
        raise UnreadableImageError(path, f"image too large ({e} Raise PIL.Image.MAX_IMAGE_PIXELS)") from e
    except UnidentifiedImageError as e:
        kind = _sniff(data)
        if kind is None:
            raise UnreadableImageError(path, "not an image (cannot identify image format)") from e
        raise UnreadableImageError(
            path, f"truncated or corrupt image data ({kind} signature but unparseable header)"
        ) from e
    except Exception as e:  # PIL plugins raise many exception types on malformed headers
        raise UnreadableImageError(path, f"truncated or corrupt image data ({type(e).__name__}: {e})") from e

    with img:
        width, height = img.size
        # Checked on the header size, before load(), so an oversized file never allocates its pixels.
        if max_pixels is not None and width * height > max_pixels:
            raise UnreadableImageError(
                path, f"image too large ({width} x {height} pixels > limit {max_pixels}); raise max_pixels"
            )
        try:
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise UnreadableImageError(path, f"image too large ({e} Raise PIL.Image.MAX_IMAGE_PIXELS)") from e
        except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, EOFError...
            raise UnreadableImageError(
                path, f"truncated or corrupt image data ({type(e).__name__}: {e})"
            ) from e

        try:
            oriented = ImageOps.exif_transpose(img)
        except Exception as e:  # a malformed EXIF block is data corruption, not a bug here
            raise UnreadableImageError(path, f"corrupt EXIF metadata ({type(e).__name__}: {e})") from e

        try:
            arr = _to_rgb_array(oriented)
        except ValueError as e:
            raise UnreadableImageError(path, f"unsupported image mode {oriented.mode!r} ({e})") from e

    return np.ascontiguousarray(arr, dtype=np.uint8)


def _require_strict_truncation() -> None:
    """Refuse to decode if someone enabled PIL's global 'accept truncated images' switch."""
    # With the flag on, PIL silently pads a truncated image with grey, and the audit would pass broken files.
    # The flag is process-global, so flipping it back here would race with other threads; fail loudly instead.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some imported module); truncated images "
            "would decode silently. Set PIL.ImageFile.LOAD_TRUNCATED_IMAGES = False before reading images."
        )


def _sniff(data: bytes) -> str | None:
    """Name of the image format whose signature `data` starts with, if any."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            if name == "WEBP" and data[8:12] != b"WEBP":
                continue
            return name
    return None


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a loaded PIL image of any supported mode to an HxWx3 uint8 array."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        # Integer rounding of x / 257 maps the full 0..65535 range exactly onto 0..255.
        gray16 = np.asarray(img).astype(np.uint32)
        return _gray_to_rgb(((gray16 + 128) // 257).astype(np.uint8))
    if mode in ("I", "F"):
        return _gray_to_rgb(_scale_wide_gray(np.asarray(img), is_float=mode == "F"))

    palette_alpha = mode == "P" and img.palette is not None and "A" in img.palette.mode
    if mode in _ALPHA_MODES or palette_alpha or "transparency" in img.info:
        # Smear backgrounds are white/pale: compositing on black would invent a dark frame around the cells.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)

    if img.mode == "L":
        return _gray_to_rgb(np.asarray(img))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """Replicate a uint8 HxW array into three channels."""
    return np.repeat(gray[:, :, None], 3, axis=2)


def _scale_wide_gray(values: np.ndarray, is_float: bool) -> np.ndarray:
    """Scale 32-bit int or float grayscale to uint8 using the bit depth implied by the value range."""
    # PIL's "I"/"F" modes do not record the source bit depth, so infer it: [0,1] floats, then the smallest of
    # 8/16/32-bit integer ranges that holds the maximum. A dim 16-bit image can be mistaken for 8-bit.
    values = values.astype(np.float64)
    peak = float(values.max()) if values.size else 0.0
    if is_float and peak <= 1.0:
        scale = 1.0 / 255.0
    elif peak <= 255:
        scale = 1.0
    elif peak <= 65535:
        scale = 257.0
    else:
        scale = (2.0**32 - 1) / 255.0
    return np.clip(np.rint(values / scale), 0, 255).astype(np.uint8)
