"""Running bcd's commands as a user does: `python -m bcd.<command> ...` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def run_cli(args: Sequence[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m <args>` like a user would, from cwd, capturing output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def run_dirs(log_dir: Path, task: str = "train") -> list[Path]:
    """The run directories Hydra created under <log_dir>/<task>/runs."""
    runs = log_dir / task / "runs"
    return sorted(p for p in runs.iterdir() if p.is_dir()) if runs.exists() else []
