"""`python -m bcd.sweep`: Optuna studies of bcd runs that share a split, record failures, resume and prune."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from bcd.sweep import compose_overrides, compose_train, run_sweep
from bcd.tuning.study import (
    make_storage,
    new_trial_dir,
    open_study,
    search_space,
    storage_url,
    suggest,
)
from bcd.utils.errors import ConfigError
from bcd.utils.overrides import hydra_value
from tests.helpers.cli import run_cli
from tests.helpers.configs import tiny_overrides

DROP_RATE_SPACE = ["~sweep.params", "+sweep.params={model:{drop_rate:{type:float,low:0.0,high:0.3}}}"]
SPACE = search_space(
    {
        "loss": {"type": "categorical", "choices": ["ce", "focal"]},
        "optimizer": {"lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}},
        "dataset": {"batch_size": {"type": "int", "low": 8, "high": 64}},
    },
    "tpe",
)
GRID = search_space({"trainer": {"accumulate_grad_batches": {"type": "int", "choices": [1, 2]}}}, "grid")


def sweep_args(synthetic_cache: Path, sweep_dir: Path, *args: str) -> list[str]:
    """A tiny sweep's command line: the tiny training overrides, 2 epochs, the sweep in sweep_dir, trials in this
    process (a test of isolation asks for it: sweep.isolate_trials=true; a fresh process per trial costs ~10 s)."""
    train = [*tiny_overrides(synthetic_cache), "trainer.max_epochs=2", "callbacks.early_stopping=null"]
    return [*train, f"sweep.dir={sweep_dir}", "sweep.isolate_trials=false", *args]


def stop_heartbeat(sweep_dir: Path, trial: optuna.Trial) -> None:
    """What a killed worker leaves behind: its trial's last heartbeat, an hour old (no waiting for it to go stale)."""
    storage = make_storage(storage_url(None, sweep_dir), heartbeat_s=1)
    storage.record_heartbeat(trial._trial_id)
    with sqlite3.connect(sweep_dir / "study.db") as db:
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-1 hour') WHERE trial_id = ?",
                   (trial._trial_id,))


def run(synthetic_cache: Path, sweep_dir: Path, *args: str) -> optuna.Study:
    """Run a tiny sweep in this process, as `python -m bcd.sweep <args>` would."""
    return run_sweep(*compose_overrides(sweep_args(synthetic_cache, sweep_dir, *args)))


def states(study: optuna.Study) -> list[str]:
    """The trials' states in trial-number order."""
    return [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]


def test_compose_overrides_splits_sweep_and_train_args() -> None:
    argv = ["sweep=losses", "sweep.n_trials=3", "report=true", "dataset=taleqani_all", "dataset.root=/data/x",
            "sweep.pruner_args={n_startup_trials:2}", "model.img_size=64", "trainer.max_epochs=3"]
    cfg, train = compose_overrides(argv)
    assert train == [
        "dataset=taleqani_all", "dataset.root=/data/x", "model.img_size=64", "trainer.max_epochs=3"
    ]
    assert (cfg.sweep.name, cfg.sweep.study_name, cfg.sweep.n_trials) == ("losses", "losses", 3)
    assert cfg.report is True
    assert cfg.sweep.pruner_args == {"n_startup_trials": 2}
    assert cfg.sweep.dir.endswith("outputs/sweep/losses")
    assert set(search_space(cfg.sweep.params, "tpe")) == {"loss", "optimizer.weight_decay"}


def test_search_space_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"sweep.params.model.drop_rate: sweep.sampler=grid needs choices"):
        search_space({"model": {"drop_rate": {"type": "float", "low": 0.0, "high": 0.3}}}, "grid")
    with pytest.raises(ConfigError, match=r"sweep.params.loss.type: 'choice'"):
        search_space({"loss": {"type": "choice", "choices": ["ce"]}}, "tpe")
    cfg, _ = compose_overrides(["sweep=lr_aug", "sweep.sampler=grid"])
    assert set(search_space(cfg.sweep.params, "grid")) == {
        "optimizer.lr", "optimizer.weight_decay", "augmentation", "dataset.batch_size"
    }


def queued_trial(sweep_dir: Path, params: dict) -> optuna.Trial:
    """The trial a worker gets next from the study in sweep_dir/study.db after `params` were queued there."""
    storage = make_storage(storage_url(None, sweep_dir))
    study = optuna.create_study(study_name="crafted", storage=storage, load_if_exists=True)
    study.enqueue_trial(params)
    return study.ask()


