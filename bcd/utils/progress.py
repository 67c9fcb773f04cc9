"""Progress of long loops (scoring, colour-shift passes, prediction, the file audit, writing the review page): a
rich progress bar saying what is being done and how much is left, on a terminal only (quiet in logs and CI)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield the items, showing a progress bar with `description`, the count done of `total` and the time left
    when standard error is a terminal."""
    if not sys.stderr.isatty():
        yield from items
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
            bar.advance(task)
