"""Timing (median of repeated runs after warm-up) and peak resident memory, for every bench section."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from bcd.utils.rss import peak_rss_mib, reset_peak_rss, status_mib


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a timer stops when the work is done (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_rate(
    run: Callable[[], Any], items: int, warmup: int, repeats: int, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Items per second of `run` (which handles `items` items): the median over `repeats` timed calls."""
    for _ in range(warmup):
        run()
    rates = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        run()
        synchronize(device)
        rates.append(items / (time.perf_counter() - started))
    return rate_summary(rates)


def rate_summary(rates: list[float]) -> dict[str, Any]:
    """The median of repeated rates, with every repeat kept to show the spread."""
    return {"images_per_s": round(statistics.median(rates), 2), "repeats": [round(r, 2) for r in rates]}


def private_rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory no other process shares (USS), in MiB: what a forked loader worker really adds,
    since its plain RSS also counts every page it still shares with the parent."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return None
    private_kb = sum(int(line.split()[1]) for line in lines if line.startswith(("Private_Clean:", "Private_Dirty:")))
    return round(private_kb / 1024, 1)


@contextmanager
def recording_peak_rss(record: dict[str, Any]) -> Iterator[None]:
    """Record this process's resident memory before a section and its peak during it (MiB) into `record`."""
    reset = reset_peak_rss()
    before = status_mib("VmRSS") or peak_rss_mib()
    yield
    peak = peak_rss_mib()
    record["memory_mb"] = {
        "rss_before": round(before, 1),
        "peak_rss": round(peak, 1),
        # without a resettable peak (not Linux) the peak may belong to an earlier section
        "peak_above_before": round(peak - before, 1) if reset else None,
    }
