"""SteplogCallback in real Optuna studies."""

from __future__ import annotations

import math

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


# ── The generic contract: optuna-integration's callback tests, re-expressed ────────────
#
# The tests of optuna-integration's MLflowCallback (tests/mlflow/test_mlflow.py) and
# WeightsAndBiasesCallback (tests/wandb/test_wandb.py), asked of SteplogCallback: what
# those check in an MLflow run per trial or in W&B's log calls is checked here in the
# steplog run, read back from its file. Tests of the peers' own machinery (MLflow's
# nested runs and run names, the track_in_* decorators' wrapping, W&B's per-trial runs)
# have no counterpart, except where a steplog feature does the same job.


def peer_objective(trial) -> float:
    """The peers' objective: three params, one user attribute."""
    x = trial.suggest_float("x", -1.0, 1.0)
    y = trial.suggest_float("y", 20, 30, log=True)
    z = trial.suggest_categorical("z", (-1.0, 1.0))
    trial.set_user_attr("my_user_attr", "my_user_attr_value")
    return (x - 2) ** 2 + (y - 25) ** 2 + z


def peer_multiobjective(trial) -> tuple[float, float]:
    """The peers' two-objective function."""
    x = trial.suggest_float("x", -1.0, 1.0)
    y = trial.suggest_float("y", 20, 30, log=True)
    z = trial.suggest_categorical("z", (-1.0, 1.0))
    return (x - 2) ** 2 + (y - 25) ** 2 + z, (x - 2) ** 3 + (y - 25) ** 3 - z


def optimize(
    tmp_path,
    func=peer_objective,
    *,
    n_trials: int = 3,
    directions=("minimize",),
    enqueue=None,
    n_jobs: int = 1,
    study_attrs=None,
    **options,
):
    """Run a study of ``func`` with a SteplogCallback; the run read back, and the study."""
    study = optuna.create_study(study_name="my_study", directions=list(directions))
    for name, value in (study_attrs or {}).items():
        study.set_user_attr(name, value)
    if enqueue is not None:
        study.enqueue_trial(enqueue)
    with SteplogCallback(steplog.JsonlBackend(tmp_path), **options) as callback:
        study.optimize(func, n_trials=n_trials, callbacks=[callback], n_jobs=n_jobs)
    return steplog.read_run(callback.run_path), study


def trial_records(run):
    """The run's trial records (not log_intermediate's), by trial number."""
    return sorted((r for r in run.records if "state" in r.data), key=lambda r: r.data["trial"])


@pytest.mark.parametrize("name", [None, "foo"])
def test_contract_a_study_is_one_run_of_the_experiment_named(tmp_path, name):
    """(MLflow's test_use_existing_or_default_experiment, test_study_name; W&B's
    test_run_initialized.) A study is one run, in the experiment given (default
    "optuna"), its config naming the study; Tracker options reach the run."""
    options = {} if name is None else {"experiment_name": name}
    run, _ = optimize(tmp_path, n_trials=10, tags=["test-tag"], **options)
    assert run.experiment == (name or "optuna")
    assert run.config["study_name"] == "my_study"
    assert run.tags == ("test-tag",)
    assert [path.name for path in (tmp_path / run.experiment).glob("*.jsonl")] == [run.path.name]
    assert len(trial_records(run)) == 10


@pytest.mark.parametrize(
    ("func", "directions"),
    [(peer_objective, ["minimize"]), (peer_multiobjective, ["minimize", "maximize"])],
)
def test_contract_directions_and_states_are_recorded(tmp_path, func, directions):
    """(MLflow's test_tag_always_logged; W&B's test_attributes_set_on_epoch and
    test_multiobjective_attributes_set_on_epoch.) The study's directions are in the
    run's config and every trial record has the trial's state."""
    run, _ = optimize(tmp_path, func, directions=directions, enqueue={"x": 0.5, "y": 22.0})
    assert run.config["directions"] == directions
    assert [r.data["state"] for r in trial_records(run)] == ["COMPLETE"] * 3
    params = trial_records(run)[0].data["params"]
    assert (params["x"], params["y"]) == (0.5, 22.0)


@pytest.mark.parametrize("n_jobs", [2, 4])
def test_contract_every_trial_is_recorded_once_with_n_jobs(tmp_path, n_jobs):
    """(MLflow's test_multiple_jobs; W&B's test_log_api_call_count.) With
    study.optimize(n_jobs=k) every trial is one record, none lost or doubled."""
    run, study = optimize(tmp_path, n_trials=n_jobs * 2, n_jobs=n_jobs)
    assert [r.data["trial"] for r in trial_records(run)] == [t.number for t in study.trials]
    assert len(run.records) == n_jobs * 2


