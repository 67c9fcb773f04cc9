"""The Optuna side of a sweep (storage, sampler, pruner, search space as overrides) and where trials run."""

from __future__ import annotations

import itertools
import logging
import math
import reprlib
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from bcd.launch import on_one_device
from bcd.utils.devices import device_of
from bcd.utils.errors import ConfigError

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PARAM_TYPES = ("categorical", "float", "int")
# a sweep whose every trial fails (a wrong dataset.root, a broken override) would otherwise loop forever
MAX_CONSECUTIVE_FAILURES = 10


STORAGE_ATTEMPTS = 5



def storage_url(storage: str | None, sweep_dir: Path) -> str:
    """The study's SQLAlchemy URL: sweep.storage, or a SQLite file in the sweep dir."""
    return storage or f"sqlite:///{(sweep_dir / 'study.db').resolve()}"


def make_storage(url: str, heartbeat_s: int | None = None) -> optuna.storages.RDBStorage:
    """An RDB storage; with heartbeat_s, trials of a killed worker are failed after 2 x heartbeat_s."""
    # SQLite's default 5 s lock timeout is too short for several workers sharing one file
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    heartbeat = {"heartbeat_interval": heartbeat_s, "grace_period": 2 * heartbeat_s} if heartbeat_s else {}
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, and exactly what we need
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        except sqlalchemy.exc.IntegrityError:
            # workers started together on a fresh database race to create Optuna's tables (a duplicate
            # "alembic_version" type on PostgreSQL); the loser finds them there on its next try
            if attempt == STORAGE_ATTEMPTS - 1:
                raise
            log.info("another worker is creating the study's tables; trying again")
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def make_pruner(name: str, args: Mapping[str, Any] | None = None) -> optuna.pruners.BasePruner:
    """sweep.pruner (median | hyperband | none) with sweep.pruner_args as keyword arguments."""
    pruners = {
        "median": optuna.pruners.MedianPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }
    if name not in pruners:
        raise ConfigError(f"sweep.pruner: {name!r} is not one of {sorted(pruners)}")
    return pruners[name](**dict(args or {}))


def make_sampler(name: str, params: dict[str, dict], seed: int) -> optuna.samplers.BaseSampler:
    """sweep.sampler (tpe | random | grid); grid searches every combination of the params' choices."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        # the grid points are queued by queue_grid_points; the sampler only serves a point queued twice
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"sweep.sampler: {name!r} is not one of ['grid', 'random', 'tpe']")


def queue_grid_points(study: optuna.Study, space: dict[str, dict]) -> int:
    """Queue every grid point that no trial has finished, is running or waits for; returns how many.

    Optuna's GridSampler counts a FAIL trial's point as visited, so a point whose worker was killed would
    never be run again; queueing the missing points on every (re)run resumes a grid to its full size.
    """
    optuna.storages.fail_stale_trials(study)  # a killed worker's trial must count as failed, not running
    keys = list(space)
    taken = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
            taken.append(trial.params)
        elif trial.state == TrialState.WAITING:
            taken.append(trial.system_attrs.get("fixed_params", {}))
    queued = 0
    for combination in itertools.product(*(space[key]["choices"] for key in keys)):
        point = dict(zip(keys, combination, strict=True))
        if point not in taken:
            study.enqueue_trial(point)
            queued += 1
    return queued


def search_space(params: DictConfig | Mapping, sampler: str) -> dict[str, dict]:
    """sweep.params as {override key: spec}, nested keys joined by dots; fails on a spec that cannot work."""
    plain = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else dict(params)
    space = _flatten(plain)
    if not space:
        raise ConfigError("sweep.params is empty: choose a search space with sweep=<name> (conf/sweep/)")
    for key, spec in space.items():
        where = f"sweep.params.{key}"
        if spec["type"] not in PARAM_TYPES:
            raise ConfigError(f"{where}.type: {spec['type']!r} is not one of {list(PARAM_TYPES)}")
        if spec["type"] == "categorical" and not spec.get("choices"):
            raise ConfigError(f"{where}: a categorical param needs a non-empty choices list")
        if sampler == "grid" and not spec.get("choices"):
            raise ConfigError(f"{where}: sweep.sampler=grid needs choices for every param; add choices")
        if spec["type"] != "categorical" and sampler != "grid":
            if "low" not in spec or "high" not in spec:
                raise ConfigError(f"{where}: a {spec['type']} param needs low and high, or type: categorical")
            try:
                _range(spec)
            except ValueError as error:  # low > high, log with low <= 0, log with a step
                raise ConfigError(f"{where}: {error}") from error
    return space


def _range(spec: dict) -> optuna.distributions.FloatDistribution | optuna.distributions.IntDistribution:
    """The Optuna distribution of a float or int spec, which suggest draws from (Optuna checks the range)."""
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if spec["type"] == "float":
        return optuna.distributions.FloatDistribution(low, high, log=log, step=spec.get("step"))
    return optuna.distributions.IntDistribution(low, high, log=log, step=spec.get("step") or 1)


def _flatten(node: dict, prefix: str = "") -> dict[str, dict]:
    """Walk nested dicts down to the specs (the dicts with a `type`)."""
    space = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if not isinstance(value, dict):
            raise ConfigError(f"sweep.params.{name}: expected a spec {{type: categorical, choices: [...]}}")
        space.update({name: value} if "type" in value else _flatten(value, f"{name}."))
    return space


def suggest(trial: optuna.Trial, space: dict[str, dict], sampler: str) -> dict[str, Any]:
    """The trial's value for every param (from the choices under grid, else from the spec's range).

    A queued trial (enqueue_trial, the grid) or a resumed one takes its values from the study database, which
    anyone who can write the file can edit; every value is checked against the search space before it can
    become a Hydra override, so a crafted one (a dict with a _target_, a string with more overrides) never
    reaches bcd.train.
    """
    values = {}
    for key, spec in space.items():
        try:
            value = _suggest_one(trial, key, spec, sampler)
        except ValueError as error:  # Optuna refused a queued value outright (e.g. not one of the choices)
            raise _database_value_error(trial, key, str(error)) from error
        problem = _why_not_allowed(value, spec, sampler)
        if problem:
            raise _database_value_error(trial, key, f"{reprlib.repr(value)} {problem}")
        values[key] = value
    return values


def _suggest_one(trial: optuna.Trial, key: str, spec: dict, sampler: str) -> Any:
    if spec["type"] == "categorical" or sampler == "grid":
        return trial.suggest_categorical(key, list(spec["choices"]))
    space = _range(spec)
    if isinstance(space, optuna.distributions.FloatDistribution):
        return trial.suggest_float(key, space.low, space.high, log=space.log, step=space.step)
    return trial.suggest_int(key, space.low, space.high, log=space.log, step=space.step)


def _why_not_allowed(value: Any, spec: dict, sampler: str) -> str | None:
    """Why the search space does not allow `value` for a param with this spec, or None when it does."""
    if not isinstance(value, str | int | float | bool):
        return f"is a {type(value).__name__}, not a str, int, float or bool"
    if spec["type"] == "categorical" or sampler == "grid":
        # compared with its type too: True == 1 and 1 == 1.0, but each writes a different override
        if not any(type(value) is type(choice) and value == choice for choice in spec["choices"]):
            return f"is not one of the choices {list(spec['choices'])}"
        return None
    wanted = int if spec["type"] == "int" else int | float
    if isinstance(value, bool) or not isinstance(value, wanted):
        return f"is not a number of type {spec['type']}"
    if not spec["low"] <= value <= spec["high"]:
        return f"is outside [{spec['low']}, {spec['high']}]"
    return None


def _database_value_error(trial: optuna.Trial, key: str, problem: str) -> ConfigError:
    """The error for a value from the study database, naming the study, its storage and the param."""
    storage = getattr(trial.storage, "_backend", trial.storage)  # Optuna wraps an RDBStorage in a cache
    url = getattr(storage, "url", None)
    # a PostgreSQL URL may carry a password, which has no place in logs and trials.csv
    where = sqlalchemy.engine.make_url(url).render_as_string() if url else type(storage).__name__
    return ConfigError(
        f"study {trial.study.study_name!r} in {where}, trial {trial.number}, param {key}: {problem}. The study "
        f"database holds a value the search space (sweep.params.{key}) does not allow, so the trial is not run; "
        "check who edited the database, or start a fresh study (sweep.study_name=... or sweep.storage=...)"
    )


def open_study(sweep: DictConfig, space: dict[str, dict], sweep_dir: Path) -> optuna.Study:
    """Create the study, or load it to resume, with the sweep's storage, sampler and pruner."""
    storage = make_storage(storage_url(sweep.storage, sweep_dir), sweep.heartbeat_s)
    study = optuna.create_study(
        study_name=sweep.study_name,
        storage=storage,
        pruner=make_pruner(sweep.pruner, sweep.pruner_args),
        direction=sweep.direction,
        load_if_exists=True,
    )
    # a resumed study must not replay the seed's first draws, which earlier trials already used
    study.sampler = make_sampler(sweep.sampler, space, sweep.seed + len(study.trials))
    return study


