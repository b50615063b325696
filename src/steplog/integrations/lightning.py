"""A Lightning logger backed by steplog (``steplog[lightning]``).

::

    from steplog.integrations.lightning import SteplogLogger

    logger = SteplogLogger(save_dir="runs", name="mlp")
    trainer = lightning.pytorch.Trainer(logger=logger, max_steps=1_000)
    trainer.fit(model)
    run = steplog.read_run(logger.run_path)

How Lightning drives a logger, and what steplog does with it:

* ``save_dir``, ``name`` and ``version`` mean what they mean for Lightning's own
  loggers: where runs go (the JSONL root), the experiment, and the run id. The run file
  is ``<save_dir>/<name>/<version>.jsonl``; ``ModelCheckpoint`` puts its files under
  ``<save_dir>/<name>/<version>/checkpoints``. Lightning asks for ``version`` before the
  run can start, so the id is decided up front: a new one, the ``version=`` given, or
  the run ``resume=`` names.
* The run starts when Lightning hands over the hyperparameters (``log_hyperparams``,
  at the start of every ``fit``/``validate``/``test``; the module's and datamodule's
  ``save_hyperparameters()``, merged over ``experiment_config``, become the run's
  config), or at the first ``log_metrics`` or ``logger.experiment.log`` if that comes
  first. If ``version`` names a run that exists, or ``resume=`` names one, that run is
  continued (``Tracker.init(resume=...)``): ``trainer.fit(model, ckpt_path=...)`` after
  a crash goes on in the same run file, and the steps Lightning replays between its
  checkpoint and where the crashed run stopped are skipped (the file has them).
* ``log_metrics(metrics, step)`` → ``log(metrics, step=step)``, each key after
  ``prefix`` and ``LOGGER_JOIN_CHAR`` when a prefix is given.
* ``finalize(status)`` → ``finish(status=...)``: Lightning's ``"success"`` and
  ``"finished"`` are ``"finished"``; ``"failed"`` is ``"failed"``, or ``"interrupted"``
  when the exception being handled is a ``KeyboardInterrupt`` (Lightning 2.x calls
  ``finalize("failed")`` for Ctrl-C too, from inside its ``except`` block); any other
  string is ``"interrupted"``.
* DDP: only global rank zero writes. ``log_metrics``, ``log_hyperparams`` and
  ``finalize`` do nothing on other ranks, and ``experiment`` is Lightning's no-op
  stand-in there, so ``self.logger.experiment.log(...)`` is safe on every rank.
* Pickling (``strategy="ddp_spawn"``, a pickled ``Trainer``): the logger travels as its
  configuration (backends, options, its version); the copy makes its own tracker, and
  its run starts where it is first used, on rank zero.

The fast path for per-step tensors: ``self.log("loss", loss)`` makes Lightning call
``.item()`` on every logged tensor at every logging step (a device sync on a GPU).
``self.logger.experiment.log({"loss": loss})`` hands the tensors to steplog as they
are; its writer reads them back a batch at a time (see docs/integrations.md and the
figures in docs/benchmarks.md).
"""

from __future__ import annotations

import inspect
import os
import pickle
import sys
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from .._extras import require
from .._names import check_name, new_run_id
from ..backends.base import Backend, backend_name
from ..backends.jsonl import JsonlBackend
from ..events import RunStatus
from ..tracker import Tracker
from ._host import TrackerHost

__all__ = ["DEFAULT_EXPERIMENT_NAME", "REPLAYED_KEY", "SteplogLogger"]

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

#: The experiment when no ``name`` is given: Lightning's loggers' default.
DEFAULT_EXPERIMENT_NAME = "lightning_logs"

#: Lightning's ``finalize`` statuses → steplog run statuses (others: "interrupted").
_STATUSES: dict[str, RunStatus] = {
    "success": "finished",
    "finished": "finished",
    "failed": "failed",
}

#: The summary key counting the logs skipped as replays after a resume.
REPLAYED_KEY = "steplog_replayed_logs_skipped"

#: What the id of the next run is: a new one (drawn here: replaced if it is taken by
#: then), the ``version=`` given (continued if its file exists), or a run to continue.
_IdKind = Literal["new", "given", "resume"]

