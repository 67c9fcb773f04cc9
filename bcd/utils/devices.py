"""The device a run trains, plans its memory and runs inference on."""

from __future__ import annotations

import torch


def device_of(accelerator: str) -> str:
    """The device a run's memory is planned on: the first GPU when it trains on one, else the CPU."""
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "cuda:0" if on_gpu else "cpu"
