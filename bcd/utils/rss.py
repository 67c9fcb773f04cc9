"""A process's resident memory and its peak, with a peak that can be restarted (Linux), for bcd.bench's sections and
the micro-batch probe (bcd.models.memory); and the memory a process may still use, on the CPU or a GPU (the memory
plan's budget, the datamodule's rule for keeping a dataset on the device)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch


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


def available_memory(device: str) -> int:
    """Bytes this process may still use: the GPU's free memory, else the smaller of MemAvailable and the cgroup's
    limit minus its usage."""
    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    available = _meminfo("MemAvailable")
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        available = min(available, limit - used)
    return available


def _meminfo(field: str) -> int:
    """A /proc/meminfo field in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/meminfo has no {field}")


def _read_int(path: str) -> int | None:
    """An integer file (cgroup limits), or None when absent or 'max'."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