#: The options SteplogLogger passes on to steplog.Tracker.
_TRACKER_OPTIONS = frozenset(
    name
    for name, parameter in inspect.signature(Tracker).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
) - {"experiment_name", "experiment_config"}


class _Experiment:
    """``logger.experiment``: the tracker, with a ``log`` that starts the run first.

    The first ``log`` call starts the run if Lightning has not yet; after that, ``log``
    is the tracker's own bound method (no extra call on the hot path) until the run
    ends. After a resume, calls at steps the run file already has (Lightning replays
    the steps between its checkpoint and where the run stopped) are skipped until the
    first new step. Every other attribute is the tracker's (``flush``, ``summary``, ...).
    """

    def __init__(self, logger: SteplogLogger) -> None:
        self._logger = logger

    def log(self, data: Mapping[str, Any], step: int | None = None) -> None:
        """Start the run if needed, then log as :meth:`steplog.Tracker.log` (``step``
        by position too)."""
        logger = self._logger
        tracker = logger._ensure_started()
        if logger._replayed_step(step):
            return
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

    Works next to other loggers (``Trainer(logger=[SteplogLogger(...), CSVLogger(...)])``),
    under DDP (rank zero writes) and ``ddp_spawn`` (it pickles as its configuration).

    Args:
        *backends: steplog backends (default: JSONL under ``save_dir``).
        save_dir: Where runs go: the JSONL root (a :class:`steplog.JsonlBackend` writing
            there is added unless one is given, which must write there too). Default:
            the given JSONL backend's root, else ``$STEPLOG_ROOT``, else ``runs``.
        name: The experiment (``experiment_name`` is the same, in steplog's words).
        version: The run id. A run of that id under ``save_dir/name`` is continued
            (as ``Tracker.init(resume=version)`` does); otherwise the run starts with
            that id. Default: a new id, drawn now; each later run of the logger (a
            second ``fit``, a ``test``) gets a new one.
        resume: Continue a run: its id, or ``"latest"`` (the experiment's most recently
            started run of this rank unless it finished, else a new run: the same
            script for the first start and every restart, as ``Tracker.init``).
        prefix: Put before every key ``log_metrics`` gets, joined by
            ``LOGGER_JOIN_CHAR`` (``experiment.log`` is steplog's own: no prefix).
        experiment_name: The same as ``name``.
        experiment_config: Config merged under the hyperparameters of every run.
        **options: Passed on to :class:`steplog.Tracker` (``buffer_size``,
            ``flush_interval``, ``overflow``, ``durability``, ...).

    Raises:
        TypeError: A positional argument is not a backend, an option is unknown, or
            one has the wrong type.
        ValueError: An option has a wrong value, or ``save_dir`` disagrees with the
            JSONL backend given, or ``version`` with ``resume``.

    Attributes:
        tracker: The underlying :class:`steplog.Tracker`.
    """

    #: What joins ``prefix`` and a metric's name, as in Lightning's own loggers.
    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        *backends: Backend,
        save_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
        version: str | None = None,
        resume: str | None = None,
        prefix: str = "",
        experiment_name: str | None = None,
        experiment_config: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        backends = _with_save_dir(backends, save_dir)
        name = _experiment(name, experiment_name)
        for key in options:
            if key not in _TRACKER_OPTIONS:
                raise TypeError(
                    f"SteplogLogger got an unexpected keyword argument {key!r} (its options "
                    "are save_dir, name, version, resume, prefix, experiment_config and "
                    f"steplog.Tracker's: {', '.join(sorted(_TRACKER_OPTIONS))})"
                )
        _check("version", version)
        _check("resume", resume)
        if version is not None and resume is not None and version != resume:
            raise ValueError(
                f"SteplogLogger: version={version!r} and resume={resume!r} name different "
                "runs; pass one (version= continues its run if it exists)"
            )
        if not isinstance(prefix, str):
            raise TypeError(f"SteplogLogger: prefix must be a str, not {type(prefix).__name__}")
        try:
            self._host(
                backends,
                experiment_name=name,
                experiment_config=experiment_config,
                options=options,
            )
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"SteplogLogger: {exc}") from None
        #: What a copy needs to make its own tracker (see ``__setstate__``).
        self._tracker_options: dict[str, Any] = {
            "experiment_name": name,
            "experiment_config": self.tracker.experiment_config,
            **options,
        }
        self._prefix = prefix
        # Both given (and equal): resume=, which requires the run to be there.
        self._version = version if resume is None else None
        self._resume = resume
        self._experiment = _Experiment(self)
        #: The id of the run this logger started last (``None``: none yet).
        self._run_id: str | None = None
        #: The id the next run takes, once decided (``None``: decided at the start).
        self._next_id: str | None = None
        self._next_kind: _IdKind = "new"
        #: After a resume: the first step the run file does not have yet; in a fit
        #: restored from a checkpoint, logs at steps before it are Lightning's
        #: replays, skipped and counted.
        self._first_new_step = 0
        self._replayed = 0
        #: Whether the stage under way is a fit restored from a checkpoint (see
        #: :meth:`log_graph`); other stages (a test, a fit from scratch) replay nothing.
        self._restored_fit = False
        self._decide()

    # -- what Lightning asks ----------------------------------------------------

    @property
    def name(self) -> str:
        """The steplog experiment name."""
        return self.tracker.experiment_name

    @property
    def version(self) -> str:
        """The run id: of the run the next start opens, else of the active (or last)
        run."""
        run_id = self._next_id if self._next_id is not None else self._run_id
        assert run_id is not None  # decided when the logger is made
        return run_id

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
    def run_path(self) -> Path | None:
        """The run file of ``version``: ``save_dir/name/version.jsonl`` (of the active
        or last run; before the first, where it will be), or ``None`` without a JSONL
        backend. Under ``ddp_spawn`` the run is written by a spawned process: the file
        is there once ``fit`` returns."""
        root_dir = self.root_dir
        return Path(root_dir) / f"{self.version}.jsonl" if root_dir is not None else None

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
        """Log ``metrics`` at ``step`` (starting the run if needed), each key after
        ``prefix`` if one is set."""
        tracker = self._ensure_started()
        if self._replayed_step(step):
            return
        if self._prefix:
            join = f"{self._prefix}{self.LOGGER_JOIN_CHAR}"
            metrics = {f"{join}{key}": value for key, value in metrics.items()}
        tracker.log(metrics, step=step)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Note which stage starts (Lightning calls this at the start of every stage,
        right after ``log_hyperparams``, with the module): only a ``fit`` restored from
        a checkpoint replays steps. A ``test`` or ``validate`` continuing a run logs at
        steps of its own, which are kept whatever their number."""
        try:
            trainer = model.trainer
            self._restored_fit = trainer.state.fn == "fit" and trainer.ckpt_path is not None
        except (AttributeError, RuntimeError):  # not attached to a Trainer
            self._restored_fit = False

    @rank_zero_only  # type: ignore[untyped-decorator]
    def finalize(self, status: str) -> None:
        """Finish the run with the steplog status matching Lightning's ``status``."""
        tracker = self.tracker
        if not tracker.active:
            return
        mapped = _STATUSES.get(status, "interrupted")
        if mapped == "failed" and isinstance(sys.exc_info()[1], KeyboardInterrupt):
            mapped = "interrupted"
        if self._replayed:
            tracker.summary[REPLAYED_KEY] = tracker.summary.get(REPLAYED_KEY, 0) + self._replayed
            self._replayed = 0
        self._experiment._reset()
        self._restored_fit = False
        tracker.finish(status=mapped)

    # -- helpers ----------------------------------------------------------------

    def _decide(self) -> None:
        """Decide the id of the next run (Lightning asks for it before the run starts)."""
        if self._version is not None:
            self._next_id, self._next_kind = self._version, "given"
        elif self._resume == "latest":
            found = self.tracker._latest_run()
            if found is not None:
                self._next_id, self._next_kind = found.stem, "resume"
            else:
                self._next_id, self._next_kind = new_run_id(), "new"
        elif self._resume is not None:
            self._next_id, self._next_kind = self._resume, "resume"
        else:
            self._next_id, self._next_kind = new_run_id(), "new"

    def _taken(self, run_id: str) -> bool:
        """Whether a new id is taken: by a run of this logger, or by a run file (a copy
        of this logger wrote it: ``ddp_spawn`` runs each ``fit`` in new processes)."""
        return run_id == self._run_id or self._has_file(run_id)

    def _has_file(self, run_id: str) -> bool:
        root_dir = self.root_dir
        return root_dir is not None and (Path(root_dir) / f"{run_id}.jsonl").is_file()

    def _ensure_started(self, config: Mapping[str, Any] | None = None) -> Tracker:
        tracker = self.tracker
        if tracker.active:
            return tracker
        if self._next_id is None or (self._next_kind == "new" and self._taken(self._next_id)):
            self._decide()
        run_id = self._next_id
        assert run_id is not None
        if self._next_kind == "resume" or (self._next_kind == "given" and self._has_file(run_id)):
            info = tracker.init(config, resume=run_id)
        else:
            tracker._next_run_id = run_id
            info = tracker.init(config)
        self._run_id, self._next_id = info.run_id, None
        self._first_new_step = info.resumed.step if info.resumed is not None else 0
        self._replayed = 0
        self._experiment._reset()
        return tracker

    def _replayed_step(self, step: int | None) -> bool:
        """Whether a log at ``step`` replays a step the resumed run has: in a fit
        restored from a checkpoint, one before the run's next step (then it is counted,
        and skipped)."""
        if self._restored_fit and step is not None and step < self._first_new_step:
            self._replayed += 1
            return True
        return False

    # -- pickling ---------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # Lightning pickles its loggers with the Trainer (ddp_spawn, a pickled Trainer):
        # the logger travels as its configuration — backends, options, version — not
        # its tracker (threads, locks, an open run), which the copy makes anew.
        for backend in self.tracker.backends:
            try:
                pickle.dumps(backend)
            except Exception as exc:
                raise TypeError(
                    f"SteplogLogger cannot be pickled: its backend {backend_name(backend)!r} "
                    f"({backend!r}) does not pickle ({exc})"
                ) from exc
        state = self.__dict__.copy()
        del state["tracker"], state["_experiment"]
        state["_tracker_backends"] = list(self.tracker.backends)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        backends = state.pop("_tracker_backends")
        self.__dict__.update(state)
        self.tracker = Tracker(*backends, **self._tracker_options)
        self._experiment = _Experiment(self)
        # The original may have run this id meanwhile, or still be running it.
        if self._next_kind == "new" and self._next_id is not None and self._has_file(self._next_id):
            self._decide()


def _with_save_dir(
    backends: tuple[Backend, ...], save_dir: str | os.PathLike[str] | None
) -> tuple[Backend, ...]:
    """The backends, with a JSONL backend writing under ``save_dir`` if one is given."""
    for backend in backends:
        if not isinstance(backend, Backend):
            hint = (
                f" (for the directory runs go to, pass save_dir={os.fspath(backend)!r})"
                if isinstance(backend, (str, os.PathLike))
                else ""
            )
            raise TypeError(
                "SteplogLogger's positional arguments are steplog backends, got "
                f"{type(backend).__name__}{hint}"
            )
    if save_dir is None:
        return backends
    if not isinstance(save_dir, (str, os.PathLike)):
        raise TypeError(
            f"SteplogLogger: save_dir must be a path or None, not {type(save_dir).__name__}"
        )
    jsonl = next((b for b in backends if isinstance(b, JsonlBackend)), None)
    if jsonl is None:
        return (JsonlBackend(save_dir), *backends)
    if Path(save_dir).resolve() != jsonl.root.resolve():
        raise ValueError(
            f"SteplogLogger: save_dir={os.fspath(save_dir)!r}, but its JsonlBackend writes "
            f"under {str(jsonl.root)!r}; pass one of them"
        )
    return backends


def _experiment(name: str | None, experiment_name: str | None) -> str:
    if name is not None and experiment_name is not None and name != experiment_name:
        raise TypeError(
            f"SteplogLogger: name={name!r} and experiment_name={experiment_name!r} are the "
            "same option; pass one"
        )
    chosen = name if name is not None else experiment_name
    if chosen is None:
        return DEFAULT_EXPERIMENT_NAME
    _check("name", chosen)
    return chosen


def _check(what: str, value: str | None) -> None:
    if value is None:
        return
    try:
        check_name(value, what=what)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"SteplogLogger: {exc}") from None
