"""A run's own directory: claimed atomically, never inside the dataset folder, never overwriting an earlier run's
results; the command that started it; its JSON files written once."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from bcd.utils.errors import ConfigError


def is_main_process() -> bool:
    """True in the process that owns the run dir (rank 0), also before DDP has started."""
    return rank_zero_only.rank == 0


def ensure_new_run_dir(output_dir: Path) -> None:
    """Refuse to start in a directory that already holds a run's results (runs never overwrite runs)."""
    taken = [name for name in ("summary.json", "split_manifest.csv", "metrics.json") if (output_dir / name).exists()]
    if taken:
        raise FileExistsError(
            f"paths.output_dir: {output_dir} already holds a run ({', '.join(taken)}); bcd never overwrites "
            "earlier results. Leave paths.output_dir at its default (a new dir per run) or choose an empty one"
        )


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write data as indented JSON, refusing to replace an existing file (runs never overwrite runs)."""
    with path.open("x") as handle:
        json.dump(data, handle, indent=2, default=str)
        handle.write("\n")


def command_line() -> str:
    """The command that started this run, as `python -m bcd.<entry point> ...` when it was one."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    program = ["-m", spec.name] if spec is not None else [sys.argv[0]]
    return " ".join(["python", *program, *sys.argv[1:]])


RUN_CLAIM = ".bcd-run"


def check_outside_data(output_dir: str | Path, data_root: str | Path | None, key: str = "paths.log_dir") -> None:
    """Refuse an output dir inside the folder bcd reads images from: bcd never writes inside a dataset folder."""
    if data_root is None:
        return
    output_dir, root = Path(output_dir).expanduser().resolve(), Path(str(data_root)).expanduser().resolve()
    if output_dir.is_relative_to(root):
        raise ConfigError(
            f"{key}: the output dir {output_dir} is inside the data folder {root} (dataset.root or inputs); bcd never "
            f"writes inside the dataset folder. Set {key}=/somewhere/else"
        )


def data_folder(dataset: Mapping[str, Any]) -> str | None:
    """The user's folder a dataset config reads images from (None for the synthetic data bcd generates itself)."""
    return None if dataset.get("layout") == "synthetic" else dataset.get("root")


def claim_run_dir(output_dir: Path, data_root: str | Path | None = None) -> None:
    """Make output_dir this run's own: refuse a dir inside the data folder (bcd never writes there) and one that
    another run claimed or wrote results into (created atomically, so of two runs started on one dir the second
    stops here)."""
    output_dir = Path(output_dir).resolve()
    check_outside_data(output_dir, data_root)
    ensure_new_run_dir(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        with (output_dir / RUN_CLAIM).open("x") as handle:
            handle.write(f"{os.getpid()} {command_line()}\n")
    except FileExistsError:
        owner = (output_dir / RUN_CLAIM).read_text().strip()
        raise FileExistsError(
            f"paths.output_dir: {output_dir} belongs to another run ({owner}); bcd never lets two runs write into "
            "one dir. Leave paths.output_dir at its default (a new dir per run) or choose an empty one"
        ) from None