def test_suggest_returns_the_queued_values_the_space_allows(tmp_path: Path) -> None:
    queued = {"loss": "focal", "optimizer.lr": 1e-3, "dataset.batch_size": 32}
    assert suggest(queued_trial(tmp_path, queued), SPACE, "tpe") == queued
    sampled = suggest(queued_trial(tmp_path, {}), SPACE, "tpe")
    assert sampled["loss"] in ("ce", "focal") and 1e-5 <= sampled["optimizer.lr"] <= 1e-2
    assert type(sampled["dataset.batch_size"]) is int and 8 <= sampled["dataset.batch_size"] <= 64
    assert suggest(queued_trial(tmp_path, {"trainer.accumulate_grad_batches": 2}), GRID, "grid") == {
        "trainer.accumulate_grad_batches": 2
    }


@pytest.mark.parametrize(
    ("space", "sampler", "key", "crafted"),
    [
        (SPACE, "tpe", "loss", {"_target_": "os.system", "command": "touch pwned"}),
        (SPACE, "tpe", "loss", "ce,+callbacks.evil._target_=os.system"),
        (SPACE, "tpe", "loss", ["ce", "focal"]),
        (SPACE, "tpe", "optimizer.lr", "1e-3"),  # a number's text, which Optuna would pass on as a string
        (SPACE, "tpe", "optimizer.lr", 0.5),  # above high: Optuna only warns
        (SPACE, "tpe", "optimizer.lr", {"_target_": "os.system"}),
        (SPACE, "tpe", "dataset.batch_size", 4096),
        (GRID, "grid", "trainer.accumulate_grad_batches", True),  # Optuna takes True for the choice 1
        (GRID, "grid", "trainer.accumulate_grad_batches", 3),
    ],
)
@pytest.mark.filterwarnings("ignore:Fixed parameter")  # Optuna's own warning for a value out of range
def test_suggest_refuses_a_value_the_study_database_should_not_hold(
    tmp_path: Path, space: dict, sampler: str, key: str, crafted: object
) -> None:
    with pytest.raises(ConfigError, match="study database holds a value the search space") as refused:
        suggest(queued_trial(tmp_path, {key: crafted}), space, sampler)
    assert f"study 'crafted' in sqlite:///{tmp_path}/study.db, trial 0, param {key}:" in str(refused.value)
    assert f"(sweep.params.{key}) does not allow" in str(refused.value)


def test_hydra_value_writes_a_string_choice_as_one_string() -> None:
    texts = [
        "a,b", "{_target_: os.system}", "[ce,focal]", "x,+callbacks.evil._target_=os.system",
        "${oc.env:HOME}", "\\${oc.env:HOME}", "it's a back\\slash\\", "123", "null", "True", "efficientnet_b1",
    ]  # fmt: skip
    assert hydra_value("a,b") == "'a,b'" and hydra_value("efficientnet_b1") == "efficientnet_b1"
    cfg = compose_train([f"+probe.text{i}={hydra_value(text)}" for i, text in enumerate(texts)])
    composed = [cfg.probe[f"text{i}"] for i in range(len(texts))]
    assert composed == texts and all(type(value) is str for value in composed)


def test_a_trial_never_reuses_a_dir_a_killed_attempt_left(tmp_path: Path) -> None:
    (tmp_path / "trials" / "5").mkdir(parents=True)
    assert new_trial_dir(tmp_path, 5) == tmp_path / "trials" / "5-retry1"
    assert new_trial_dir(tmp_path, 5) == tmp_path / "trials" / "5-retry2"
    assert new_trial_dir(tmp_path, 6) == tmp_path / "trials" / "6"


