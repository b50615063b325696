"""An Optuna study callback backed by steplog (``steplog[optuna]``).

::

    from steplog.integrations.optuna import SteplogCallback

    with SteplogCallback(steplog.JsonlBackend("runs"), experiment_name="search") as callback:
        study.optimize(objective, n_trials=200, callbacks=[callback])
    run = steplog.read_run(callback.run_path)

One study is one run. Its config: the study's name, directions, sampler and pruner.
Each finished trial (complete, pruned or failed) is one record: ``{"trial": number,
"state": "COMPLETE", "value": ..., "params": {...}, "duration": seconds}`` (``"values"``
for a multi-objective study). Leaving the ``with`` block (or :meth:`finish`) ends the
run with the study's summary: trial counts by state and, when a trial completed, the
best value, params and trial number. An exception in the block ends it ``"failed"``
(``"interrupted"`` for Ctrl-C).

Intermediate values at high frequency, from inside an objective::

    def objective(trial):
        for step in range(10_000):
            loss = ...
            callback.log_intermediate(trial, {"loss": loss}, step=step)
        return loss

records ``{"trial": number, "trial_step": step, "loss": loss}`` in the same run at
steplog's cost (about a microsecond, tensors as they are), where ``trial.report()``
writes to the study's storage every time.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
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


class SteplogCallback(TrackerHost):
    """A callback for ``study.optimize(..., callbacks=[callback])`` that records each
    trial in a steplog run.

    Args:
        *backends: steplog backends (default: JSONL under ``runs/``).
        experiment_name: The steplog experiment.
        experiment_config: Config merged under the study's description.
        **options: Passed on to :class:`steplog.Tracker`.

    Attributes:
        tracker: The underlying :class:`steplog.Tracker`.
        study: The study seen last (by a trial or :meth:`log_intermediate`).
    """

    def __init__(
        self,
        *backends: Backend,
        experiment_name: str = DEFAULT_EXPERIMENT_NAME,
        experiment_config: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self._host(
            backends,
            experiment_name=experiment_name,
            experiment_config=experiment_config,
            options=options,
        )
        self.study: Any = None
        self._starting = threading.Lock()  # study.optimize(n_jobs=k) calls from k threads

    def __call__(self, study: Any, trial: Any) -> None:
        """Record the finished ``trial`` (an ``optuna.trial.FrozenTrial``)."""
        tracker = self._ensure_started(study)
        record: dict[str, Any] = {"trial": trial.number, "state": trial.state.name}
        if trial.values is not None and len(trial.values) > 1:
            record["values"] = list(trial.values)
        else:
            record["value"] = trial.value
        record["params"] = dict(trial.params)
        duration = trial.duration
        record["duration"] = duration.total_seconds() if duration is not None else None
        tracker.log(record)

    def log_intermediate(
        self, trial: Any, data: Mapping[str, Any], *, step: int | None = None
    ) -> None:
        """Record values from inside an objective, tagged with the trial's number.

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
        tracker.log(record)

    def finish(self, study: Any = None, *, status: RunStatus = "finished") -> RunStats | None:
        """End the run with the summary of ``study`` (default: the study seen last).

        Returns:
            The run's statistics, or ``None`` if no trial was recorded.
        """
        if not self.tracker.active:
            return None
        study = study if study is not None else self.study
        return self.tracker.finish(_summary(study) if study is not None else None, status=status)

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
                if tracker.active:  # another study: its own run
                    self.finish()
                self.study = study
                tracker.init(_config(study))
        return tracker


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
