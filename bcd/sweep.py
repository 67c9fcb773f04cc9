"""Search hyperparameters with Optuna: `python -m bcd.sweep sweep=<space> [sweep.key=value] [train args]`.

Every trial is a normal bcd run in <sweep dir>/trials/<number>/, on the split the whole study shares
(<sweep dir>/split_manifest.csv). The study lives in <sweep dir>/study.db (or sweep.storage, which workers on
many machines can share), so rerunning the same command resumes it. A trial with trainer.devices>1 trains in
a `python -m bcd.train` subprocess, where Lightning's DDP launcher works.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf

from bcd.config.checks import check_config
from bcd.config.files import compose
from bcd.data.plan import plan_split
from bcd.data.spec import dataset_config
from bcd.launch import SigtermForwarding, TrainingInterrupted
from bcd.runs.run_dir import check_outside_data, data_folder
from bcd.runs.summary import RunSummary
from bcd.train import train
from bcd.tuning.pruning import pruning_overrides, trial_in_subprocess
from bcd.tuning.study import (
    FINISHED,
    StopAfterFailures,
    isolated,
    log_trial,
    n_finished,
    n_wanted,
    new_trial_dir,
    open_study,
    queue_grid_points,
    search_space,
    suggest,
)
from bcd.utils.errors import ConfigError
from bcd.utils.overrides import hydra_value, override_key

log = logging.getLogger(__name__)

SWEEP_KEYS = ("sweep", "report")


def compose_overrides(argv: Sequence[str]) -> tuple[DictConfig, list[str]]:
    """Split the command line into the sweep config (sweep=, sweep.*, report=) and every trial's overrides."""
    sweep_overrides = [arg for arg in argv if override_key(arg).split(".")[0] in SWEEP_KEYS]
    train_overrides = [arg for arg in argv if arg not in sweep_overrides]
    return compose("sweep", sweep_overrides), train_overrides


def compose_train(overrides: Sequence[str]) -> DictConfig:
    """The training config that `python -m bcd.train <overrides>` would run."""
    return compose("train", overrides)


def run_sweep(cfg: DictConfig, train_overrides: Sequence[str]) -> optuna.Study:
    """Optimise until sweep.n_trials trials are COMPLETE or PRUNED (or sweep.timeout); report if asked."""
    sweep = cfg.sweep
    sweep_dir = Path(sweep.dir).resolve()
    check_outside_data(sweep_dir, data_folder(compose_train(train_overrides).dataset), key="sweep.dir")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    space = search_space(sweep.params, sweep.sampler)
    for arg in train_overrides:
        if override_key(arg) in space:
            key = override_key(arg)
            raise ConfigError(f"sweep.params.{key} is searched: drop {arg} from the command line "
                              f"(or stop searching it: ~sweep.params.{key})")
    study = open_study(sweep, space, sweep_dir)
    wanted = n_wanted(sweep.n_trials, space, sweep.sampler)
    log.info("study %s: %d of %d trials done (%s)", sweep.study_name, n_finished(study), wanted, sweep_dir)
    if wanted > n_finished(study):
        if sweep.sampler == "grid":
            queue_grid_points(study, space)
        split = shared_split(sweep_dir, train_overrides)
        base = [*train_overrides, f"dataset.split_manifest={hydra_value(str(split))}"]
        stop = StopAfterFailures()
        with SigtermForwarding() as forwarding:
            study.optimize(
                lambda trial: run_trial(trial, sweep, space, sweep_dir, base, forwarding),
                timeout=sweep.timeout,
                catch=(Exception,),
                callbacks=[optuna.study.MaxTrialsCallback(wanted, states=FINISHED), log_trial, stop],
            )
        if stop.tripped:
            raise RuntimeError(f"{stop.limit} trials in a row failed; see the errors above and {sweep_dir}")
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        best = study.best_trial
        log.info("best trial %d: %s=%.4f %s", best.number, sweep.metric, best.value, best.params)
    if cfg.report:
        from bcd.reporting.sweep_report import write_sweep_report

        log.info("sweep report: %s", write_sweep_report(study, sweep_dir, sweep.metric, sweep.direction))
    return study


