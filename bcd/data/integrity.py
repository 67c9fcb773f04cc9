"""Per-file integrity before training: hash every file once, decode it fully, and collect what is broken."""


from __future__ import annotations

import errno
import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bcd.data.decode import UnreadableImageError
from bcd.data.reader import DEFAULT_READER, ImageReader
from bcd.utils.progress import progress

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class FileAudit:
    """Result of checking every file once before training."""

    hashes: dict[Path, str]
    """sha1 hex of the file bytes, for every file that passed the checks (disjoint from `bad`)."""
    bad: dict[Path, str]
    """path -> reason, for files that are missing, unreadable, broken or looping symbolic links, or (with
    decode=True) undecodable."""

    def duplicate_groups(self) -> list[list[Path]]:
        """Groups (size >= 2) of byte-identical files, each sorted, the list sorted by first path."""
        by_hash: dict[str, list[Path]] = defaultdict(list)
        for path, digest in self.hashes.items():
            by_hash[digest].append(path)
        groups = [sorted(paths) for paths in by_hash.values() if len(paths) >= 2]
        return sorted(groups, key=lambda group: group[0])


def audit_files(
    paths: Sequence[Path],
    decode: bool = True,
    workers: int | None = None,
    *,
    reader: ImageReader = DEFAULT_READER,
) -> FileAudit:
    """Hash every file and (optionally) decode it fully, collecting unreadable files with reasons."""
    # dict.fromkeys de-duplicates repeated paths while keeping the caller's order, so results are stable.
    unique = list(dict.fromkeys(Path(p) for p in paths))
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"audit_files: workers must be >= 1, got {workers}; pass None for the default")

    def check(path: Path) -> tuple[str | None, str | None]:
        return _check_file(path, decode=decode, reader=reader)

    hashes: dict[Path, str] = {}
    bad: dict[Path, str] = {}
    described = f"reading and hashing {len(unique)} files"
    if workers == 1 or len(unique) <= 1:
        for path in progress(unique, described, len(unique)):
            _record(path, *check(path), hashes, bad)
    else:
        # Threads, not processes: hashlib and PIL's decoders release the GIL on large buffers, and
        # threads avoid pickling file bytes. map() yields in input order, so the dicts are deterministic.
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bcd-audit") as pool:
            for path, (digest, reason) in zip(unique, progress(pool.map(check, unique), described, len(unique)),
                                              strict=True):
                _record(path, digest, reason, hashes, bad)
    return FileAudit(hashes=hashes, bad=bad)


def format_bad_files(bad: dict[Path, str], limit: int = 20) -> str:
    """A readable multi-line list of bad files and reasons, truncated after `limit` with a count of the rest."""
    if not bad:
        return "No unreadable files."
    items = sorted(bad.items())
    noun = "file" if len(items) == 1 else "files"
    lines = [f"{len(items)} unreadable {noun} (fix or remove them, or exclude them from the split):"]
    lines += [f"  {path}: {reason}" for path, reason in items[: max(limit, 0)]]
    rest = len(items) - max(limit, 0)
    if rest > 0:
        lines.append(f"  ... and {rest} more")
    return "\n".join(lines)


def _check_file(path: Path, decode: bool, reader: ImageReader) -> tuple[str | None, str | None]:
    """Return (sha1, None) for a good file or (None, reason) for a bad one, reading its bytes once."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, f"broken symbolic link -> {os.readlink(path)}" if path.is_symlink() else "file not found"
    except IsADirectoryError:
        return None, "is a directory, not a file"
    except OSError as e:
        return None, "symbolic link loop" if e.errno == errno.ELOOP else f"cannot read file ({e.strerror or e})"
    digest = hashlib.sha1(data).hexdigest()
    if not data:
        # Checked even without decoding: an empty file is never a usable image and is cheap to spot.
        return None, "empty file (0 bytes)"
    if decode:
        try:
            reader.decode(data, path)
        except UnreadableImageError as e:
            return None, e.reason
    return digest, None


def _record(
    path: Path, digest: str | None, reason: str | None, hashes: dict[Path, str], bad: dict[Path, str]
) -> None:
    """Store one file's outcome in the matching result dict."""
    if reason is not None:
        bad[path] = reason
    elif digest is not None:
        hashes[path] = digest