def test_contract_metric_name_names_the_value(tmp_path):
    """(MLflow's test_metric_name; W&B's test_values_registered_on_epoch.) metric_name=
    is the key of the objective's value in each trial record, instead of "value"."""
    run, study = optimize(tmp_path, metric_name="my_metric_name")
    for record, trial in zip(trial_records(run), study.trials, strict=True):
        assert record.data["my_metric_name"] == trial.value
        assert "value" not in record.data


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ("value", ["value_0", "value_1"]),
        ("foo", ["foo_0", "foo_1"]),
        (["foo", "bar"], ["foo", "bar"]),
        (("foo", "bar"), ["foo", "bar"]),
    ],
)
def test_contract_multiobjective_values_are_named(tmp_path, names, expected):
    """(MLflow's test_metric_name_multiobjective; W&B's
    test_multiobjective_values_registered_on_epoch.) A study of several objectives
    records one key per value: the names given, or the one name numbered (also the
    default, value_0, value_1)."""
    options = {} if names == "value" else {"metric_name": names}
    run, study = optimize(
        tmp_path, peer_multiobjective, directions=["minimize", "maximize"], **options
    )
    for record, trial in zip(trial_records(run), study.trials, strict=True):
        assert [record.data[name] for name in expected] == trial.values
        assert "values" not in record.data


@pytest.mark.parametrize(
    ("func", "names", "values"),
    [
        (peer_objective, ["metric"], [27.0]),
        (peer_multiobjective, ["metric1", "metric2"], [27.0, -127.0]),
    ],
)
def test_contract_values_are_recorded_exactly(tmp_path, func, names, values):
    """(MLflow's test_log_metric.) An enqueued trial's values are recorded exactly, each
    under its name."""
    run, _ = optimize(
        tmp_path,
        func,
        n_trials=1,
        directions=["minimize"] * len(names),
        enqueue={"x": 1.0, "y": 20.0, "z": 1.0},
        metric_name=names,
    )
    (record,) = trial_records(run)
    assert [record.data[name] for name in names] == values


@pytest.mark.parametrize("names", [["foo"], ["foo", "bar", "baz"]])
def test_contract_a_list_of_names_of_the_wrong_length_is_a_value_error(tmp_path, names):
    """(MLflow's and W&B's test_multiobjective_raises_on_name_mismatch.) metric_name
    listing more or fewer names than the study has objectives raises ValueError out of
    study.optimize, naming both counts; no run is started."""
    study = optuna.create_study(directions=["minimize", "maximize"])
    callback = SteplogCallback(steplog.JsonlBackend(tmp_path), metric_name=names)
    with pytest.raises(ValueError, match=f"{len(names)} names? for a study with 2 objectives"):
        study.optimize(peer_multiobjective, n_trials=1, callbacks=[callback])
    assert callback.finish() is None
    assert not list(tmp_path.rglob("*.jsonl"))


@pytest.mark.parametrize("bad", [1, None, ["foo", 2]])
def test_contract_a_metric_name_that_is_not_strings_is_a_type_error(tmp_path, bad):
    """(The peers' constructor check.) metric_name that is neither a string nor a
    sequence of strings raises TypeError when the callback is made."""
    with pytest.raises(TypeError, match=r"metric_name must (be a string|hold strings)"):
        SteplogCallback(steplog.JsonlBackend(tmp_path), metric_name=bad)


@pytest.mark.parametrize("outcome", ["pruned", "raises", "nan"])
def test_contract_a_trial_without_values_records_no_value(tmp_path, outcome):
    """(W&B's test_none_values; MLflow's test_log_metric_none.) A pruned trial, a failed
    one, and one whose objective returned NaN (failed by Optuna) record their params but
    no value key, instead of a value of null."""

    def objective(trial) -> float:
        trial.suggest_float("x", -10, 10)
        if outcome == "pruned":
            raise optuna.TrialPruned
        if outcome == "raises":
            raise ValueError("boom")
        return math.nan

    study = optuna.create_study()
    with SteplogCallback(steplog.JsonlBackend(tmp_path)) as callback:
        study.optimize(objective, n_trials=1, callbacks=[callback], catch=(ValueError,))
    (record,) = trial_records(steplog.read_run(callback.run_path))
    assert "x" in record.data["params"]
    assert "value" not in record.data
    assert record.data["state"] == ("PRUNED" if outcome == "pruned" else "FAIL")


