"""Tests for bcd.data.integrity: hashing, duplicate grouping, bad-file reasons and determinism."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcd.data.decode import IMAGE_EXTENSIONS
from bcd.data.integrity import FileAudit, audit_files, format_bad_files


def _write_jpeg(path: Path, seed: int) -> Path:
    """Write a small deterministic noise JPEG."""
    arr = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "JPEG", quality=90)
    return path


@pytest.fixture
def mixed(tmp_path: Path) -> dict[str, Path]:
    """A folder with good images, byte-identical copies, and assorted broken files."""
    files = {
        "a": _write_jpeg(tmp_path / "A" / "a.jpg", 1),
        "b": _write_jpeg(tmp_path / "A" / "b.jpg", 2),
        "c": _write_jpeg(tmp_path / "B" / "c.jpg", 3),
    }
    files["a_copy"] = tmp_path / "B" / "a_copy.jpg"
    shutil.copyfile(files["a"], files["a_copy"])
    files["a_copy2"] = tmp_path / "A" / "z_a_copy.jpg"
    shutil.copyfile(files["a"], files["a_copy2"])
    files["c_copy"] = tmp_path / "A" / "c_copy.jpg"
    shutil.copyfile(files["c"], files["c_copy"])

    files["empty"] = tmp_path / "B" / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["text"] = tmp_path / "B" / "text.png"
    files["text"].write_text("hello")
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(buf, "JPEG")
    files["truncated"] = tmp_path / "B" / "truncated.jpg"
    files["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    files["missing"] = tmp_path / "B" / "missing.jpg"
    return files


def test_mixed_folder(mixed: dict[str, Path]) -> None:
    audit = audit_files(list(mixed.values()), workers=2)
    good = ["a", "b", "c", "a_copy", "a_copy2", "c_copy"]
    assert set(audit.hashes) == {mixed[k] for k in good}
    for key in good:
        assert audit.hashes[mixed[key]] == hashlib.sha1(mixed[key].read_bytes()).hexdigest()
    assert audit.hashes[mixed["a"]] == audit.hashes[mixed["a_copy"]]

    assert audit.duplicate_groups() == sorted(
        [
            sorted([mixed["a"], mixed["a_copy"], mixed["a_copy2"]]),
            sorted([mixed["c"], mixed["c_copy"]]),
        ]
    )

    assert set(audit.bad) == {mixed[k] for k in ("empty", "text", "truncated", "missing")}
    assert audit.bad[mixed["empty"]] == "empty file (0 bytes)"
    assert audit.bad[mixed["text"]].startswith("not an image")
    assert audit.bad[mixed["truncated"]].startswith("truncated")
    assert audit.bad[mixed["missing"]] == "file not found"


def test_decode_false_hashes_without_decoding(mixed: dict[str, Path]) -> None:
    audit = audit_files(list(mixed.values()), decode=False)
    # Undecodable-but-readable files are hashed; only unreadable/empty ones are bad.
    assert mixed["truncated"] in audit.hashes
    assert mixed["text"] in audit.hashes
    assert set(audit.bad) == {mixed["empty"], mixed["missing"]}
    assert audit.hashes[mixed["text"]] == hashlib.sha1(b"hello").hexdigest()


def test_deterministic_across_worker_counts(mixed: dict[str, Path]) -> None:
    paths = list(mixed.values())
    serial = audit_files(paths, workers=1)
    parallel = audit_files(paths, workers=4)
    assert serial == parallel
    assert list(serial.hashes) == list(parallel.hashes)
    assert list(serial.bad) == list(parallel.bad)
    assert serial.duplicate_groups() == parallel.duplicate_groups()


def test_repeated_paths_are_checked_once_and_not_self_duplicates(mixed: dict[str, Path]) -> None:
    audit = audit_files([mixed["b"], mixed["b"]])
    assert list(audit.hashes) == [mixed["b"]]
    assert audit.duplicate_groups() == []


def test_invalid_workers_rejected(mixed: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="workers"):
        audit_files([mixed["a"]], workers=0)


def test_format_bad_files_truncates() -> None:
    bad = {Path(f"/data/img_{i:02d}.jpg"): "empty file (0 bytes)" for i in range(25)}
    text = format_bad_files(bad, limit=5)
    lines = text.splitlines()
    assert lines[0].startswith("25 unreadable files")
    assert lines[1] == "  /data/img_00.jpg: empty file (0 bytes)"
    assert len(lines) == 1 + 5 + 1
    assert lines[-1] == "  ... and 20 more"
    assert "img_05" not in text

    assert "... and" not in format_bad_files(bad, limit=25)
    assert format_bad_files({}) == "No unreadable files."


def test_empty_input() -> None:
    assert audit_files([]) == FileAudit(hashes={}, bad={})


@pytest.mark.real_data
def test_real_sample_has_ten_duplicate_pairs_in_pro() -> None:
    root_env = os.environ.get("BCD_REAL_DATA")
    if not root_env:
        pytest.skip("set BCD_REAL_DATA to the Taleqani sample folder to run this test")
    root = Path(root_env)
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    assert paths, f"no images found under {root}; check BCD_REAL_DATA"
    audit = audit_files(paths)
    assert audit.bad == {}, format_bad_files(audit.bad)
    groups = audit.duplicate_groups()
    assert len(groups) == 10
    for group in groups:
        assert len(group) == 2
        assert all(p.relative_to(root).parts[0] == "Pro" for p in group)
