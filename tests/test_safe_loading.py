"""Nothing read from disk names code to run: crafted checkpoints, weights files, run dirs, summaries and calibration
files that try to call a function through a stored field are refused with an error naming the field, and the
function is never called. Checkpoints of earlier bcd versions (which stored `_target_` strings) still load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from bcd.models.checkpoints import CheckpointError
from bcd.models.registry import StoredConfigError
from bcd.runs.summary import RunSummary
from bcd.utils.stored import StoredFileError
from tests.helpers.commands import copy_run, run_evaluate, run_export, run_predict


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A folder that exists only if something called os.makedirs on it."""
    return tmp_path / "called"


def call(canary: Path) -> dict[str, Any]:
    """A stored value that, handed to Hydra's instantiate, would create the canary folder."""
    return {"_target_": "os.makedirs", "name": str(canary)}


def copied_run_dir(trained: RunSummary, tmp_path: Path) -> Path:
    """A copy of the trained run dir to tamper with."""
    return Path(copy_run(trained, tmp_path / "copied-run").run_dir)


def tamper_checkpoint(run_dir: Path, change: Any) -> Path:
    """Rewrite the run's last.ckpt with change(hyper_parameters) applied."""
    path = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint["hyper_parameters"])
    torch.save(checkpoint, path)
    return path


def commands(tmp_path: Path, checkpoint: Path, images: Path) -> dict[str, Any]:
    """Each command that rebuilds a model from a checkpoint, ready to run."""
    return {
        "evaluate": lambda: run_evaluate(tmp_path, f"ckpt_path={checkpoint}", "shift=none", "wandb=false"),
        "predict": lambda: run_predict(tmp_path, f"ckpt_path={checkpoint}", f"inputs={images}"),
        "export": lambda: run_export(tmp_path / "export", f"ckpt_path={checkpoint}"),
    }


FIELDS = {
    "loss": lambda hp, c: hp.__setitem__("loss", call(c)),
    "optimizer": lambda hp, c: hp.__setitem__("optimizer", {**call(c), "_partial_": True}),
    "scheduler": lambda hp, c: hp.__setitem__("scheduler", {**call(c), "_partial_": True}),
    "colour_norm": lambda hp, c: hp.__setitem__("colour_norm", call(c)),
    "model": lambda hp, c: hp["model"].update(call(c)),
    "model.name": lambda hp, c: hp["model"].__setitem__("name", call(c)),
    "class_names": lambda hp, c: hp.__setitem__("class_names", [call(c)] * 4),
    "class_weights": lambda hp, c: hp.__setitem__("class_weights", [call(c)] * 4),
    "colour_range": lambda hp, c: hp.__setitem__("colour_range", {"mean_red": call(c)}),
    "tta": lambda hp, c: hp.__setitem__("tta", call(c)),
    "task": lambda hp, c: hp.__setitem__("task", call(c)),
    "_target_": lambda hp, c: hp.update(call(c)),
}


@pytest.mark.parametrize("field", FIELDS)
def test_a_checkpoint_field_cannot_call_a_function(field: str, trained: RunSummary, synthetic_root: Path,
                                                   tmp_path: Path, canary: Path) -> None:
    checkpoint = tamper_checkpoint(copied_run_dir(trained, tmp_path), lambda hp: FIELDS[field](hp, canary))
    for name, command in commands(tmp_path, checkpoint, synthetic_root / "Pro").items():
        with pytest.raises(StoredConfigError, match="hyper_parameters") as error:
            command()
        assert field.split(".")[0] in str(error.value), (name, str(error.value))
        assert not canary.exists(), name


class Calls:
    """A pickle that calls os.makedirs(canary) when it is loaded without weights_only."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple:
        import os

        return os.makedirs, (str(self.canary),)


def test_a_checkpoint_that_is_a_malicious_pickle_is_refused(trained: RunSummary, synthetic_root: Path,
                                                           tmp_path: Path, canary: Path) -> None:
    run_dir = copied_run_dir(trained, tmp_path)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"payload": Calls(canary)}}, checkpoint)
    for command in commands(tmp_path, checkpoint, synthetic_root / "Pro").values():
        with pytest.raises(CheckpointError, match="which bcd never loads") as error:
            command()
        assert "weights_only" not in str(error.value)
    assert not canary.exists()


def test_a_file_that_is_not_a_checkpoint_is_called_so(tmp_path: Path, synthetic_root: Path) -> None:
    for name, content in (("notes.ckpt", b"just some text\n"), ("image.ckpt", (synthetic_root / "Pro").iterdir()
                                                                  .__next__().read_bytes())):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=r"is not a checkpoint written by bcd.train") as error:
            run_evaluate(tmp_path, f"ckpt_path={path}", name=f"eval-{name}")
        assert "weights_only" not in str(error.value)


def test_weights_may_not_name_a_callable_of_an_allowed_module(train_run, tmp_path: Path, canary: Path) -> None:
    """Exact class names only: omegaconf's data classes load, OmegaConf.save (a function of the module) does not."""
    from omegaconf import OmegaConf

    class SavesAConfig:
        def __reduce__(self) -> tuple:
            return OmegaConf.save, ({"a": 1}, str(canary))

    weights = tmp_path / "weights.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hparams": SavesAConfig()}, weights)
    with pytest.raises(CheckpointError, match="which bcd never loads"):
        train_run(f"model.weights_path={weights}")
    assert not canary.exists()


