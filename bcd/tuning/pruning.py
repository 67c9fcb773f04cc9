"""Optuna pruning inside a bcd run: report the validation metric every epoch, stop the run when told to.

Our own callback rather than optuna-integration's PyTorchLightningPruningCallback: that one needs the live
`optuna.Trial` object, which a config file cannot carry into `python -m bcd.train` (the DDP path of a
sweep), and optuna-integration is not a dependency. This one finds its trial in the study's storage by
number, so it works in the sweep's process and in a training subprocess alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import optuna
from omegaconf import DictConfig, OmegaConf

from bcd.launch import SigtermForwarding, train_in_subprocess
from bcd.runs.summary import RunSummary
from bcd.tuning.study import make_pruner, make_storage, storage_url
from bcd.utils.errors import ConfigError
from bcd.utils.overrides import hydra_value
from bcd.utils.stored import load_stored_json

log = logging.getLogger(__name__)

# what a pruned run leaves in its run dir (the trial, the step, the metric) for the sweep to read
PRUNED_FILE = "pruned.json"


def load_trial(
    storage: str, study_name: str, trial_number: int, pruner: optuna.pruners.BasePruner
) -> optuna.Trial:
    """The running trial `trial_number` of a stored study, to report to and ask whether to prune."""
    study = optuna.load_study(
        study_name=study_name,
        storage=make_storage(storage),
        # the sampler is never asked here; RandomSampler keeps loading the trial cheap
        sampler=optuna.samplers.RandomSampler(),
        pruner=pruner,
    )
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, trial_number)
    return optuna.trial.Trial(study, trial_id)


class OptunaPruning(L.Callback):
    """Report `metric` to a sweep's trial after every validation; write pruned.json and stop when pruned."""

    def __init__(
        self,
        storage: str,
        study_name: str,
        trial_number: int,
        metric: str,
        output_dir: str,
        pruner: str = "median",
        pruner_args: dict[str, Any] | None = None,
    ) -> None:
        self.storage = storage
        self.study_name = study_name
        self.trial_number = trial_number
        self.metric = metric
        self.output_dir = Path(output_dir)
        self.pruner = make_pruner(pruner, pruner_args)
        self.trial: optuna.Trial | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Rank 0 connects to the study; the other ranks only follow its decision."""
        if trainer.is_global_zero and self.trial is None:
            self.trial = load_trial(self.storage, self.study_name, self.trial_number, self.pruner)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Report this epoch's metric; every rank stops together when the pruner says so."""
        if trainer.sanity_checking:
            return
        prune, value = False, None
        if trainer.is_global_zero:
            value = self._metric(trainer)
            self.trial.report(value, step=trainer.current_epoch)
            prune = self.trial.should_prune()
        # a rank that stopped alone would leave the others waiting in the next collective forever
        if not trainer.strategy.broadcast(prune, src=0):
            return
        message = f"trial {self.trial_number} pruned at epoch {trainer.current_epoch}"
        if trainer.is_global_zero:
            epoch = trainer.current_epoch
            record = {"trial": self.trial_number, "epoch": epoch, "metric": self.metric, "value": value}
            (self.output_dir / PRUNED_FILE).write_text(json.dumps(record, indent=2) + "\n")
            log.info("%s: %s=%.4f", message, self.metric, value)
        raise optuna.TrialPruned(message)

    def _metric(self, trainer: L.Trainer) -> float:
        """The monitored metric of this validation, or an error naming the metrics there are."""
        if self.metric not in trainer.callback_metrics:
            raise ConfigError(
                f"sweep.metric: {self.metric!r} is not logged; choose one of "
                f"{sorted(trainer.callback_metrics)}"
            )
        return float(trainer.callback_metrics[self.metric])


def pruning_overrides(sweep: DictConfig, sweep_dir: Path, number: int) -> list[str]:
    """The callback that reports every epoch to this trial and stops the run when the pruner says so."""
    args: dict[str, Any] = {
        "_target_": "bcd.tuning.pruning.OptunaPruning",
        "storage": storage_url(sweep.storage, sweep_dir),
        "study_name": sweep.study_name,
        "trial_number": number,
        "metric": sweep.metric,
        "pruner": sweep.pruner,
        "pruner_args": OmegaConf.to_container(sweep.pruner_args) if sweep.pruner_args else None,
    }
    prefix = "+callbacks.optuna_pruning"
    return [*(f"{prefix}.{key}={hydra_value(value)}" for key, value in args.items()),
            f"{prefix}.output_dir=${{paths.output_dir}}"]


def trial_in_subprocess(overrides: Sequence[str], run_dir: Path, forwarding: SigtermForwarding) -> RunSummary:
    """A sweep trial as `python -m bcd.train` (bcd.launch.train_in_subprocess): one its pruner stopped (the
    pruned.json it wrote) is pruned, not failed."""
    try:
        return train_in_subprocess(overrides, run_dir, forwarding)
    except RuntimeError:
        if not (run_dir / PRUNED_FILE).exists():
            raise
        pruned = load_stored_json(run_dir / PRUNED_FILE, "a trial's pruned.json")
        raise optuna.TrialPruned(f"pruned: {pruned}") from None
