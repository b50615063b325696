"""SteplogCallback in real Optuna studies."""

from __future__ import annotations

import pytest

import steplog

optuna = pytest.importorskip("optuna", reason="pip install 'steplog[optuna]'")
from steplog.integrations.optuna import SteplogCallback  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_int("y", -3, 3)
    return (x - 2) ** 2 + y**2


def test_a_200_trial_study_is_200_records_and_a_summary(tmp_path):
    """Each trial is one record (number, state, value, params, duration); the run's
    summary holds the study's best value, params and trial."""
    study = optuna.create_study(study_name="quad", sampler=optuna.samplers.RandomSampler(seed=0))
    with SteplogCallback(steplog.JsonlBackend(tmp_path), experiment_name="search") as callback:
        study.optimize(objective, n_trials=200, callbacks=[callback])
    run = steplog.read_run(callback.run_path)
    assert run.status == "finished"
    assert run.config == {"study_name": "quad", "directions": ["minimize"],
                          "sampler": "RandomSampler", "pruner": "MedianPruner"}  # fmt: skip
    assert [r.data["trial"] for r in run.records] == list(range(200))
    for record, trial in zip(run.records, study.trials, strict=True):
        assert record.data["value"] == trial.value
        assert record.data["params"] == trial.params
        assert record.data["state"] == "COMPLETE"
        assert record.data["duration"] == pytest.approx(trial.duration.total_seconds())
    assert run.summary["best_value"] == study.best_value
    assert run.summary["best_params"] == study.best_params
    assert run.summary["best_trial"] == study.best_trial.number
    assert run.summary["n_trials"] == 200 and run.summary["states"] == {"COMPLETE": 200}


def test_intermediate_values_and_pruned_and_failed_trials(tmp_path):
    """log_intermediate records values tagged with the trial and its step, between the
    trial records; pruned and failed trials are recorded with their state."""

    def stepwise(trial) -> float:
        if trial.number == 3:
            raise ValueError("diverged")
        for step in range(50):
            callback.log_intermediate(trial, {"loss": 1.0 / (step + 1)}, step=step)
        if trial.number == 2:
            raise optuna.TrialPruned
        return float(trial.number)

    study = optuna.create_study()
    with SteplogCallback(steplog.JsonlBackend(tmp_path)) as callback:
        study.optimize(stepwise, n_trials=5, callbacks=[callback], catch=(ValueError,))
    run = steplog.read_run(callback.run_path)
    trials = [r.data for r in run.records if "state" in r.data]
    assert [(t["trial"], t["state"]) for t in trials] == [
        (0, "COMPLETE"), (1, "COMPLETE"), (2, "PRUNED"), (3, "FAIL"), (4, "COMPLETE")
    ]  # fmt: skip
    inner = [r.data for r in run.records if "trial_step" in r.data]
    assert len(inner) == 4 * 50
    assert inner[:2] == [{"trial": 0, "loss": 1.0, "trial_step": 0},
                         {"trial": 0, "loss": 0.5, "trial_step": 1}]  # fmt: skip
    assert run.summary["states"] == {"COMPLETE": 3, "PRUNED": 1, "FAIL": 1}
    assert run.summary["best_value"] == 0.0


def test_a_study_that_raises_ends_the_run_failed(tmp_path):
    """An exception out of study.optimize inside the block ends the run "failed"."""

    def broken(trial) -> float:
        if trial.number == 2:
            raise RuntimeError("boom")
        return 1.0

    study = optuna.create_study()
    with pytest.raises(RuntimeError), SteplogCallback(steplog.JsonlBackend(tmp_path)) as callback:
        study.optimize(broken, n_trials=5, callbacks=[callback])
    run = steplog.read_run(callback.run_path)
    assert run.status == "failed"
    assert run.summary["states"]["COMPLETE"] == 2


def test_log_intermediate_rejects_a_non_mapping(tmp_path):
    """log_intermediate with a bare number raises TypeError at the call."""
    study = optuna.create_study()
    callback = SteplogCallback(steplog.JsonlBackend(tmp_path))
    with pytest.raises(TypeError, match="mapping"):
        callback.log_intermediate(study.ask(), 0.5)  # type: ignore[arg-type]
    assert callback.finish() is None
