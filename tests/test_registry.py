"""Adding an option is one registered function (with its schema beside it) and one YAML file: a new optimizer,
defined here and configured in a folder of the user's own, trains and is recorded by name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bcd.models.registry import REGISTRY, register


@dataclass
class RAdamConfig:
    """optimizer=radam_test: torch's RAdam."""

    name: str = "radam_test"
    lr: float = 1.0e-3
    weight_decay: float = 0.0


@register("optimizer", RAdamConfig)
def radam(config: RAdamConfig, parameters) -> torch.optim.Optimizer:
    """optimizer=radam_test."""
    return torch.optim.RAdam(parameters, lr=config.lr, weight_decay=config.weight_decay)


def test_a_new_optimizer_is_one_function_and_one_yaml_file(train_run, tmp_path: Path) -> None:
    from bcd.models.classifier import load_classifier

    conf = tmp_path / "my-conf"
    (conf / "optimizer").mkdir(parents=True)
    (conf / "optimizer" / "radam_test.yaml").write_text("defaults:\n  - _radam_test\n  - _self_\n\nweight_decay: 0.01\n")
    summary = train_run(f"hydra.searchpath=[file://{conf}]", "optimizer=radam_test")
    stored = torch.load(summary.checkpoints.last, weights_only=True)["hyper_parameters"]["optimizer"]
    # the YAML's weight decay; the default recipe sets the learning rate of whichever optimizer it runs
    assert stored == {"name": "radam_test", "lr": 0.001, "weight_decay": 0.01}
    model = load_classifier(summary.checkpoints.last)
    assert model.optimizer_config == RAdamConfig(lr=0.001, weight_decay=0.01)
    assert isinstance(REGISTRY["optimizer"]["radam_test"].build(model.optimizer_config, model.parameters()),
                      torch.optim.RAdam)


def test_a_schema_without_a_name_cannot_register() -> None:
    @dataclass
    class Nameless:
        lr: float = 0.1

    with pytest.raises(ValueError, match="must have a `name` field"):
        register("optimizer", Nameless)
    with pytest.raises(ValueError, match="the group must be one of"):
        register("augmentation", RAdamConfig)
