"""A Lightning logger backed by steplog (``steplog[lightning]``).

::

    from steplog.integrations.lightning import SteplogLogger

    logger = SteplogLogger(steplog.JsonlBackend("runs"), experiment_name="mlp")
    trainer = lightning.pytorch.Trainer(logger=logger, max_steps=1_000)
    trainer.fit(model)
    run = steplog.read_run(logger.run_path)

How Lightning drives a logger, and what steplog does with it:

* The run starts when Lightning hands over the hyperparameters (``log_hyperparams``,
  at the start of every ``fit``/``validate``/``test``; the module's and datamodule's
  ``save_hyperparameters()``, merged over ``experiment_config``, become the run's
  config), or at the first ``log_metrics`` or ``logger.experiment.log`` if that comes
  first. Lightning asks for ``version`` before that (``ModelCheckpoint`` puts its
  files under ``save_dir/name/version``): the logger draws the run id up front, so
  ``version`` is the id the run file gets, ``<save_dir>/<name>/<version>.jsonl``.
* ``log_metrics(metrics, step)`` → ``log(metrics, step=step)``.
* ``finalize(status)`` → ``finish(status=...)``: Lightning's ``"success"`` and
  ``"finished"`` are ``"finished"``; ``"failed"`` is ``"failed"``, or ``"interrupted"``
  when the exception being handled is a ``KeyboardInterrupt`` (Lightning 2.x calls
  ``finalize("failed")`` for Ctrl-C too, from inside its ``except`` block); any other
  string is ``"interrupted"``.
* DDP: only global rank zero writes. ``log_metrics``, ``log_hyperparams`` and
  ``finalize`` do nothing on other ranks, and ``experiment`` is Lightning's no-op
  stand-in there, so ``self.logger.experiment.log(...)`` is safe on every rank.

The fast path for per-step tensors: ``self.log("loss", loss)`` makes Lightning call
``.item()`` on every logged tensor at every logging step (a device sync on a GPU).
``self.logger.experiment.log({"loss": loss})`` hands the tensors to steplog as they
are; its writer reads them back a batch at a time (see docs/integrations.md and the
figures in docs/benchmarks.md).
"""

from __future__ import annotations

import sys
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._extras import require
from .._names import new_run_id
from ..backends.base import Backend
from ..events import RunStatus
from ..tracker import Tracker
from ._host import TrackerHost

__all__ = ["SteplogLogger"]

_loggers = require("lightning.pytorch.loggers", "lightning", "steplog.integrations.lightning")
_rank_zero = require(
    "lightning.pytorch.utilities.rank_zero", "lightning", "steplog.integrations.lightning"
)
_fabric_logger = require(
    "lightning.fabric.loggers.logger", "lightning", "steplog.integrations.lightning"
)
Logger = _loggers.Logger
rank_zero_only = _rank_zero.rank_zero_only
rank_zero_experiment = _fabric_logger.rank_zero_experiment

DEFAULT_EXPERIMENT_NAME = "lightning"

#: Lightning's ``finalize`` statuses → steplog run statuses (others: "interrupted").
_STATUSES: dict[str, RunStatus] = {
    "success": "finished",
    "finished": "finished",
    "failed": "failed",
}


class _Experiment:
    """``logger.experiment``: the tracker, with a ``log`` that starts the run first.

    The first ``log`` call starts the run if Lightning has not yet; after that, ``log``
    is the tracker's own bound method (no extra call on the hot path) until the run
    ends. Every other attribute is the tracker's (``flush``, ``summary``, ...).
    """

    def __init__(self, logger: SteplogLogger) -> None:
        self._logger = logger

    def log(self, data: Mapping[str, Any], *, step: int | None = None) -> None:
        """Start the run if needed, then log as :meth:`steplog.Tracker.log`."""
        tracker = self._logger._ensure_started()
        self.__dict__["log"] = tracker.log
        tracker.log(data, step=step)

    def _reset(self) -> None:
        self.__dict__.pop("log", None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger.tracker, name)

    def __repr__(self) -> str:
        return f"<steplog experiment of {self._logger.tracker!r}>"