def shared_split(sweep_dir: Path, train_overrides: Sequence[str]) -> Path:
    """The split all trials use: dataset.split_manifest when given, else one written once to the sweep dir."""
    cfg = compose_train([*train_overrides, f"paths.output_dir={hydra_value(str(sweep_dir))}"])
    check_config(cfg)
    if cfg.dataset.split_manifest:
        return Path(cfg.dataset.split_manifest)
    path = sweep_dir / "split_manifest.csv"
    if not path.exists():
        split = plan_split(dataset_config(OmegaConf.to_container(cfg.dataset, resolve=True)), cfg.task.name, cfg.seed)
        # written aside and moved into place, so a worker never reads another's half-written file
        with tempfile.TemporaryDirectory(dir=sweep_dir) as scratch:
            split.write(Path(scratch))
            os.replace(Path(scratch) / "split_manifest.csv", path)
    return path


def run_trial(trial: optuna.Trial, sweep: DictConfig, space: dict, sweep_dir: Path, base: list[str],
              forwarding: SigtermForwarding) -> float:
    """One bcd run with the trial's params; returns its last-epoch sweep.metric and records its results (a SIGTERM
    stops it, records it as FAIL and ends the sweep: TrainingInterrupted)."""
    started = time.time()
    run_dir = new_trial_dir(sweep_dir, trial.number)
    trial.set_user_attr("run_dir", str(run_dir))
    try:
        params = suggest(trial, space, sweep.sampler)
        overrides = [*base, *(f"{key}={hydra_value(value)}" for key, value in params.items())]
        overrides += pruning_overrides(sweep, sweep_dir, trial.number)
        cfg = compose_train([*overrides, f"paths.output_dir={hydra_value(str(run_dir))}"])
        if cfg.logger and cfg.logger.get("wandb"):  # one W&B run per trial, grouped by study
            overrides += [f"logger.wandb.group={hydra_value(sweep.study_name)}",
                          f"logger.wandb.name=trial-{trial.number}"]
            cfg = compose_train([*overrides, f"paths.output_dir={hydra_value(str(run_dir))}"])
        if isolated(cfg, sweep.isolate_trials):
            summary = trial_in_subprocess(overrides, run_dir, forwarding)
        else:
            summary = train_in_process(cfg, forwarding)
        value = summary.final_metric(sweep.metric, "sweep.metric")
    except optuna.TrialPruned:
        raise
    except TrainingInterrupted as error:
        trial.set_user_attr("error", f"interrupted by {error}")
        raise
    except Exception as error:
        trial.set_user_attr("error", repr(error))
        raise
    finally:
        trial.set_user_attr("duration_s", round(time.time() - started, 1))
    trial.set_user_attr("n_params", summary.n_params)
    for key in ("micro_batch", "accumulate", "predicted_peak_bytes", "measured_peak_bytes"):  # its memory plan
        trial.set_user_attr(key, summary.memory.get(key))
    trial.set_user_attr("train_images_per_s", summary.train_images_per_s)
    for key, test_value in summary.metrics.test.items():
        if key.count("/") == 1:  # test/macro_f1 -> test_macro_f1; per-class metrics stay in summary.json
            trial.set_user_attr(key.replace("/", "_"), test_value)
    return value


def train_in_process(cfg: DictConfig, forwarding: SigtermForwarding) -> RunSummary:
    """bcd.train in this process (one device, no isolation asked); Lightning's SIGTERM handling stops it (exit 143)."""
    forwarding.in_process_run = True
    try:
        return train(cfg)
    except SystemExit as stop:
        if stop.code == 128 + signal.SIGTERM:
            raise TrainingInterrupted("SIGTERM: the trial stopped at its next step") from None
        raise
    finally:
        forwarding.in_process_run = False


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point; SIGTERM ends the sweep with exit code 143 after stopping the running trial."""
    cfg, train_overrides = compose_overrides(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # log_trial replaces Optuna's per-trial line
    try:
        run_sweep(cfg, train_overrides)
    except TrainingInterrupted as error:
        log.error("interrupted (%s); the running trial is recorded as FAIL in study %s; rerun the same command to "
                  "resume the study", error, cfg.sweep.study_name)
        raise SystemExit(128 + signal.SIGTERM) from None


if __name__ == "__main__":
    main()
