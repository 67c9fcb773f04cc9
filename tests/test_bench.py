"""bcd.bench end to end at a tiny size, the allocator re-exec, the fast decoder and the decoded-image cache."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from bcd.data.dataset import build_cache
from bcd.data.decode import read_audited_rgb, read_rgb
from bcd.data.reader import ImageReader
from bcd.utils.allocator import active_allocator, allocator_environment
from bcd.utils.errors import ConfigError
from tests.helpers.cli import run_cli
from tests.helpers.configs import tiny_overrides
from tests.helpers.paths import REPO

TINY_BENCH = [
    "bench.timing.warmup=1", "bench.timing.steps=2", "bench.timing.repeats=2", "bench.loader_images=16",
    "bench.inference_batch_sizes=[1,4]", "bench.inference_images=4", "bench.compile=false",
]


def _numbers(node: object) -> list[float]:
    """Every number in a JSON tree."""
    if isinstance(node, dict):
        return [x for v in node.values() for x in _numbers(v)]
    if isinstance(node, list):
        return [x for v in node for x in _numbers(v)]
    return [float(node)] if isinstance(node, int | float) and not isinstance(node, bool) else []


@pytest.mark.slow
def test_bench_writes_every_section(synthetic_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    overrides = [o for o in tiny_overrides(synthetic_cache) if not o.startswith("callbacks.")]
    result = run_cli(["bcd.bench", *overrides, *TINY_BENCH, "bench.rounds=2", f"hydra.run.dir={out}"], cwd=tmp_path,
                     env={"BCD_ALLOCATOR": "auto"})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "bench.json").read_text())
    assert set(results) >= {"machine", "settings", "training", "loader", "inference", "targets"}
    cpu = results["training"]["cpu"]
    for run in ("raw", "framework", "naive"):
        assert cpu[run]["images_per_s"] > 0, run
    # two rounds of (bcd.train, raw loop, user loop) after the first raw loop; the target is their median
    assert len(cpu["rounds"]) == 2 and len(cpu["raw"]["repeats"]) == 3 * 2
    assert len(cpu["framework"]["repeats"]) == len(cpu["naive"]["repeats"]) == 2 * 2
    ratios = [r["framework_vs_raw"] for r in cpu["rounds"]]
    (target,) = [t for t in results["targets"] if t["target"] == "cpu: bcd.train / raw timm loop"]
    assert target["value"] == pytest.approx(sum(ratios) / 2, abs=1e-3)
    assert results["loader"]["loader"]["1"]["images_per_s"] > 0
    assert results["loader"]["loader_cached"]["1"]["images_per_s"] > 0
    runtimes = results["inference"]["cpu"]["runtimes"]
    assert {"torch eager", "torch channels_last", "onnxruntime"} <= set(runtimes)
    assert runtimes["onnxruntime"]["batches"]["4"]["max_abs_diff_probs_vs_eager"] < 1e-4
    assert all(math.isfinite(x) and x >= 0 for x in _numbers(results)), "a negative or non-finite value"
    assert cpu["framework"]["memory_mb"]["peak_rss"] > 0
    assert results["machine"]["allocator"] != "system"  # the bench re-executed itself with a faster allocator
    # each round also ran a whole 2-epoch fit as users run it (loggers, validations, checkpoints), beside its steps
    assert len(cpu["fits"]) == 2 and all(fit["epochs"] == 2 and fit["validations"] == 2 for fit in cpu["fits"])
    for fit, ratio in zip(cpu["fits"], cpu["rounds"], strict=True):
        assert fit["images"] == 2 * 32 and fit["fit_s"] > 0 and fit["setup_s"] > 0  # 4 batches of 8 an epoch
        assert fit["images_per_s"] == pytest.approx(fit["images"] / fit["fit_s"], rel=0.05)  # fit_s is rounded
        assert ratio["fit_vs_framework"] == pytest.approx(fit["images_per_s"] / ratio["framework"], abs=1e-3)
    (fit_target,) = [t for t in results["targets"] if t["target"] == "cpu: a whole fit / bcd.train's steps"]
    assert fit_target["bar"] == 0.9 and fit_target["value"] == pytest.approx(
        sum(r["fit_vs_framework"] for r in cpu["rounds"]) / 2, abs=1e-3)
    assert list((out / "fit-cpu-1" / "checkpoints").glob("best-epoch*.ckpt"))
    markdown = (out / "bench.md").read_text()
    for heading in ("## Training", "Whole fits as users run them", "## Loader", "## Inference", "## Targets"):
        assert heading in markdown


def test_bench_times_the_recipe_to_a_val_accuracy(synthetic_cache: Path, tmp_path: Path) -> None:
    """bench.sections=[time_to_accuracy]: the recipe's whole training, and when val accuracy first reached the target
    (a target of 0 is reached at the first validation; one above 1 never)."""
    from bcd.bench.__main__ import bench
    from tests.helpers.configs import compose_config

    def run(name: str, target: float) -> dict:
        cfg = compose_config("bench", [*tiny_overrides(synthetic_cache), "trainer.max_epochs=2",
                                       "bench.sections=[time_to_accuracy]", f"bench.target_val_acc={target}",
                                       f"paths.output_dir={tmp_path / name}"])
        results = bench(cfg)
        assert results["training"] == {} and "loader" not in results and results["inference"] == {}
        assert "## Time to accuracy" in (tmp_path / name / "bench.md").read_text()
        return results["time_to_accuracy"]["cpu"]

    reached = run("reached", 0.0)
    assert reached["reached"] and reached["train_images"] == 32 and reached["epochs"] == 2
    assert 0 < reached["elapsed_s"] <= reached["fit_s"] and reached["validations"] == 2
    never = run("never", 1.01)
    assert not never["reached"] and "elapsed_s" not in never and never["best_val_acc"] <= 1.0
    with pytest.raises(ConfigError, match="bench.sections"):
        bench(compose_config("bench", [*tiny_overrides(synthetic_cache), "bench.sections=[everything]",
                                       f"paths.output_dir={tmp_path / 'bad'}"]))


def test_allocator_prefers_a_preloaded_library_else_glibc_tunables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert allocator_environment("system", {}) == ("system", {})
    monkeypatch.setattr("bcd.utils.allocator.find_allocator", lambda name: None)
    name, env = allocator_environment("auto", {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert name == "glibc-tuned"
    # the user's own tunables first, then ours: no allocation served by mmap (each would be faulted in again)
    assert env["GLIBC_TUNABLES"].startswith("glibc.malloc.arena_max=2:glibc.malloc.mmap_max=0:")
    with pytest.raises(ValueError, match="libtcmalloc is not installed"):
        allocator_environment("tcmalloc", {})
    monkeypatch.setattr("bcd.utils.allocator.find_allocator", lambda name: f"lib{name}.so")
    assert allocator_environment("auto", {"LD_PRELOAD": "other.so"}) == (
        "tcmalloc", {"LD_PRELOAD": "libtcmalloc.so other.so"})


@pytest.mark.skipif(sys.platform != "linux", reason="the allocator is only swapped on Linux")
def test_the_command_re_executes_once_with_the_allocator(tmp_path: Path) -> None:
    # the re-exec, then a child that must not re-exec again (as a DDP rank or sweep trial would be)
    code = ("from bcd.utils.allocator import use_fast_allocator, active_allocator; use_fast_allocator(); "
            "import os; print(active_allocator(), os.environ['BCD_ALLOCATOR_ACTIVE'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BCD_ALLOCATOR")}
    import subprocess

    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stderr
    name, marker = first.stdout.split()
    assert name == marker != "system"
    opted_out = subprocess.run([sys.executable, "-c", code], env={**env, "BCD_ALLOCATOR": "system"},
                               capture_output=True, text=True, cwd=REPO)
    assert opted_out.stdout.split() == ["system", "system"]
    assert active_allocator() in ("tcmalloc", "jemalloc", "glibc-tuned", "system")


def test_fast_decoder_matches_strict_decoding(synthetic_root: Path) -> None:
    paths = sorted(synthetic_root.glob("*/*"))[:8]
    for path in paths:
        assert np.array_equal(read_audited_rgb(path), read_rgb(path)), path


def test_fast_decoder_falls_back_for_exif_images(tmp_path: Path) -> None:
    from PIL import Image

    image = Image.fromarray(np.arange(24 * 32 * 3, dtype=np.uint8).reshape(24, 32, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    decoded = read_audited_rgb(tmp_path / "rotated.jpg")
    assert decoded.shape == (32, 24, 3)
    assert np.array_equal(decoded, read_rgb(tmp_path / "rotated.jpg"))


def test_cache_holds_exactly_the_directly_decoded_images(synthetic_root: Path) -> None:
    paths = sorted(synthetic_root.glob("*/*"))[:10]
    cache = build_cache(paths, 40, ImageReader(max_pixels=None))
    for i, path in enumerate(paths):
        assert cache[i].tobytes() == ImageReader(max_pixels=None).load(path, 40).tobytes()


def _first_epoch_losses(run_dir: Path) -> list[float]:
    metrics = next(run_dir.glob("**/metrics.csv")).read_text().splitlines()
    header = metrics[0].split(",")
    column = header.index("train/loss_step")
    return [float(row.split(",")[column]) for row in metrics[1:] if row.split(",")[column]]


@pytest.mark.slow
def test_training_with_and_without_the_cache_gives_the_same_losses(train_run) -> None:
    common = ["trainer.log_every_n_steps=1", "dataset.num_workers=1"]
    plain = train_run(*common, "dataset.cache_images=false")
    cached = train_run(*common, "dataset.cache_images=true")
    losses = [_first_epoch_losses(Path(s.run_dir)) for s in (plain, cached)]
    assert losses[0] and losses[0] == losses[1]


def test_default_worker_count_follows_the_usable_cores_and_the_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import bcd.data.datamodule as datamodule

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(datamodule.torch.cuda, "is_available", lambda: False)
    # without a GPU the training process augments its own batches: workers forked from it would make it copy every
    # page it touches afterwards
    assert datamodule.default_num_workers() == 0
    monkeypatch.setattr(datamodule.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(datamodule.torch.cuda, "device_count", lambda: 1)
    assert datamodule.default_num_workers() == 15  # every core but the one that drives the GPU
    monkeypatch.setattr(datamodule.torch.cuda, "device_count", lambda: 4)
    assert datamodule.default_num_workers() == 3  # per device: DDP starts one loader per GPU
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)))
    assert datamodule.default_num_workers() == 1


def test_bench_devices_default_to_what_the_machine_has_and_refuse_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    from bcd.bench.__main__ import bench_devices

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cfg = OmegaConf.create({"trainer": {"precision": "32-true"}, "bench": {"devices": None}})
    assert bench_devices(cfg) == {"cpu": "32-true"}
    cfg.bench.devices = ["cuda"]
    with pytest.raises(ValueError, match="bench.devices"):
        bench_devices(cfg)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert bench_devices(cfg) == {"cuda": "bf16-mixed"}
    cfg.bench.devices = None
    assert bench_devices(cfg) == {"cpu": "32-true", "cuda": "bf16-mixed"}


def test_bench_times_the_step_with_the_augmentation_on_the_cpu_and_on_the_model(synthetic_cache: Path,
                                                                                 tmp_path: Path) -> None:
    """bench.augmentation_devices=[cpu, model]: the step with the loader's per-image augmentation and the one with
    the batched augmentation on the model's device, each against the same raw loops."""
    from bcd.bench.__main__ import bench
    from tests.helpers.configs import compose_config

    cfg = compose_config("bench", [*tiny_overrides(synthetic_cache), *TINY_BENCH, "bench.sections=[training]",
                                   "bench.augmentation_devices=[cpu,model]", "bench.fit_epochs=0", "bench.naive=false",
                                   f"paths.output_dir={tmp_path / 'bench'}"])
    cpu = bench(cfg)["training"]["cpu"]
    assert cpu["framework"]["augmentation"] == "cpu" and cpu["framework_model"]["augmentation"] == "model"
    (round_,) = cpu["rounds"]
    assert round_["framework_model_vs_raw"] == pytest.approx(round_["framework_model"] / round_["raw"], abs=1e-3)
    assert "| cpu | 1 | model |" in (tmp_path / "bench" / "bench.md").read_text()
    with pytest.raises(ConfigError, match="bench.augmentation_devices"):
        bench(compose_config("bench", [*tiny_overrides(synthetic_cache), "bench.augmentation_devices=[gpu]",
                                       f"paths.output_dir={tmp_path / 'bad'}"]))
