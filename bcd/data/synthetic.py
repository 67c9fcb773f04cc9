"""Procedural peripheral-blood-smear images that stand in for the Taleqani ALL dataset.

The generator lets the whole pipeline (data module, training, tests, CI) run without the real
images. Each picture mimics a stained smear: pale, unevenly lit background, pink red blood cells
and one leukocyte near the centre. Colour is composed with a Beer-Lambert optical-density model so
overlapping cells darken naturally and stain jitter behaves like a real staining batch.

The class signal is deliberately confined to *morphology* (cell size, nucleus:cytoplasm ratio,
nucleus outline, chromatin grain, nucleoli, vacuoles) and the per-class ranges overlap, so a model
has to look at shapes and textures, and cannot reach 100% by reading the colour balance.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["CLASS_NAMES", "ensure_synthetic_dataset", "generate_image", "write_synthetic_dataset"]

CLASS_NAMES: tuple[str, ...] = ("Benign", "Early", "Pre", "Pro")

# Bump when the look of the images changes, so stale caches are not silently reused.
_CACHE_VERSION = "v1"
_COMPLETE_MARKER = ".complete"
_JPEG_QUALITY = 95

# Geometry below is expressed for a 224 px image and scaled, so every size shows the same scene.
_REF_SIZE = 224.0

# Optical density per unit stain for (R, G, B); derived from typical smear colours against a
# ~(240, 232, 235) background: eosin-pink erythrocytes, purple haematoxylin nuclei, sky-blue cytoplasm.
_OD_RBC = np.array([0.06, 0.32, 0.25], dtype=np.float32)
_OD_NUCLEUS = np.array([0.80, 1.35, 0.42], dtype=np.float32)
_OD_CYTOPLASM = np.array([0.36, 0.20, 0.05], dtype=np.float32)
_BACKGROUND = np.array([240.0, 232.0, 235.0], dtype=np.float32)


@dataclass(frozen=True)
class _ClassMorphology:
    """Sampling ranges (uniform, in 224 px units) for one class; ranges overlap between classes."""

    cell_radius: tuple[float, float]
    nc_ratio: tuple[float, float]  # nucleus radius / cell radius
    irregularity: tuple[float, float]  # amplitude of the angular harmonics of the nucleus outline
    indent_prob: float  # chance of a kidney-shaped notch
    indent_depth: tuple[float, float]
    chromatin_grain: tuple[float, float]  # feature size of chromatin texture, px
    chromatin_contrast: tuple[float, float]
    nucleus_density: tuple[float, float]
    nucleoli: tuple[int, int]  # inclusive count range
    nucleoli_prob: float
    vacuoles: tuple[int, int]
    vacuole_prob: float


_MORPHOLOGY: tuple[_ClassMorphology, ...] = (
    # Benign hematogone: small cell, small round dense nucleus, scant cytoplasm, clumped chromatin.
    _ClassMorphology(
        cell_radius=(22.0, 32.0),
        nc_ratio=(0.74, 0.88),
        irregularity=(0.0, 0.05),
        indent_prob=0.05,
        indent_depth=(0.05, 0.12),
        chromatin_grain=(5.0, 9.0),
        chromatin_contrast=(0.25, 0.40),
        nucleus_density=(1.05, 1.30),
        nucleoli=(0, 1),
        nucleoli_prob=0.05,
        vacuoles=(0, 1),
        vacuole_prob=0.05,
    ),
    # Early pre-B: larger blast, very high N:C ratio, fine open chromatin.
    _ClassMorphology(
        cell_radius=(29.0, 40.0),
        nc_ratio=(0.84, 0.95),
        irregularity=(0.02, 0.08),
        indent_prob=0.15,
        indent_depth=(0.05, 0.15),
        chromatin_grain=(2.0, 4.0),
        chromatin_contrast=(0.10, 0.22),
        nucleus_density=(0.90, 1.15),
        nucleoli=(1, 1),
        nucleoli_prob=0.25,
        vacuoles=(1, 1),
        vacuole_prob=0.10,
    ),
    # Pre-B: irregular / indented nucleus, some cytoplasm with vacuoles.
    _ClassMorphology(
        cell_radius=(30.0, 42.0),
        nc_ratio=(0.70, 0.84),
        irregularity=(0.06, 0.14),
        indent_prob=0.75,
        indent_depth=(0.12, 0.30),
        chromatin_grain=(3.0, 6.0),
        chromatin_contrast=(0.15, 0.30),
        nucleus_density=(0.95, 1.20),
        nucleoli=(1, 1),
        nucleoli_prob=0.25,
        vacuoles=(1, 4),
        vacuole_prob=0.75,
    ),
    # Pro-B: large cell, large irregular nucleus with prominent nucleoli, more cytoplasm.
    _ClassMorphology(
        cell_radius=(35.0, 48.0),
        nc_ratio=(0.62, 0.78),
        irregularity=(0.07, 0.16),
        indent_prob=0.30,
        indent_depth=(0.08, 0.20),
        chromatin_grain=(3.0, 6.0),
        chromatin_contrast=(0.12, 0.25),
        nucleus_density=(0.90, 1.15),
        nucleoli=(1, 3),
        nucleoli_prob=0.90,
        vacuoles=(1, 2),
        vacuole_prob=0.30,
    ),
)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Smoothstep interpolation weights mapping n_in grid samples onto n_out pixels."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 2)
    t = pos - i0
    # Smoothstep instead of linear weights hides the diamond artefacts of bilinear value noise.
    t = t * t * (3.0 - 2.0 * t)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    m[rows, i0] = 1.0 - t
    m[rows, i0 + 1] = t
    return m


def _smooth_noise(rng: np.random.Generator, h: int, w: int, feature_px: float) -> np.ndarray:
    """Zero-mean, unit-std value noise with blobs of roughly feature_px pixels."""
    feature_px = max(feature_px, 1.0)
    gh = max(2, math.ceil(h / feature_px) + 1)
    gw = max(2, math.ceil(w / feature_px) + 1)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    noise = _interp_matrix(h, gh) @ grid @ _interp_matrix(w, gw).T
    noise -= noise.mean()
    std = float(noise.std())
    return noise / std if std > 1e-6 else noise


def _patch(
    cy: float, cx: float, extent: float, shape: tuple[int, int]
) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Clipped bounding box around a shape plus its local pixel offsets, so shapes cost O(area)."""
    y0, y1 = max(0, int(cy - extent) - 1), min(shape[0], int(cy + extent) + 2)
    x0, x1 = max(0, int(cx - extent) - 1), min(shape[1], int(cx + extent) + 2)
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    return slice(y0, y1), slice(x0, x1), dy, dx