def test_contract_params_and_their_distributions_are_recorded(tmp_path):
    """(MLflow's test_log_params.) Each trial records its params as they are, and each
    param's distribution as MLflowCallback tags it (str(distribution))."""
    run, study = optimize(
        tmp_path, n_trials=1, enqueue={"x": 1.0, "y": 20.0, "z": 1.0}, metric_name="metric"
    )
    (record,) = trial_records(run)
    assert record.data["params"] == study.best_params == {"x": 1.0, "y": 20.0, "z": 1.0}
    assert record.data["distributions"] == {
        name: str(study.best_trial.distributions[name]) for name in ("x", "y", "z")
    }
    assert record.data["distributions"]["y"].startswith("FloatDistribution(")
    assert "log=True" in record.data["distributions"]["y"]


@pytest.mark.parametrize("trial_user_attrs", [True, False, None])
def test_contract_trial_user_attrs_are_recorded_by_default(tmp_path, trial_user_attrs):
    """(MLflow's test_tag_trial_user_attrs.) A trial's user attributes are recorded as
    its "user_attrs" unless trial_user_attrs=False."""
    options = {} if trial_user_attrs is None else {"trial_user_attrs": trial_user_attrs}
    run, _ = optimize(tmp_path, **options)
    for record in trial_records(run):
        if trial_user_attrs is False:
            assert "user_attrs" not in record.data
        else:
            assert record.data["user_attrs"] == {"my_user_attr": "my_user_attr_value"}


def test_contract_a_long_user_attr_is_kept_whole(tmp_path):
    """(MLflow's test_tag_truncation, which cuts tags to MLflow's limit.) A long user
    attribute is recorded whole: the run file has no length limit to cut it to."""
    long_str = str(list(range(5000)))

    def objective(trial) -> float:
        value = peer_objective(trial)
        trial.set_user_attr("my_user_attr", long_str)
        return value

    run, _ = optimize(tmp_path, objective)
    assert [r.data["user_attrs"]["my_user_attr"] for r in trial_records(run)] == [long_str] * 3


@pytest.mark.parametrize("study_user_attrs", [True, False])
def test_contract_study_user_attrs_are_recorded_on_request(tmp_path, study_user_attrs):
    """(MLflow's test_tag_study_user_attrs.) With study_user_attrs=True the study's user
    attributes are in the run's config (as the run starts) and summary (as it ends);
    without, in neither."""
    run, _ = optimize(
        tmp_path, study_attrs={"my_study_attr": "a"}, study_user_attrs=study_user_attrs
    )
    if study_user_attrs:
        assert run.config["study_user_attrs"] == {"my_study_attr": "a"}
        assert run.summary["study_user_attrs"] == {"my_study_attr": "a"}
    else:
        assert "study_user_attrs" not in run.config
        assert "study_user_attrs" not in run.summary
    assert all("my_study_attr" not in r.data for r in run.records)


@pytest.mark.parametrize("n_jobs", [1, 2, 4])
def test_contract_trial_records_are_at_step_trial_number(tmp_path, n_jobs):
    """(W&B's test_values_registered_on_epoch and ..._with_logging, which log each
    trial at step=trial.number; MLflow's test_track_in_mlflow_decorator.) Each trial
    record's step is its trial's number, also when log_intermediate() records values
    from inside the objective; those are at their trial's step too, tagged with it."""

    def objective(trial) -> float:
        result = peer_objective(trial)
        for step in range(3):
            callback.log_intermediate(trial, {"result": result}, step=step)
        return result

    study = optuna.create_study()
    with SteplogCallback(steplog.JsonlBackend(tmp_path)) as callback:
        study.optimize(objective, n_trials=n_jobs * 2, callbacks=[callback], n_jobs=n_jobs)
    run = steplog.read_run(callback.run_path)
    assert [(r.step, r.data["trial"]) for r in trial_records(run)] == [
        (t.number, t.number) for t in study.trials
    ]
    inner = [r for r in run.records if "trial_step" in r.data]
    assert len(inner) == 3 * n_jobs * 2
    assert all(r.step == r.data["trial"] for r in inner)
    assert sorted((r.data["trial"], r.data["trial_step"]) for r in inner) == [
        (t.number, s) for t in study.trials for s in range(3)
    ]
