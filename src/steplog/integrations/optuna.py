"""An Optuna study callback backed by steplog (``steplog[optuna]``).

::

    from steplog.integrations.optuna import SteplogCallback

    with SteplogCallback(steplog.JsonlBackend("runs"), experiment_name="search") as callback:
        study.optimize(objective, n_trials=200, callbacks=[callback])
    run = steplog.read_run(callback.run_path)

One study is one run, and its step is the trial number. Its config: the study's name,
directions, sampler and pruner (and, with ``study_user_attrs=True``, the study's user
attributes). Each finished trial (complete, pruned or failed) is one record at
``step=trial.number``: ``{"trial": number, "state": "COMPLETE", "value": ...,
"params": {...}, "distributions": {...}, "user_attrs": {...}, "duration": seconds}``.
The objective's value is named by ``metric_name`` (``value_0``, ``value_1``, … for a
multi-objective study); a trial without values (pruned, failed) has none. Leaving the
``with`` block (or :meth:`finish`) ends the run with the study's summary: trial counts
by state and, when a trial completed, the best value, params and trial number. An
exception in the block ends it ``"failed"`` (``"interrupted"`` for Ctrl-C).

Intermediate values at high frequency, from inside an objective::

    def objective(trial):
        for step in range(10_000):
            loss = ...
            callback.log_intermediate(trial, {"loss": loss}, step=step)
        return loss

records ``{"trial": number, "trial_step": step, "loss": loss}`` in the same run, at the
trial's step too, at steplog's cost (about a microsecond, tensors as they are), where
``trial.report()`` writes to the study's storage every time.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from .._extras import require
from ..backends.base import Backend
from ..events import RunStats, RunStatus
from ..tracker import Tracker, _status_for
from ._host import TrackerHost

__all__ = ["SteplogCallback"]

_optuna = require("optuna", "optuna", "steplog.integrations.optuna")

DEFAULT_EXPERIMENT_NAME = "optuna"

#: The keys of a trial record that a metric name may not take.
_TRIAL_KEYS = frozenset({"trial", "state", "params", "distributions", "user_attrs", "duration"})


class SteplogCallback(TrackerHost):
    """A callback for ``study.optimize(..., callbacks=[callback])`` that records each
    trial in a steplog run, at the trial's number as its step.

    Args:
        *backends: steplog backends (default: JSONL under ``runs/``).
        experiment_name: The steplog experiment.
        experiment_config: Config merged under the study's description.
        metric_name: The name of the objective's value in a trial record; for a
            multi-objective study, one name per objective, or one name that is
            numbered (``value_0``, ``value_1``, …).
        trial_user_attrs: Record each trial's user attributes
            (``trial.set_user_attr``) as its ``"user_attrs"``.
        study_user_attrs: Record the study's user attributes as ``"study_user_attrs"``
            in the config (as they are when the run starts) and in the summary (as they
            are when it ends).
        **options: Passed on to :class:`steplog.Tracker`.

    Raises:
        TypeError: ``metric_name`` is not a string or a sequence of strings.
        ValueError: ``metric_name`` is empty, repeats a name, or takes the name of a
            trial record's own key (``"trial"``, ``"params"``, …). A list of names
            whose length is not the study's number of objectives raises
            :class:`ValueError` when the callback first sees the study.

    Attributes:
        tracker: The underlying :class:`steplog.Tracker`.
        study: The study seen last (by a trial or :meth:`log_intermediate`).
    """

    def __init__(
        self,
        *backends: Backend,
        experiment_name: str = DEFAULT_EXPERIMENT_NAME,
        experiment_config: Mapping[str, Any] | None = None,
        metric_name: str | Sequence[str] = "value",
        trial_user_attrs: bool = True,
        study_user_attrs: bool = False,
        **options: Any,
    ) -> None:
        self._metric_names = _metric_names(metric_name)
        self._numbered = isinstance(metric_name, str)
        self._trial_user_attrs = trial_user_attrs
        self._study_user_attrs = study_user_attrs
        self._host(
            backends,
            experiment_name=experiment_name,
            experiment_config=experiment_config,
            options=options,
        )
        self.study: Any = None
        self._names: tuple[str, ...] = ()  # the value names of the study seen last
        self._starting = threading.Lock()  # study.optimize(n_jobs=k) calls from k threads

    def __call__(self, study: Any, trial: Any) -> None:
        """Record the finished ``trial`` (an ``optuna.trial.FrozenTrial``).

        Raises:
            ValueError: ``metric_name`` names more or fewer values than the study has
                objectives.
        """
        tracker = self._ensure_started(study)
        record: dict[str, Any] = {"trial": trial.number, "state": trial.state.name}
        if trial.values is not None:  # None: pruned, failed
            record.update(zip(self._names, trial.values, strict=True))
        record["params"] = dict(trial.params)
        # As MLflowCallback records them: what each param was drawn from, readable.
        record["distributions"] = {k: str(d) for k, d in trial.distributions.items()}
        if self._trial_user_attrs and trial.user_attrs:
            record["user_attrs"] = dict(trial.user_attrs)
        duration = trial.duration
        record["duration"] = duration.total_seconds() if duration is not None else None
        tracker.log(record, step=trial.number)

    def log_intermediate(
        self, trial: Any, data: Mapping[str, Any], *, step: int | None = None
    ) -> None:
        """Record values from inside an objective, at the trial's number as the step.

        Args:
            trial: The ``optuna.Trial`` being run.
            data: Names mapped to values (tensors and arrays as they are).
            step: The step within the trial, recorded as ``"trial_step"``.

        Raises:
            TypeError: ``data`` is not a mapping.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a mapping, not {type(data).__name__}")
        tracker = self._ensure_started(trial.study)
        record = {"trial": trial.number, **data}
        if step is not None:
            record["trial_step"] = step
        tracker.log(record, step=trial.number)

    def finish(self, study: Any = None, *, status: RunStatus = "finished") -> RunStats | None:
        """End the run with the summary of ``study`` (default: the study seen last).

        Returns:
            The run's statistics, or ``None`` if no trial was recorded.
        """
        if not self.tracker.active:
            return None
        study = study if study is not None else self.study
        if study is None:
            return self.tracker.finish(None, status=status)
        summary = _summary(study)
        if self._study_user_attrs:
            summary["study_user_attrs"] = dict(study.user_attrs)
        return self.tracker.finish(summary, status=status)

    def __enter__(self) -> SteplogCallback:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(status="finished" if exc is None else _status_for(exc))

    def _ensure_started(self, study: Any) -> Tracker:
        tracker = self.tracker
        if study is self.study and tracker.active:
            return tracker
        with self._starting:
            if study is not self.study or not tracker.active:
                names = self._value_names(len(study.directions))  # before any run starts
                if tracker.active:  # another study: its own run
                    self.finish()
                self.study = study
                self._names = names
                config = _config(study)
                if self._study_user_attrs:
                    config["study_user_attrs"] = dict(study.user_attrs)
                tracker.init(config)
        return tracker

    def _value_names(self, objectives: int) -> tuple[str, ...]:
        """The names of a study's values: ``metric_name``, numbered if it is one name
        for several objectives (as MLflowCallback and WeightsAndBiasesCallback do)."""
        names = self._metric_names
        if self._numbered:
            name = names[0]
            return (name,) if objectives == 1 else tuple(f"{name}_{i}" for i in range(objectives))
        if len(names) != objectives:
            raise ValueError(
                f"metric_name has {len(names)} name{'s' if len(names) != 1 else ''} for a "
                f"study with {objectives} objective{'s' if objectives != 1 else ''}: give one "
                "name per objective, or a single name to number (value_0, value_1, …)"
            )
        return names


