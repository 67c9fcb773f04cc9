"""Starting a bcd.train run from another command (bcd.sweep's trials, bcd.cv's folds) as `python -m bcd.train` in a
process of its own (Lightning's DDP launcher needs one; a sweep isolates its trials on the CPU), with SIGTERM passed on
to it; on_one_device says when the caller may train in its own process instead."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bcd.runs.summary import RunSummary
from bcd.utils.overrides import hydra_value


def on_one_device(cfg: DictConfig) -> bool:
    """Whether the run trains in one process (else DDP, which needs a process of its own)."""
    devices = cfg.trainer.devices
    one = devices in (1, "1") or (OmegaConf.is_list(devices) and len(devices) == 1)
    return one and cfg.trainer.get("num_nodes", 1) == 1


def last_exception(lines: Sequence[str]) -> str:
    """The last `SomeError: message` line of a process's output (the reason it stopped), else its last line."""
    reasons = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt): ", line)]
    return reasons[-1] if reasons else (lines[-1] if lines else "no output")


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM reached the command that started a training run: the run was stopped and the command ends.

    A KeyboardInterrupt, so that Optuna records a sweep's trial as FAIL and lets it through (its `catch` is for the
    errors of trials, after which the study goes on)."""


# seconds a run's processes get to stop after SIGTERM (Lightning finishes its step and exits) before SIGKILL
RUN_STOP_GRACE_S = 60


class SigtermForwarding:
    """While a command starts training runs: SIGTERM (a cluster's time limit, `kill`) goes on to the running run's
    process group (its DDP ranks included) instead of orphaning it, the command waits for it to stop, and a sweep's
    trial ends as FAIL. Without a run process, SIGTERM ends the command at once (a run in this process is stopped by
    Lightning's own handler)."""

    def __init__(self) -> None:
        self.child: subprocess.Popen | None = None
        self.received_at: float | None = None
        self.in_process_run = False
        self._previous: Any = None

    def __enter__(self) -> SigtermForwarding:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.received_at = time.monotonic()
        if self.child is not None and self.child.poll() is None:
            os.killpg(self.child.pid, signal.SIGTERM)
        elif not self.in_process_run:
            raise TrainingInterrupted("SIGTERM")

    def wait(self, child: subprocess.Popen) -> int:
        """Wait for a run's process, stopping its whole process group (SIGKILL after the grace period) when SIGTERM
        came; then raise TrainingInterrupted, or return its exit code."""
        self.child = child
        try:
            while True:
                try:
                    code = child.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    if self.received_at is not None and time.monotonic() - self.received_at > RUN_STOP_GRACE_S:
                        os.killpg(child.pid, signal.SIGKILL)
        finally:
            self.child = None
        if self.received_at is not None:
            raise TrainingInterrupted(f"SIGTERM: its process (group {child.pid}) was stopped with it and exited with {code}")
        return code


def train_in_subprocess(overrides: Sequence[str], run_dir: Path,
                        forwarding: SigtermForwarding | None = None) -> RunSummary:
    """`python -m bcd.train <overrides>` in run_dir (output to subprocess.log); returns its summary. With `forwarding`
    the run has a process group of its own, which a SIGTERM to this process stops too."""
    command = [sys.executable, "-m", "bcd.train", *overrides, f"hydra.run.dir={hydra_value(str(run_dir))}"]
    output = run_dir / "subprocess.log"
    with output.open("w") as handle:
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                 start_new_session=forwarding is not None)
        code = forwarding.wait(child) if forwarding is not None else child.wait()
    if code < 0:  # killed by a signal: the kernel's out-of-memory killer sends SIGKILL
        name = signal.Signals(-code).name
        raise RuntimeError(f"python -m bcd.train was killed by {name}"
                           f"{' (out of memory?)' if -code == signal.SIGKILL else ''}; its output: {output}")
    if code != 0:
        lines = output.read_text().splitlines()
        raise RuntimeError(f"python -m bcd.train exited with code {code}: {last_exception(lines)} (full output: "
                           f"{output}):\n" + "\n".join(lines[-20:]))
    return RunSummary.read(run_dir / "summary.json")
