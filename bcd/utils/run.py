"""Run bookkeeping: which process writes, what summary.json holds, and the library versions behind a run."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

LIBRARIES = ("torch", "torchvision", "lightning", "timm", "torchmetrics", "hydra-core", "albumentations", "wandb")


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


def library_versions() -> dict[str, str]:
    """Python and the versions of the libraries that decide a run's numbers."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def plain_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Tensors and numbers as floats, sorted by name (for JSON)."""
    return {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in sorted(metrics.items())}


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


@contextmanager
def finishing(loggers: list[Logger]) -> Iterator[None]:
    """Finish every W&B run we started, with a failure exit code when the body raised."""
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if any(isinstance(logger, WandbLogger) for logger in loggers):
            import wandb  # only runs that log to W&B pay for importing it

            if wandb.run is not None:
                wandb.finish(exit_code=1 if failed else 0)