def _metric_names(metric_name: str | Sequence[str]) -> tuple[str, ...]:
    """``metric_name`` as a tuple of names, checked."""
    if isinstance(metric_name, str):
        names: tuple[Any, ...] = (metric_name,)
    elif isinstance(metric_name, Sequence):
        names = tuple(metric_name)
    else:
        raise TypeError(
            f"metric_name must be a string or a sequence of strings, not "
            f"{type(metric_name).__name__}"
        )
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"metric_name must hold strings, not {type(name).__name__}")
        if not name:
            raise ValueError("metric_name must not be empty")
        if name in _TRIAL_KEYS:
            raise ValueError(f"metric_name {name!r} is a key of the trial record itself")
    if not names:
        raise ValueError("metric_name must name at least one value")
    if len(set(names)) < len(names):
        raise ValueError(f"metric_name repeats a name: {list(names)}")
    return names


def _config(study: Any) -> dict[str, Any]:
    return {
        "study_name": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "sampler": type(study.sampler).__name__,
        "pruner": type(study.pruner).__name__,
    }


def _summary(study: Any) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    summary: dict[str, Any] = {"n_trials": len(trials), "states": dict(states)}
    if not states.get("COMPLETE"):
        return summary
    if len(study.directions) > 1:
        summary["best_trials"] = [t.number for t in study.best_trials]
        return summary
    best = study.best_trial
    summary.update(best_value=best.value, best_params=dict(best.params), best_trial=best.number)
    return summary
