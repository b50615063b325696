"""A steplog tracker for tropt's optimizers (``steplog[tropt]``).

tropt (on PyPI) is the library steplog grew from. Its optimizers take a ``tracker=``
that subclasses ``tropt.tracker.base.BaseTracker``; :class:`SteplogTracker` is one, so
::

    from steplog.integrations.tropt import SteplogTracker

    tracker = SteplogTracker(steplog.JsonlBackend("runs"), experiment_name="gcg")
    result = SomeOptimizer(..., tracker=tracker).optimize(...)

works unchanged, with ``log()`` costing what steplog's costs and the optimizer's values
(floats, ints, strings, tensors) written by steplog's writer thread.

How tropt drives a tracker, and what steplog does with it:

* ``init(config)``: tropt's ``BaseTracker`` merges ``experiment_config`` with the
  optimizer's config (lists, nested dicts, ``None``, ``inf`` are all stored as such);
  steplog opens a run.
* ``log(data)`` without a step, a key set that may change between steps: steplog counts
  the steps.
* ``finish(summary)``: the run is finished. When an optimization raises, tropt never
  calls ``finish()``; its next ``init()`` finishes the previous run first, and steplog
  records that run's status as ``"unfinished"`` rather than ``"finished"``. If the
  process ends instead, steplog's exit hook closes it (also ``"unfinished"``).

Python 3.11: tropt 0.1.1's ``tropt.loss`` does not import there (``ValueError: mutable
default <class 'slice'> for field ... is not allowed``: two dataclass fields in
``tropt/loss/losses.py`` default to a ``slice``, which became hashable only in Python
3.12). The tracker module imports fine; to run tropt's optimizers on 3.11 see
docs/integrations.md for the workaround.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._extras import require
from ..backends.base import Backend
from ..events import RunStats, RunStatus
from ..tracker import Tracker

__all__ = ["SteplogTracker"]

_base = require("tropt.tracker.base", "tropt", "steplog.integrations.tropt")
BaseTracker = _base.BaseTracker
DEFAULT_EXPERIMENT_NAME: str = getattr(_base, "DEFAULT_EXPERIMENT_NAME", "tropt_experiment")


class SteplogTracker(BaseTracker):  # type: ignore[misc,valid-type]
    """tropt tracker backed by a :class:`steplog.Tracker`.

    Args:
        *backends: steplog backends (default: JSONL under ``runs/``).
        experiment_name: Experiment name, as in tropt.
        experiment_config: Config merged into every run, as in tropt.
        **options: Passed on to :class:`steplog.Tracker` (``buffer_size``,
            ``overflow``, ``flush_interval``, …).

    Attributes:
        tracker: The underlying :class:`steplog.Tracker`.
        last_stats: Statistics of the last finished run.
    """

    def __init__(
        self,
        *backends: Backend,
        experiment_name: str = DEFAULT_EXPERIMENT_NAME,
        experiment_config: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(experiment_name, dict(experiment_config) if experiment_config else None)
        # tropt's BaseTracker merges experiment_config itself; steplog's tracker must not
        # merge it a second time.
        self.tracker = Tracker(*backends, experiment_name=experiment_name, **options)
        self._abandoned = False

    @property
    def last_stats(self) -> RunStats | None:
        return self.tracker.last_stats

    def init(self, config: dict[str, Any] | None = None) -> None:
        # tropt's init() finishes a run left active (the optimization raised): mark it.
        self._abandoned = bool(self._active)
        super().init(config)

    def _init(self, config: dict[str, Any] | None = None) -> None:
        self.tracker.init(config)

    def _log(self, data: dict[str, Any]) -> None:
        self.tracker.log(data)

    def _finish(self, summary: dict[str, Any] | None = None) -> None:
        status: RunStatus = "unfinished" if self._abandoned else "finished"
        self._abandoned = False
        self.tracker.finish(summary, status=status)
