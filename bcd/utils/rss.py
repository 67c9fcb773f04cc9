"""A process's resident memory and its peak, with a peak that can be restarted (Linux), for bcd.bench's sections and
the micro-batch probe (bcd.models.memory)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def status_mib(field: str, pid: int | str = "self") -> float | None:
    """A memory field (VmRSS, VmHWM) of /proc/<pid>/status in MiB; None where /proc is missing."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window for this process (Linux: clear_refs 5); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib(pid: int | str = "self") -> float:
    """Peak resident memory of a process since the last reset_peak_rss (or since it started), in MiB."""
    peak = status_mib("VmHWM", pid)
    if peak is None and pid == "self":  # no /proc: only the process-lifetime peak, in bytes on macOS, KiB elsewhere
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss / 1024**2 if sys.platform == "darwin" else maxrss / 1024
    return peak or 0.0
