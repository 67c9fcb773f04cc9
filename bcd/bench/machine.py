"""What the numbers were measured on: CPU, threads, GPU, allocator, load and library versions."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from bcd.runs.summary import library_versions
from bcd.utils.allocator import active_allocator

EXTRA_LIBRARIES = ("numpy", "pillow", "opencv-python-headless", "onnxruntime", "simplejpeg", "PyTurboJPEG")


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> dict[str, Any]:
    """A JSON-ready description of this machine and software, written at the top of bench.md."""
    versions = library_versions()
    for name in EXTRA_LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        # other processes on the same cores slow every section alike: compare ratios, not absolute rates
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "allocator": active_allocator(),
        "platform": platform.platform(),
        "versions": versions,
    }
