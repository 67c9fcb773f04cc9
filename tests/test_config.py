"""The Hydra config groups compose into what the README promises, and their options train."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf

from bcd.config.checks import to_plain
from bcd.models.classifier import Classifier
from bcd.utils.errors import ConfigError
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
    assert cfg.dataset.name == "synthetic"
    assert cfg.logger.wandb.offline is True and "csv" in cfg.logger
    assert cfg.trainer.use_distributed_sampler is False


def test_the_default_recipe_is_the_imagenet_transfer_recipe() -> None:
    """`python -m bcd.train` with no experiment fine-tunes Lite0 from the ImageNet weights bcd installs, with the colour
    remedies, validating by images, tested on the last checkpoint with tta; the from-scratch recipe stays a named
    experiment, and experiment=transfer_fast is the same recipe on the Taleqani release."""
    default = compose_train([])
    assert default.model.name == "tf_efficientnet_lite0" and default.model.weights == "imagenet"
    assert default.model.freeze_backbone_epochs == 0  # every layer trains from the start
    assert default.loss.label_smoothing == 0.1 and default.optimizer.lr == 1e-3 and default.trainer.max_epochs == 8
    assert default.augmentation.train.channel_gain and default.colour_norm.name == "gray_world"
    assert default.val_every_images == 1000 and default.callbacks.early_stopping is None
    assert default.test_checkpoint == "last" and default.tta is True
    assert list(default.tags) == ["transfer"]
    scratch = compose_train(["experiment=colour_robust"])
    assert scratch.model.name.startswith("efficientnet_b0") and not scratch.model.pretrained
    assert scratch.model.weights is None and scratch.trainer.max_epochs == 60 and scratch.val_every_images is None
    named = compose_train(["experiment=transfer_fast"])
    for key in ("model", "augmentation", "colour_norm", "loss", "optimizer", "scheduler", "trainer", "callbacks"):
        assert named[key] == default[key], key
    assert named.dataset.name == "taleqani_all" and named.dataset.cache_images is True
    # another option of a group still applies on top of the recipe
    assert compose_train(["model=b3"]).model.name.startswith("efficientnet_b3")


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


def test_options_with_fixed_choices_are_enums_checked_where_they_enter() -> None:
    """dataset.layout/dedup/groups/on_bad_file and test_checkpoint are enums of strings: composing, the Python API and
    a stored run dir refuse another value naming the key and the choices; a member is its string everywhere."""
    from hydra.errors import ConfigCompositionException

    from bcd.config.checks import check_config
    from bcd.data.spec import DatasetConfig, Dedup, dataset_config
    from bcd.models.registry import StoredConfigError, checked

    with pytest.raises(ConfigCompositionException) as composing:
        compose_train(["dataset.dedup=nearr"])
    assert "expected one of [none, exact, near]" in str(composing.value.__cause__)
    cfg = compose_train(["dataset.dedup=near"])
    assert cfg.dataset.dedup == "near" and f"{cfg.dataset.dedup}-dedup" == "near-dedup"
    assert OmegaConf.to_yaml(cfg.dataset).count("dedup: near") == 1
    assert type(to_plain(cfg.dataset)["dedup"]) is str  # loggers and checkpoints store plain strings
    with pytest.raises(ValueError, match=r"dataset.on_bad_file: 'ignore' is not one of \['fail', 'skip'\]"):
        dataset_config({"name": "t", "root": ".", "on_bad_file": "ignore"})
    stored = {"name": "t", "root": ".", "dedup": "nearr"}
    with pytest.raises(StoredConfigError, match=r"run/config.yaml: dataset.dedup: 'nearr' is not one of"):
        checked(DatasetConfig, stored, "run/config.yaml: dataset")
    assert checked(DatasetConfig, {**stored, "dedup": "near"}, "x").dedup is Dedup.near
    for override, message in [("test_checkpoint=worst", r"test_checkpoint: 'worst' is not one of \['best', 'last'\]"),
                              ("tta=maybe", "tta: 'maybe' is not a bool"), ("seed=1.5", "seed: 1.5 is not a int")]:
        with pytest.raises(ConfigError, match=message):
            check_config(compose_train([override]))