def test_trials_are_bcd_runs_on_one_shared_split(synthetic_cache: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    study = run(synthetic_cache, sweep_dir, *DROP_RATE_SPACE, "sweep.n_trials=3", "report=true")
    assert states(study) == ["COMPLETE"] * 3
    report = (sweep_dir / "sweep.md").read_text()
    assert f"**Trial #{study.best_trial.number}**" in report
    assert len((sweep_dir / "trials.csv").read_text().strip().splitlines()) == 4
    assert (sweep_dir / "history.png").is_file()
    shared = (sweep_dir / "split_manifest.csv").read_text()
    for trial in study.trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir == sweep_dir / "trials" / str(trial.number)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert trial.value == summary["metrics"]["final"]["val/macro_f1"]
        assert trial.user_attrs["test_macro_f1"] == summary["metrics"]["test"]["test/macro_f1"]
        assert trial.user_attrs["n_params"] == summary["n_params"] and trial.user_attrs["duration_s"] > 0
        assert (run_dir / "split_manifest.csv").read_text() == shared
        assert f"split_manifest: {sweep_dir}/split_manifest.csv" in (run_dir / "config.yaml").read_text()
        assert sorted(trial.intermediate_values) == [0, 1]  # the pruning callback reported every epoch


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(synthetic_cache: Path, tmp_path: Path) -> None:
    # the random sampler with seed 0 draws bce first, which a multiclass task refuses
    space = ["~sweep.params", "+sweep.params={loss:{type:categorical,choices:[ce,bce]}}",
             "sweep.sampler=random"]
    study = run(synthetic_cache, tmp_path / "sweep", *space, "sweep.n_trials=1")
    assert states(study) == ["FAIL", "COMPLETE"]
    failed, done = sorted(study.trials, key=lambda t: t.number)
    assert failed.params == {"loss": "bce"} and "loss=bce needs task=binary" in failed.user_attrs["error"]
    assert done.params == {"loss": "ce"}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # our ask() plays the killed worker
def test_rerun_resumes_the_study_and_fails_a_killed_workers_trial(
    synthetic_cache: Path, tmp_path: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    args = [*DROP_RATE_SPACE, "sweep.heartbeat_s=1"]
    run(synthetic_cache, sweep_dir, *args, "sweep.n_trials=2")
    # a worker that started trial 2 and was killed: its heartbeat stops
    storage = make_storage(storage_url(None, sweep_dir), heartbeat_s=1)
    stop_heartbeat(sweep_dir, optuna.load_study(study_name="backbones", storage=storage).ask())
    study = run(synthetic_cache, sweep_dir, *args, "sweep.n_trials=3")
    assert states(study) == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert sorted(p.name for p in (sweep_dir / "trials").iterdir()) == ["0", "1", "3"]


def test_a_trial_worse_than_the_median_is_pruned(synthetic_cache: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    args = ["~sweep.params", "+sweep.params={optimizer:{lr:{type:categorical,choices:[0.0]}}}",
            "sweep.pruner_args={n_startup_trials:1,n_warmup_steps:0}", "sweep.n_trials=2"]
    cfg, _ = compose_overrides(sweep_args(synthetic_cache, sweep_dir, *args))
    sweep_dir.mkdir()
    # an earlier perfect trial: a run that cannot learn (lr=0) falls below it after its first epoch
    reference = open_study(cfg.sweep, search_space(cfg.sweep.params, "tpe"), sweep_dir)
    reference.add_trial(optuna.trial.create_trial(
        params={"optimizer.lr": 0.0}, distributions={"optimizer.lr": CategoricalDistribution([0.0])},
        value=1.0, intermediate_values={0: 1.0, 1: 1.0},
    ))
    study = run(synthetic_cache, sweep_dir, *args)
    assert states(study) == ["COMPLETE", "PRUNED"]
    pruned = study.trials[1]
    run_dir = Path(pruned.user_attrs["run_dir"])
    assert json.loads((run_dir / "pruned.json").read_text())["epoch"] == 0
    assert list(pruned.intermediate_values) == [0] and not (run_dir / "summary.json").exists()


@pytest.mark.slow
def test_sweep_command_line_trains_a_ddp_trial_in_a_subprocess(synthetic_cache: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    args = sweep_args(synthetic_cache, sweep_dir, *DROP_RATE_SPACE, "sweep.n_trials=1")
    args = [a for a in args if not a.startswith("trainer.max_epochs=")]
    result = run_cli(["bcd.sweep", *args, "trainer.max_epochs=1", "trainer.devices=2"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trial 0 COMPLETE" in result.stderr
    run_dir = sweep_dir / "trials" / "0"
    assert "Starting with 2 processes" in (run_dir / "subprocess.log").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    study = optuna.load_study(study_name="backbones", storage=storage_url(None, sweep_dir))
    assert study.trials[0].value == summary["metrics"]["final"]["val/macro_f1"]
    assert study.trials[0].state == TrialState.COMPLETE


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(synthetic_cache: Path, tmp_path: Path) -> None:
    """Two `python -m bcd.sweep` processes on one PostgreSQL study: the trial count adds up, no duplicates."""
    import os
    import subprocess
    import sys
    import uuid

    url = os.environ.get("BCD_POSTGRES_URL")
    if not url:
        pytest.skip("no PostgreSQL server: set BCD_POSTGRES_URL (.ci/run starts one with .ci/postgres.sh)")
    study_name = f"two-workers-{uuid.uuid4().hex[:8]}"
    common = sweep_args(
        synthetic_cache, tmp_path / "sweep", *DROP_RATE_SPACE, "sweep.sampler=random", "sweep.n_trials=4",
        f"sweep.storage={url}", f"sweep.study_name={study_name}", "trainer.max_epochs=1",
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workers = [
        subprocess.Popen([sys.executable, "-m", "bcd.sweep", *common, f"sweep.seed={seed}"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for seed in (1, 2)
    ]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    study = optuna.load_study(study_name=study_name, storage=url)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) >= 4
    # both workers did some of the work
    assert all("trial " in output for output in outputs)


def test_a_grid_point_whose_worker_was_killed_is_run_again(synthetic_cache: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    grid = ["~sweep.params", "+sweep.params={model:{drop_rate:{type:categorical,choices:[0.0,0.2]}}}",
            "sweep.sampler=grid", "sweep.heartbeat_s=1"]
    run(synthetic_cache, sweep_dir, *grid, "sweep.n_trials=1")
    # a worker takes the other grid point and is killed: its heartbeat stops
    storage = make_storage(storage_url(None, sweep_dir), heartbeat_s=1)
    killed = optuna.load_study(study_name="backbones", storage=storage).ask()
    killed.suggest_categorical("model.drop_rate", [0.0, 0.2])
    stop_heartbeat(sweep_dir, killed)
    study = run(synthetic_cache, sweep_dir, *grid, "sweep.n_trials=2")
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["model.drop_rate"] for t in finished) == [0.0, 0.2]
    assert [t.params for t in study.trials if t.state == TrialState.FAIL] == [killed.params]


def test_a_worker_that_loses_the_race_to_create_the_tables_tries_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two workers on a fresh PostgreSQL database: one gets a duplicate-key error creating Optuna's tables."""
    import sqlalchemy.exc

    from bcd.tuning import study as study_module

    real, calls = optuna.storages.RDBStorage, []

    def racing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError("CREATE TABLE alembic_version", {}, Exception("duplicate key"))
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(study_module.time, "sleep", lambda seconds: None)
    storage = study_module.make_storage(f"sqlite:///{tmp_path / 'study.db'}")
    assert isinstance(storage, real) and len(calls) == 2


@pytest.mark.slow
def test_a_trial_killed_by_a_signal_is_recorded_and_the_sweep_goes_on(synthetic_cache: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU trials run in processes of their own: the kernel killing one (as its out-of-memory killer does)
    leaves the sweep's worker alive, the trial FAIL with the reason, and the next trial runs."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # the trials import tests.helpers
    kill = ["+callbacks.kill._target_=tests.helpers.crash.SigkillWhenDropRate", "+callbacks.kill.drop_rate=0.1"]
    study = run(synthetic_cache, tmp_path / "sweep", *kill, "sweep=losses", "sweep.sampler=grid", "sweep.n_trials=2",
                "~sweep.params", "+sweep.params={model:{drop_rate:{type:categorical,choices:[0.1,0.2]}}}",
                "report=true", "sweep.isolate_trials=auto")  # auto: isolated on the CPU
    by_rate = {t.params["model.drop_rate"]: t for t in study.trials}
    killed, survived = by_rate[0.1], by_rate[0.2]
    assert killed.state.name == "FAIL" and "killed by SIGKILL (out of memory?)" in killed.user_attrs["error"]
    assert survived.state.name == "COMPLETE" and survived.user_attrs["micro_batch"] == 8
    report = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "killed by SIGKILL (out of memory?)" in report and "| 8 x 1 |" in report


@pytest.mark.slow
def test_a_trial_that_cannot_fit_one_image_fails_with_the_reason_and_the_next_runs(synthetic_cache: Path,
                                                                                   tmp_path: Path) -> None:
    """A budget too small for a micro-batch of 1 ends that trial (FAIL, with why) before its first step; the sweep
    goes on to the next grid point, whose plan is in the report."""
    study = run(synthetic_cache, tmp_path / "sweep", "micro_batch=auto", "trainer.max_epochs=1", "sweep=losses",
                "sweep.sampler=grid",
                "sweep.n_trials=2", "~sweep.params",
                "+sweep.params={trainer:{memory_budget:{type:categorical,choices:[0.001,16.0]}}}", "report=true")
    by_budget = {t.params["trainer.memory_budget"]: t for t in study.trials}
    starved, fed = by_budget[0.001], by_budget[16.0]
    assert starved.state.name == "FAIL" and "even a micro-batch of 1 needs about" in starved.user_attrs["error"]
    assert fed.state.name == "COMPLETE" and fed.user_attrs["micro_batch"] == 8  # the whole batch of tiny_overrides
    assert fed.user_attrs["predicted_peak_bytes"] > 0 and fed.user_attrs["measured_peak_bytes"] > 0
    report = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "even a micro-batch of 1" in report and "| 8 x 1 |" in report and " GiB / " in report
