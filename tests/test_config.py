"""The Hydra config groups compose into what the README promises, and their options train."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from bcd.config.checks import to_plain
from bcd.models.classifier import Classifier
from tests.helpers.configs import compose_train, tiny_overrides

NATIVE_SIZES = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}


@pytest.mark.parametrize("option", sorted(NATIVE_SIZES))
def test_model_options_name_weighted_timm_models(option: str) -> None:
    cfg = compose_train([f"model={option}"])
    assert cfg.model.img_size == NATIVE_SIZES[option]
    assert timm.is_model(cfg.model.name)
    assert cfg.model.name in timm.list_pretrained(f"*efficientnet_{option}*"), "must have ImageNet weights"
    assert cfg.model.pretrained is False and cfg.model.weights_path is None


def test_defaults_run_out_of_the_box() -> None:
    cfg = compose_train([])
    assert cfg.dataset.name == "synthetic" and cfg.model.name.startswith("efficientnet_b0")
    assert cfg.logger.wandb.offline is True and "csv" in cfg.logger
    assert cfg.trainer.use_distributed_sampler is False


def test_experiment_group_reads_experiments_folder() -> None:
    cfg = compose_train(["experiment=smoke"])
    assert cfg.model.name.startswith("test_efficientnet") and cfg.trainer.max_epochs == 2
    assert list(cfg.logger) == ["csv"]
    assert (Path(__file__).parents[1] / "experiments" / "smoke.yaml").is_file()


def test_logger_lists_and_none() -> None:
    assert set(compose_train(["logger=[wandb,csv,tensorboard]"]).logger) == {"wandb", "csv", "tensorboard"}
    assert not compose_train(["logger=none"]).logger


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer=sgd", "scheduler=plateau", "logger=tensorboard"],
        ["optimizer=adam", "scheduler=none", "logger=none", "augmentation=paper", "augmentation.normalize=unit"],
        ["trainer.precision=bf16-mixed", "augmentation=strong", "dataset.cache_images=true"],
    ],
    ids=["sgd-plateau-tensorboard", "adam-paper-unit", "bf16-strong-cache"],
)
def test_option_combinations_train(train_run, overrides: list[str]) -> None:
    summary = train_run(*overrides, "trainer.max_epochs=2")
    assert summary.epochs == 2
    assert 0.0 <= summary.metrics.test["test/acc"] <= 1.0


def test_unit_normalisation_feeds_the_network_0_to_1(synthetic_cache: Path) -> None:
    """augmentation.normalize=unit (the paper's choice) scales pixels to 0..1 inside the model."""
    cfg = compose_train([*tiny_overrides(synthetic_cache), "augmentation.normalize=unit"])
    model = Classifier(
        class_names=["a", "b"], task="multiclass", model=to_plain(cfg.model), loss=to_plain(cfg.loss),
        optimizer=to_plain(cfg.optimizer), normalize=cfg.augmentation.normalize,
    ).eval()
    seen = {}
    model.net.backbone.register_forward_pre_hook(lambda _, args: seen.setdefault("x", args[0]))
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    images[..., :16] = 255
    model(images)
    assert float(seen["x"].min()) == 0.0 and float(seen["x"].max()) == 1.0