class SteplogLogger(TrackerHost, Logger):  # type: ignore[misc,valid-type]
    """A ``lightning.pytorch.loggers.Logger`` that writes through a :class:`steplog.Tracker`.

    Works next to other loggers (``Trainer(logger=[SteplogLogger(...), CSVLogger(...)])``)
    and under DDP (rank zero writes).

    Args:
        *backends: steplog backends (default: JSONL under ``runs/``).
        experiment_name: The steplog experiment, and Lightning's ``name``.
        experiment_config: Config merged under the hyperparameters of every run.
        **options: Passed on to :class:`steplog.Tracker` (``buffer_size``,
            ``flush_interval``, ``overflow``, ...).

    Attributes:
        tracker: The underlying :class:`steplog.Tracker`.
    """

    def __init__(
        self,
        *backends: Backend,
        experiment_name: str = DEFAULT_EXPERIMENT_NAME,
        experiment_config: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self._host(
            backends,
            experiment_name=experiment_name,
            experiment_config=experiment_config,
            options=options,
        )
        self._experiment = _Experiment(self)
        self._run_id = new_run_id()
        self._started = False  # the run of ``_run_id`` has been started

    # -- what Lightning asks ----------------------------------------------------

    @property
    def name(self) -> str:
        """The steplog experiment name."""
        return self.tracker.experiment_name

    @property
    def version(self) -> str:
        """The run id: of the active run, or of the run the next start will open."""
        return self._run_id

    @property
    def save_dir(self) -> str | None:
        """The first JSONL backend's root (run files are ``save_dir/name/version.jsonl``)."""
        jsonl = self._jsonl
        return str(jsonl.root) if jsonl is not None else None

    @property
    def root_dir(self) -> str | None:
        """``save_dir/name``: the experiment's directory of run files."""
        save_dir = self.save_dir
        return str(Path(save_dir) / self.name) if save_dir is not None else None

    @property
    @rank_zero_experiment  # type: ignore[untyped-decorator]
    def experiment(self) -> _Experiment:
        """The run's tracker (``logger.experiment.log({...})``); a no-op off rank zero."""
        return self._experiment

    @rank_zero_only  # type: ignore[untyped-decorator]
    def log_hyperparams(
        self, params: Mapping[str, Any] | Namespace | None, *args: Any, **kwargs: Any
    ) -> None:
        """Start the run with ``params`` (merged over ``experiment_config``) as its config.

        If the run has started already (metrics came first), the parameters are kept in
        its summary under ``"hparams"`` instead, since the config is written at the start.
        """
        if isinstance(params, Namespace):
            params = vars(params)
        config = dict(params or {})
        if self.tracker.active:
            if config:
                self.tracker.summary.setdefault("hparams", {}).update(config)
            return
        self._ensure_started(config)

    @rank_zero_only  # type: ignore[untyped-decorator]
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log ``metrics`` at ``step`` (starting the run if needed)."""
        self._ensure_started().log(metrics, step=step)

    @rank_zero_only  # type: ignore[untyped-decorator]
    def finalize(self, status: str) -> None:
        """Finish the run with the steplog status matching Lightning's ``status``."""
        if not self.tracker.active:
            return
        mapped = _STATUSES.get(status, "interrupted")
        if mapped == "failed" and isinstance(sys.exc_info()[1], KeyboardInterrupt):
            mapped = "interrupted"
        self._experiment._reset()
        self.tracker.finish(status=mapped)

    # -- helpers ----------------------------------------------------------------

    def _ensure_started(self, config: Mapping[str, Any] | None = None) -> Tracker:
        tracker = self.tracker
        if not tracker.active:
            if self._started:  # a new fit/test with the same logger: a new run
                self._run_id = new_run_id()
            tracker._next_run_id = self._run_id
            tracker.init(config)
            self._started = True
        return tracker

    def __getstate__(self) -> dict[str, Any]:
        # Lightning deep-copies or pickles loggers in some strategies (ddp_spawn): the
        # tracker (threads, locks) does not travel; the copy gets a fresh one.
        raise TypeError(
            "SteplogLogger cannot be pickled; use strategy='ddp' (not 'ddp_spawn') "
            "or create the logger in the worker process"
        )