def test_a_run_dir_config_cannot_name_code_for_the_dataset(trained: RunSummary, tmp_path: Path,
                                                           canary: Path) -> None:
    run_dir = copied_run_dir(trained, tmp_path)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for dataset, where in ((call(canary), "dataset._target_"), ({**config["dataset"], "classes": call(canary)},
                                                               "dataset.classes")):
        (run_dir / "config.yaml").write_text(yaml.safe_dump({**config, "dataset": {**config["dataset"], **dataset}}))
        with pytest.raises(StoredConfigError, match=where.replace(".", r"\.")):
            run_evaluate(tmp_path, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", name=f"eval-{where}")
    (run_dir / "config.yaml").write_text(f"dataset: !!python/object/apply:os.makedirs ['{canary}']\n")
    with pytest.raises(StoredFileError, match="config.yaml: not plain YAML .*python/object/apply"):
        run_evaluate(tmp_path, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", name="eval-yaml")
    assert not canary.exists()


@pytest.mark.parametrize("key", ["img_size", "dataset", "checkpoints", "tta"])
def test_a_summary_field_cannot_call_a_function(key: str, trained: RunSummary, tmp_path: Path, canary: Path) -> None:
    run_dir = copied_run_dir(trained, tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary[key] = call(canary) if key != "dataset" else {**summary["dataset"], "root": call(canary)}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(StoredConfigError, match=f"summary.json.{key}"):
        run_evaluate(tmp_path, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "wandb=false")
    assert not canary.exists()


@pytest.mark.parametrize("calibration", [
    {"temperature": {"_target_": "os.makedirs"}, "tta": False},
    {"_target_": "os.makedirs", "tta": False},
    {"temperature": 2.0, "tta": "yes"},
    {"temperature": -1.0, "tta": False},
])
def test_a_calibration_file_holds_numbers_only(calibration: dict, trained: RunSummary, synthetic_root: Path,
                                               tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(calibration))
    with pytest.raises(ValueError, match=f"calibration: {path}"):
        run_predict(tmp_path, f"ckpt_path={trained.checkpoints.last}", f"inputs={synthetic_root / 'Pro'}",
                    f"calibration={path}")


def legacy_hyper_parameters(hp: dict) -> None:
    """The hyper_parameters as bcd wrote them before names: `_target_` strings and partials."""
    hp["loss"] = {"_target_": "bcd.models.losses.CrossEntropyLoss", "weighted": False, "label_smoothing": 0.0}
    hp["optimizer"] = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.001, "weight_decay": 0.05,
                       "fused": True}
    hp["scheduler"] = {"_target_": "bcd.models.schedulers.cosine_with_warmup", "_partial_": True,
                       "warmup_epochs": 1, "min_lr_ratio": 0.01}


def test_a_checkpoint_of_an_earlier_version_still_loads(trained: RunSummary, synthetic_root: Path,
                                                        tmp_path: Path) -> None:
    from bcd.models.classifier import load_classifier

    run_dir = copied_run_dir(trained, tmp_path)
    checkpoint = tamper_checkpoint(run_dir, legacy_hyper_parameters)
    calibration = {"temperature": 1.5, "fitted_on": "val", "checkpoint": str(checkpoint),
                   "ood": {"score": "energy", "threshold": -1.0, "quantile": 0.95, "fitted_on": "val"}}
    checkpoint.with_name("last.calibration.json").write_text(json.dumps(calibration))
    model = load_classifier(checkpoint)
    assert (model.hparams["loss"]["name"], model.hparams["optimizer"]["name"]) == ("ce", "adamw")
    assert model.hparams["scheduler"] == {"name": "cosine", "warmup_epochs": 1.0, "min_lr_ratio": 0.01}
    result, _ = run_evaluate(tmp_path, f"ckpt_path={checkpoint}", "shift=none", "wandb=false")
    assert result["metrics"]["acc"]["value"] == pytest.approx(trained.metrics.test["test/acc"], abs=1e-6)
    summary, _, _ = run_predict(tmp_path, f"ckpt_path={checkpoint}", f"inputs={synthetic_root / 'Pro'}")
    assert summary["temperature"] == 1.5 and summary["ood_threshold"] == -1.0  # the earlier calibration format


def test_a_legacy_checkpoint_naming_other_code_is_refused(trained: RunSummary, tmp_path: Path, canary: Path) -> None:
    run_dir = copied_run_dir(trained, tmp_path)
    checkpoint = tamper_checkpoint(run_dir, lambda hp: hp.__setitem__("loss", {**call(canary), "_partial_": True}))
    with pytest.raises(StoredConfigError, match=r"loss\._target_: 'os.makedirs' is not something bcd builds"):
        run_evaluate(tmp_path, f"ckpt_path={checkpoint}", "shift=none", "wandb=false")
    assert not canary.exists()