def _soft_inside(dist: np.ndarray, radius: np.ndarray | float, edge: float) -> np.ndarray:
    """Anti-aliased 0..1 mask of dist < radius with an edge about `edge` pixels wide."""
    return np.clip((radius - dist) / edge + 0.5, 0.0, 1.0)


def _harmonic_outline(
    rng: np.random.Generator, amplitude: float, orders: range
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random low-frequency angular harmonics; amplitudes fall with order to keep outlines smooth."""
    ks = np.array(list(orders), dtype=np.float32)
    amps = (amplitude * rng.standard_normal(len(ks)) / np.sqrt(ks)).astype(np.float32)
    phases = rng.uniform(0.0, 2.0 * np.pi, len(ks)).astype(np.float32)
    return ks, amps, phases


def _outline_radius(
    theta: np.ndarray,
    base: float,
    harmonics: tuple[np.ndarray, np.ndarray, np.ndarray],
    indent: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Radius of a wobbly closed outline at angles theta; an optional Gaussian notch gives a kidney shape."""
    ks, amps, phases = harmonics
    mod = np.ones_like(theta)
    for k, a, p in zip(ks, amps, phases, strict=True):
        mod += a * np.cos(k * theta + p)
    if indent is not None:
        angle, depth, width = indent
        diff = np.angle(np.exp(1j * (theta - angle))).astype(np.float32)
        mod -= depth * np.exp(-((diff / width) ** 2))
    return base * np.clip(mod, 0.35, None)


def _validate(images_per_class: int, image_size: int, seed: int) -> None:
    if images_per_class < 1:
        raise ValueError(f"dataset.images_per_class must be >= 1, got {images_per_class}")
    if image_size < 32:
        raise ValueError(f"dataset.image_size must be >= 32, got {image_size}")
    if seed < 0:
        raise ValueError(f"dataset.seed must be >= 0, got {seed}")


def _draw_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Channel-first (3, H, W) illumination: jittered lamp colour, a gradient and faint unevenness."""
    colour = _BACKGROUND * rng.uniform(0.88, 1.03) + rng.normal(0.0, 5.0, 3).astype(np.float32)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    angle = rng.uniform(0.0, 2.0 * math.pi)
    gradient = math.cos(angle) * coords[None, :] + math.sin(angle) * coords[:, None]
    light = 1.0 + rng.uniform(0.02, 0.10) * gradient + 0.012 * _smooth_noise(rng, size, size, size / 3)
    return colour[:, None, None] * light[None]


def _draw_rbcs(rng: np.random.Generator, size: int, scale: float, density: np.ndarray) -> None:
    """Add 10-25 pink discs with a darker rim and pale centre; overlaps simply add stain."""
    edge = max(1.0, 1.2 * scale)
    n = int(rng.integers(10, 26))
    r = (rng.uniform(15.0, 21.0, n) * scale).astype(np.float32)
    aspect = rng.uniform(0.85, 1.0, n).astype(np.float32)
    rot = rng.uniform(0.0, np.pi, n).astype(np.float32)
    centres = (rng.uniform(-0.5, 0.5, (n, 2)) * r[:, None] + rng.uniform(0, size, (n, 2))).astype(np.float32)
    pallor_amount = rng.uniform(0.35, 0.65, n).astype(np.float32)
    strength = rng.uniform(0.8, 1.15, n).astype(np.float32)

    # All discs share one fixed-size box so they are rendered as a single (n, P, P) batch; per-disc
    # Python work is then just one slice-add into a padded canvas, which keeps small images fast.
    half = math.ceil(21.0 * scale + 2 * edge) + 1
    box = 2 * half
    corner = np.floor(centres).astype(np.int64) - half + 1
    offs = np.arange(box, dtype=np.float32) + 0.5
    dy = (offs[None, :] + corner[:, 0:1] - centres[:, 0:1])[:, :, None]
    dx = (offs[None, :] + corner[:, 1:2] - centres[:, 1:2])[:, None, :]
    cos, sin = np.cos(rot)[:, None, None], np.sin(rot)[:, None, None]
    u = dx * cos + dy * sin
    v = (dy * cos - dx * sin) / aspect[:, None, None]
    d = np.sqrt(u * u + v * v)
    rr = r[:, None, None]
    pallor = pallor_amount[:, None, None] * np.exp(-((d / (0.5 * rr)) ** 2))
    rim = 0.18 * np.exp(-(((d - 0.82 * rr) / (0.14 * rr)) ** 2))
    discs = strength[:, None, None] * _soft_inside(d, rr, edge) * (1.0 - pallor + rim)

    pad = box + half
    canvas = np.zeros((size + 2 * pad, size + 2 * pad), dtype=np.float32)
    for (y0, x0), disc in zip(corner + pad, discs, strict=True):
        canvas[y0 : y0 + box, x0 : x0 + box] += disc
    density += canvas[pad : pad + size, pad : pad + size]


def _spot(target: np.ndarray, cy: float, cx: float, radius: float, amount: float, sharp: bool) -> None:
    """Multiply `target` by (1 - amount * spot); sharp spots are vacuoles, soft ones nucleoli."""
    ys, xs, dy, dx = _patch(cy, cx, radius * 2.0, target.shape)
    d = np.sqrt(dy * dy + dx * dx)
    if sharp:
        shape = _soft_inside(d, radius, max(0.8, 0.3 * radius))
    else:
        shape = np.exp(-((d / radius) ** 2))
    target[ys, xs] *= 1.0 - amount * shape


def _draw_leukocyte(
    rng: np.random.Generator,
    size: int,
    scale: float,
    morph: _ClassMorphology,
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray]:
    """Return the leukocyte patch slices plus its cell mask, cytoplasm and nucleus stain densities."""
    cell_r = float(rng.uniform(*morph.cell_radius)) * scale
    nuc_r = cell_r * float(rng.uniform(*morph.nc_ratio))
    edge = max(0.8, 1.3 * scale)

    cy, cx = (size / 2.0 + np.clip(rng.normal(0.0, 0.05 * size, 2), -0.12 * size, 0.12 * size)).tolist()
    ys, xs, dy, dx = _patch(cy, cx, cell_r * 1.1 + 2 * edge, (size, size))

    cell_outline = _harmonic_outline(rng, 0.03, range(2, 5))
    cell_radius = _outline_radius(np.arctan2(dy, dx), cell_r, cell_outline)
    cell_mask = _soft_inside(np.sqrt(dy * dy + dx * dx), cell_radius, edge)

    # The nucleus sits eccentrically but is kept inside the cell (it is also clipped by cell_mask).
    slack = max(cell_r - nuc_r, 0.0)
    ecc = float(rng.uniform(0.0, 0.8)) * slack
    ecc_angle = rng.uniform(0.0, 2.0 * math.pi)
    ny, nx = ecc * math.sin(ecc_angle), ecc * math.cos(ecc_angle)
    ndy, ndx = dy - ny, dx - nx
    indent = None
    if rng.random() < morph.indent_prob:
        indent = (float(rng.uniform(0.0, 2.0 * math.pi)), float(rng.uniform(*morph.indent_depth)), 0.45)
    nuc_outline = _harmonic_outline(rng, float(rng.uniform(*morph.irregularity)), range(2, 5))
    nuc_radius = _outline_radius(np.arctan2(ndy, ndx), nuc_r, nuc_outline, indent)
    nuc_mask = _soft_inside(np.sqrt(ndy * ndy + ndx * ndx), nuc_radius, edge) * cell_mask

    h, w = cell_mask.shape
    grain = float(rng.uniform(*morph.chromatin_grain)) * scale
    # Two octaves: a single value-noise grid shows its square lattice, chromatin clumps should not.
    clumps = 0.8 * _smooth_noise(rng, h, w, grain) + 0.6 * _smooth_noise(rng, h, w, 0.5 * grain)
    texture = 1.0 + float(rng.uniform(*morph.chromatin_contrast)) * clumps
    nucleus = nuc_mask * float(rng.uniform(*morph.nucleus_density)) * np.clip(texture, 0.2, None)

    cytoplasm = (
        cell_mask * float(rng.uniform(0.6, 1.0)) * (1.0 + 0.08 * _smooth_noise(rng, h, w, 6.0 * scale))
    )

    # Patch coordinates of the leukocyte centre, used to place nucleoli and vacuoles.
    py, px = cy - ys.start, cx - xs.start
    if rng.random() < morph.nucleoli_prob:
        for _ in range(int(rng.integers(morph.nucleoli[0], morph.nucleoli[1] + 1))):
            a, rr = rng.uniform(0.0, 2.0 * math.pi), rng.uniform(0.0, 0.5) * nuc_r
            radius = float(rng.uniform(3.0, 5.0)) * scale
            _spot(nucleus, py + ny + rr * math.sin(a), px + nx + rr * math.cos(a), radius, 0.7, False)
    if rng.random() < morph.vacuole_prob:
        n_vac = int(rng.integers(morph.vacuoles[0], morph.vacuoles[1] + 1))
        for _ in range(20 * n_vac):  # bounded rejection sampling
            if n_vac == 0:
                break
            a, rr = rng.uniform(0.0, 2.0 * math.pi), rng.uniform(0.3, 0.9) * cell_r
            vy, vx = rr * math.sin(a), rr * math.cos(a)
            iy, ix = int(py + vy), int(px + vx)
            # Vacuoles only make sense in visible cytoplasm, so reject points on the nucleus or the rim.
            if not (0 <= iy < h and 0 <= ix < w) or nuc_mask[iy, ix] > 0.05 or cell_mask[iy, ix] < 0.95:
                continue
            radius = float(rng.uniform(1.5, 3.5)) * scale
            _spot(cytoplasm, py + vy, px + vx, radius, 0.95, True)
            n_vac -= 1
    return (ys, xs), cell_mask, cytoplasm, nucleus


def generate_image(
    class_index: int, rng: np.random.Generator, size: int = 224, tint: tuple[float, float, float] | None = None
) -> np.ndarray:
    """Draw one synthetic smear image of the given class as an HxWx3 uint8 RGB array; `tint` multiplies the
    lamp colour per channel (R, G, B), like one acquisition session's illumination."""
    if not 0 <= class_index < len(CLASS_NAMES):
        raise ValueError(f"class_index must be in [0, {len(CLASS_NAMES) - 1}], got {class_index}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    scale = size / _REF_SIZE
    morph = _MORPHOLOGY[class_index]

    background = _draw_background(rng, size)
    if tint is not None:
        background *= np.asarray(tint, dtype=np.float32)[:, None, None]
    rbc = np.zeros((size, size), dtype=np.float32)
    _draw_rbcs(rng, size, scale, rbc)
    (ys, xs), cell_mask, cytoplasm, nucleus = _draw_leukocyte(rng, size, scale, morph)

    # Stain jitter is drawn identically for every class: colour must not leak the label.
    stain_rbc = _OD_RBC * rng.lognormal(0.0, 0.08, 3).astype(np.float32) * rng.uniform(0.75, 1.25)
    stain_nuc = _OD_NUCLEUS * rng.lognormal(0.0, 0.08, 3).astype(np.float32) * rng.uniform(0.8, 1.2)
    stain_cyto = _OD_CYTOPLASM * rng.lognormal(0.0, 0.10, 3).astype(np.float32) * rng.uniform(0.7, 1.3)

    # The leukocyte lies on top of the erythrocytes, so it hides them rather than adding to them.
    rbc[ys, xs] *= 1.0 - cell_mask
    # Channel-first with in-place ufuncs: an inner axis of length 3 makes numpy several times slower.
    od = stain_rbc[:, None, None] * rbc[None]
    od[:, ys, xs] += stain_cyto[:, None, None] * cytoplasm[None] + stain_nuc[:, None, None] * nucleus[None]
    np.negative(od, out=od)
    np.exp(od, out=od)
    od *= background
    od += 2.0 * rng.standard_normal(od.shape, dtype=np.float32) + 0.5  # sensor noise; +0.5 rounds
    np.clip(od, 0, 255, out=od)
    return od.transpose(1, 2, 0).astype(np.uint8, order="C")


def _image_rng(seed: int, class_index: int, index: int) -> np.random.Generator:
    # One stream per image makes each file independent of images_per_class (n=40 is a prefix of n=60).
    return np.random.default_rng(np.random.SeedSequence([seed, class_index, index]))


def write_synthetic_dataset(
    root: Path, images_per_class: int = 40, image_size: int = 224, seed: int = 0
) -> Path:
    """Write the dataset as root/<Class>/<class>_<i:04d>.jpg and return root (deterministic for a seed)."""
    _validate(images_per_class, image_size, seed)
    root = Path(root)
    for class_index, name in enumerate(CLASS_NAMES):
        class_dir = root / name
        class_dir.mkdir(parents=True, exist_ok=True)
        for i in range(images_per_class):
            image = generate_image(class_index, _image_rng(seed, class_index, i), image_size)
            Image.fromarray(image).save(class_dir / f"{name.lower()}_{i:04d}.jpg", quality=_JPEG_QUALITY)
    return root


def _replace_incomplete(target: Path, fresh: Path) -> None:
    """Swap a marker-less folder at `target` for `fresh`, tolerating a concurrent process doing the same."""
    stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
    try:
        try:
            os.rename(target, stale / "old")
        except FileNotFoundError:
            pass  # Someone else already moved it away.
        try:
            os.rename(fresh, target)
        except OSError:
            if not (target / _COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(stale, ignore_errors=True)


def ensure_synthetic_dataset(
    cache_dir: Path, images_per_class: int = 40, image_size: int = 224, seed: int = 0
) -> Path:
    """Return a cached synthetic dataset folder for these parameters, generating it once if missing."""
    _validate(images_per_class, image_size, seed)
    cache_dir = Path(cache_dir)
    target = cache_dir / f"synthetic-n{images_per_class}-s{image_size}-seed{seed}-{_CACHE_VERSION}"
    if (target / _COMPLETE_MARKER).is_file():
        return target

    cache_dir.mkdir(parents=True, exist_ok=True)
    # Build in a private sibling and rename: rename is atomic on one filesystem, so concurrent readers
    # (e.g. several DDP ranks) see either no folder or a complete one, never a half-written one.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=cache_dir))
    try:
        write_synthetic_dataset(tmp, images_per_class, image_size, seed)
        (tmp / _COMPLETE_MARKER).touch()
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; a shared cache should stay readable.
        try:
            os.rename(tmp, target)
        except OSError:
            # Either another process won the race with an identical dataset (use theirs), or a
            # marker-less leftover that we never write blocks the name and has to be replaced.
            if not (target / _COMPLETE_MARKER).is_file():
                _replace_incomplete(target, tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
