"""Input pipeline throughput: JPEG decoders, bare decode + augment, and the real loaders (cached or not)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from bcd.bench.measure import median_rate, private_rss_mb, rate_summary, recording_peak_rss
from bcd.data.datamodule import SmearDataModule
from bcd.data.dataset import SmearDataset, build_cache
from bcd.data.decode import read_audited_rgb, read_rgb
from bcd.data.reader import resize_square


def jpeg_decoders() -> dict[str, Callable[[Path], np.ndarray]]:
    """Every decoder at hand, by name: the strict PIL path, the OpenCV fast path bcd uses, and others if installed."""
    decoders: dict[str, Callable[[Path], np.ndarray]] = {"pil (strict read_rgb)": read_rgb,
                                                          "opencv (read_audited_rgb)": read_audited_rgb}
    try:
        import simplejpeg

        decoders["simplejpeg"] = lambda path: simplejpeg.decode_jpeg(path.read_bytes(), colorspace="RGB")
    except ImportError:
        pass
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG

        turbo = TurboJPEG()
        decoders["pyturbojpeg"] = lambda path: turbo.decode(path.read_bytes(), pixel_format=TJPF_RGB)
    except (ImportError, RuntimeError):  # RuntimeError: the package without its libturbojpeg
        pass
    return decoders


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """What SmearDataset returns for an image: a CHW uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def loader_rate(datamodule: SmearDataModule, dataset: SmearDataset, workers: int, timing: dict[str, int]) -> dict:
    """Images/s of the datamodule's own loader over `dataset` with `workers` worker processes."""
    timed = copy.copy(datamodule)  # the datamodule's own loader code on other settings; the original is untouched
    timed.datasets = {**datamodule.datasets, "train": dataset}
    timed.num_workers = workers
    # a smaller batch where the images would not give every worker two batches (else some workers sit idle)
    timed.batch_size = min(datamodule.batch_size, max(1, len(dataset) // (2 * workers)))
    loader = timed.loader("train")
    record: dict[str, Any] = {"workers": workers, "batch_size": timed.batch_size}
    with recording_peak_rss(record):
        rates = []
        for repeat in range(1 + timing["repeats"]):  # the first pass starts the (persistent) workers
            started = time.perf_counter()
            iterator = iter(loader)
            for _ in iterator:
                pass
            if repeat:
                rates.append(len(dataset) / (time.perf_counter() - started))
        worker_pids = [w.pid for w in getattr(iterator, "_workers", [])]  # private, but the only handle
        record["worker_private_mb"] = [private_rss_mb(pid) for pid in worker_pids]
    record.update(rate_summary(rates))
    del iterator, loader
    return record


def loader_section(cfg: DictConfig, datamodule: SmearDataModule) -> dict[str, Any]:
    """Decoders, bare decode + augment in this process, and loaders with 1 and N workers, cached or not."""
    timing = {"warmup": 1, "repeats": cfg.bench.timing.repeats}
    samples = datamodule.split_samples("train")[: cfg.bench.loader_images]
    paths, targets = [s.path for s in samples], [datamodule.planned.target_of(s.label) for s in samples]
    size, augment, n = datamodule.img_size, datamodule.augment, len(paths)

    result: dict[str, Any] = {"images": n, "img_size": size, "decoders": {}}
    for name, decode in jpeg_decoders().items():
        result["decoders"][name] = median_rate(lambda d=decode: [d(p) for p in paths], n, **timing)

    def decode_augment() -> None:
        for path in paths:
            to_chw_tensor(augment(image=resize_square(read_audited_rgb(path), size))["image"])

    result["bare_decode_augment"] = median_rate(decode_augment, n, **timing)
    started = time.perf_counter()
    cache = build_cache(paths, size, datamodule.reader)
    result["cache"] = {"build_s": round(time.perf_counter() - started, 2), "mb": round(cache.nbytes / 2**20, 1),
                       "mb_full_taleqani": round(3256 * size * size * 3 / 2**20, 1)}
    result["bare_augment_cached"] = median_rate(
        lambda: [to_chw_tensor(augment(image=image)["image"]) for image in cache], n, **timing
    )
    workers = sorted({1, max(1, datamodule.num_workers)})
    for cached in (False, True):
        dataset = SmearDataset(paths, targets, size, augment, cache if cached else None, datamodule.reader)
        key = "loader_cached" if cached else "loader"
        result[key] = {str(w): loader_rate(datamodule, dataset, w, timing) for w in workers}
    return result