def n_finished(study: optuna.Study) -> int:
    """Trials that count towards sweep.n_trials: COMPLETE and PRUNED."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def n_wanted(n_trials: int, space: dict[str, dict], sampler: str) -> int:
    """sweep.n_trials, capped at the grid's size under grid (so a rerun never repeats a grid point)."""
    if sampler != "grid":
        return n_trials
    return min(n_trials, math.prod(len(spec["choices"]) for spec in space.values()))


def log_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """One line per finished trial: number, state, value, params (and the error of a failed one)."""
    error = f" error={trial.user_attrs.get('error')}" if trial.state == TrialState.FAIL else ""
    value = f"{trial.value:.4f}" if trial.value is not None else "-"
    log.info("trial %d %s value=%s params=%s%s", trial.number, trial.state.name, value, trial.params, error)


class StopAfterFailures:
    """An optimize callback that stops the study after MAX_CONSECUTIVE_FAILURES failed trials in a row."""

    def __init__(self, limit: int = MAX_CONSECUTIVE_FAILURES) -> None:
        self.limit = limit
        self.failures = 0
        self.tripped = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL else 0
        if self.failures >= self.limit:
            self.tripped = True
            study.stop()


def new_trial_dir(sweep_dir: Path, number: int) -> Path:
    """<sweep dir>/trials/<number>, or <number>-retry<k> when a killed attempt left that dir behind."""
    run_dir, retry = sweep_dir / "trials" / str(number), 0
    while run_dir.exists():
        retry += 1
        run_dir = sweep_dir / "trials" / f"{number}-retry{retry}"
    run_dir.mkdir(parents=True)
    return run_dir


def isolated(cfg: DictConfig, isolate: str | bool) -> bool:
    """Whether a sweep trial trains in a process of its own: always for DDP (its launcher needs one), and with
    sweep.isolate_trials=auto on the CPU, where running out of memory is the kernel killing the process, which
    must not take the sweep's worker with it (on a GPU, out-of-memory is an exception the trial records)."""
    if not on_one_device(cfg):
        return True
    if isolate == "auto":
        return not device_of(cfg.trainer.accelerator).startswith("cuda")
    if not isinstance(isolate, bool):
        raise ConfigError(f"sweep.isolate_trials: {isolate!r} is not one of [auto, true, false]")
    return isolate


