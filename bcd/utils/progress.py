"""Progress of long loops (scoring, colour-shift passes, prediction, the file audit, writing the review page, training)
and what was interrupted when a SIGTERM stops a command.

On a terminal a rich progress bar says what is being done and how much is left. When standard error is not a terminal
(SLURM, nohup, CI: output going to a file) the same loops log a line instead, about every LOG_EVERY_S seconds or every
tenth of the work, with done/total, the rate and the time left, so a long job is never silent in its log file.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import lightning as L

from bcd.utils.timing import format_duration, images_trained

T = TypeVar("T")
log = logging.getLogger(__name__)

# a log line about this often (seconds), or at every tenth of the work when that comes sooner but not before
# MIN_GAP_S: a loop of a few seconds logs nothing, a loop of minutes a line each ~10%, an hour one each 30 s
LOG_EVERY_S = 30.0
MIN_GAP_S = 10.0

# what the innermost running loop is doing, for the message of an interrupted command
_activity: list[dict[str, Any]] = []


def current_activity() -> str:
    """'scoring the test split: batches 3 of 10', or '' when no loop runs."""
    if not _activity:
        return ""
    now = _activity[-1]
    total = f" of {now['total']}" if now["total"] else ""
    return f"{now['description']} ({now['done']}{total} done)"


class _LogLines:
    """When to log a progress line of one loop, and the line itself."""

    def __init__(self, description: str, total: int | None) -> None:
        self.description, self.total = description, total
        self.started = self.last = time.monotonic()
        self.last_tenth = 0
        self.logged = False

    def update(self, done: int) -> None:
        """Log a line if a tenth of the work or LOG_EVERY_S has passed since the last one."""
        now = time.monotonic()
        tenth = int(10 * done / self.total) if self.total else 0
        due = now - self.last >= LOG_EVERY_S or (tenth > self.last_tenth and now - self.last >= MIN_GAP_S)
        self.last_tenth = max(self.last_tenth, tenth)
        if due:
            self.last, self.logged = now, True
            log.info("%s: %s", self.description, progress_line(done, self.total, now - self.started))

    def finish(self, done: int) -> None:
        """A last line when the loop logged any (so the log shows it ended, and how long it took)."""
        if self.logged:
            log.info("%s: %s", self.description, progress_line(done, self.total, time.monotonic() - self.started))


def progress_line(done: int, total: int | None, elapsed: float) -> str:
    """'120/480 (25%), 4.0/s, 30 s so far, about 1.5 min left'."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if not total:
        return f"{done} done, {rate:.3g}/s, {format_duration(elapsed)} so far"
    left = f", about {format_duration((total - done) / rate)} left" if rate > 0 and done < total else ""
    return f"{done}/{total} ({100 * done / total:.0f}%), {rate:.3g}/s, {format_duration(elapsed)} so far{left}"


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield the items, showing a progress bar with `description`, the count done of `total` and the time left when
    standard error is a terminal, else logging a line now and then (module docstring)."""
    state = {"description": description, "done": 0, "total": total}
    _activity.append(state)
    try:
        if not sys.stderr.isatty():
            lines = _LogLines(description, total)
            for item in items:
                yield item
                state["done"] += 1
                lines.update(state["done"])
            lines.finish(state["done"])
            return
        # imported here: only interactive runs pay for rich's display machinery
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("left"), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                state["done"] += 1
                bar.advance(task)
    finally:
        _activity.remove(state)


@contextlib.contextmanager
def exit_on_sigterm(command: str, out_dir: Path) -> Iterator[None]:
    """Within: a SIGTERM (a cluster's time limit, `kill`) logs what was running and where the incomplete outputs are,
    then exits with 143 (files already written stay; the one being written is never left half-written: bcd writes
    results whole)."""

    def stop(signum: int, frame: object) -> None:
        log.error("interrupted (SIGTERM) while %s: %s did not finish, so %s is incomplete; run it again",
                  current_activity() or "preparing", command, out_dir)
        raise SystemExit(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class TrainingProgressLog(L.Callback):
    """A log line after every validation (epoch, images seen, the val metrics, elapsed time) and, within long epochs
    when standard error is not a terminal, about every LOG_EVERY_S seconds (batch n of N, rate, time left in the epoch):
    the progress bar draws only on a terminal, the log file gets these."""

    SHOWN = ("val/acc", "val/macro_f1", "val/loss")

    def __init__(self) -> None:
        self.started = 0.0
        self.epoch_started = 0.0
        self.last = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the clocks."""
        self.started = self.last = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the epoch's clock."""
        self.epoch_started = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        """Within a long epoch, off a terminal: a line about every LOG_EVERY_S seconds."""
        now = time.monotonic()
        if not trainer.is_global_zero or sys.stderr.isatty() or now - self.last < LOG_EVERY_S:
            return
        self.last = now
        log.info("epoch %d: batches %s", trainer.current_epoch + 1,
                 progress_line(batch_idx + 1, trainer.num_training_batches, now - self.epoch_started))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """One line per validation (not the sanity check), always."""
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.last = time.monotonic()
        metrics = ", ".join(f"{key} {float(trainer.callback_metrics[key]):.4f}" for key in self.SHOWN
                            if key in trainer.callback_metrics)
        log.info("validation in epoch %d of %s, %d training images seen, %s into the fit: %s", trainer.current_epoch + 1,
                 trainer.max_epochs, images_trained(trainer), format_duration(self.last - self.started), metrics)
