"""A Hugging Face ``Trainer`` callback backed by steplog (``steplog[transformers]``).

::

    from steplog.integrations.transformers import SteplogCallback

    callback = SteplogCallback(steplog.JsonlBackend("runs"), experiment_name="gpt2-ft")
    trainer = Trainer(model, args, train_dataset=..., callbacks=[callback])
    trainer.train()
    trainer.evaluate()  # recorded in the same run, at the global step
    run = steplog.read_run(callback.run_path)

How the ``Trainer`` drives the callback, and what steplog does with it (on the
world's process zero only; other processes write nothing):

* ``on_train_begin``: a run starts, its config the ``TrainingArguments``
  (``args.to_dict()``, tokens masked) and the model's config under ``"model_config"``
  (int keys, such as every config's ``id2label`` has, as strings: config.json's form).
  The run id is written to ``<output_dir>/steplog_run.json``. When the training
  resumes from a checkpoint (``state.global_step > 0`` there, or
  ``args.resume_from_checkpoint``) and that file names a run, the run is continued
  (``Tracker.init(config, resume=run_id)``) rather than a new one started; so is the
  run of ``evaluate()``/``predict()`` calls made before the first ``train()``.
* ``on_log``: the logs, at ``step=state.global_step`` — the values and steps of the
  Trainer's own ``state.log_history``. After a resume, the Trainer replays the steps
  between its checkpoint and the point where the killed run stopped: logs at steps the
  run file already has are not logged again (as W&B does), so its steps keep going up
  and each is there once; the run's first values for those steps stay.
* ``on_train_end``: the run is finished, its summary the last logs (``train_loss``,
  ``train_runtime``, ...) with ``global_step``, ``best_metric`` and
  ``best_model_checkpoint``.
* ``evaluate()`` and ``predict()`` outside ``train()`` (``on_log``, ``on_predict``):
  their metrics are recorded at ``state.global_step`` in the callback's run — the one
  of its last ``train()``, else the one its first such call started — which is
  continued for them (``init(resume=run_id)``, a new segment of the run file) and
  finished again before the call returns, the metrics merged into its summary. W&B's
  callback keeps its run open after ``train()`` for them and TensorBoard's reopens its
  writer in the same directory; a steplog run stays finished between the calls, so
  ``read_run`` after ``train()`` sees a finished run and no exit hook has to end it.

The ``Trainer`` has no hook for a training that raises: such a run stays open and
steplog's exit hook ends it (``"failed"`` after an uncaught exception, otherwise
``"unfinished"``); a later ``train()`` with the same callback ends it as
``"unfinished"`` before starting its own.

``report_to="steplog"`` works once :func:`register_report_to` has been called.
"""

from __future__ import annotations

import enum
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._extras import require
from ..backends.base import Backend
from ..errors import RunFileError, RunNotFoundError
from ..events import RunInfo
from ._host import TrackerHost

__all__ = ["RUN_FILE_NAME", "SteplogCallback", "register_report_to"]

_callbacks = require(
    "transformers.trainer_callback", "transformers", "steplog.integrations.transformers"
)
TrainerCallback = _callbacks.TrainerCallback

logger = logging.getLogger("steplog")

DEFAULT_EXPERIMENT_NAME = "transformers"
#: The file in ``output_dir`` that names the run, for a resumed training to continue.
RUN_FILE_NAME = "steplog_run.json"
#: The name :func:`register_report_to` gives the callback in ``report_to``.
REPORT_TO_NAME = "steplog"

_SUMMARY_STATE = ("global_step", "best_metric", "best_model_checkpoint")


class _RunState(enum.Enum):
    """Where the callback's run stands between the Trainer's calls."""

    #: No run yet: the first train(), evaluate() or predict() starts one.
    NONE = "none"
    #: evaluate()/predict() calls, no training yet; the run is finished between the
    #: calls, and the next call or train() continues it.
    EVALUATED = "evaluated"
    #: Inside train(): the run is open (and stays open if train() raised).
    TRAINING = "training"
    #: train() ended and finished the run: evaluate()/predict() continue it, another
    #: train() starts a new run.
    TRAINED = "trained"


class SteplogCallback(TrackerHost, TrainerCallback):  # type: ignore[misc,valid-type]
    """A ``transformers.TrainerCallback`` writing the training through a :class:`steplog.Tracker`.

    Args:
        *backends: steplog backends (default: JSONL under ``runs/``).
        experiment_name: The steplog experiment.
        experiment_config: Config merged under the training arguments of every run.
        **options: Passed on to :class:`steplog.Tracker`.

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
        self._host(
            backends,
            experiment_name=experiment_name,
            experiment_config=experiment_config,
            options=options,
        )
        self._run_state = _RunState.NONE
        self._run_id: str | None = None  # the run evaluate()/predict() go to
        self._last_logs: dict[str, Any] = {}
        self._first_new_step = 0  # after a resume: the steps before are in the file
        self._replayed = 0  # logs skipped as replays of steps the file has
        self._warned_no_file = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Start (or, when resuming from a checkpoint, continue) the run."""
        if not state.is_world_process_zero:
            return
        if self.tracker.active:  # the previous train() raised: it never reached on_train_end
            self.tracker.finish(status="unfinished")
        config = _run_config(args, kwargs.get("model"))
        run_file = Path(args.output_dir) / RUN_FILE_NAME
        resuming = state.global_step > 0 or bool(args.resume_from_checkpoint)
        previous = _read_run_id(run_file) if resuming else None
        if previous is not None:
            info = self.tracker.init(config, resume=previous)
            self._first_new_step = info.resumed.step if info.resumed is not None else 0
        else:
            info = self._continue_evaluations(config)
            self._first_new_step = 0
        self._run_state = _RunState.TRAINING
        self._run_id = info.run_id
        self._last_logs = {}
        self._replayed = 0
        run_file.parent.mkdir(parents=True, exist_ok=True)
        record = {"run_id": info.run_id, "experiment": info.experiment}
        if self.run_path is not None:
            record["path"] = os.fspath(self.run_path)
        run_file.write_text(json.dumps(record) + "\n")

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Log ``logs`` at the global step (outside ``train()``: see :meth:`on_predict`)."""
        if not state.is_world_process_zero or not logs:
            return
        if self._run_state is not _RunState.TRAINING:
            self._record_outside_training(args, state, kwargs.get("model"), logs)
            return
        if not self.tracker.active:
            return
        self._last_logs.update(logs)
        if state.global_step < self._first_new_step:
            self._replayed += 1  # the Trainer replays steps the run file already has
            return
        self.tracker.log(logs, step=state.global_step)

    def on_predict(
        self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any], **kwargs: Any
    ) -> None:
        """Log ``predict()``'s metrics at the global step.

        Outside ``train()`` (here, and for ``evaluate()``'s ``on_log``), the callback's
        run is continued for them — or started, before its first run — and finished
        again, the metrics merged into its summary.
        """
        if not state.is_world_process_zero or not metrics:
            return
        if self._run_state is not _RunState.TRAINING:
            self._record_outside_training(args, state, kwargs.get("model"), metrics)
        elif self.tracker.active:
            self._last_logs.update(metrics)
            self.tracker.log(metrics, step=state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Finish the run with the last logs and the best checkpoint as its summary."""
        if not state.is_world_process_zero:
            return
        self._run_state = _RunState.TRAINED
        if not self.tracker.active:
            return
        summary = dict(self._last_logs)
        summary.update({name: getattr(state, name, None) for name in _SUMMARY_STATE})
        if self._replayed:
            summary["steplog_replayed_logs_skipped"] = self._replayed
        self.tracker.finish(summary)

    def _continue_evaluations(self, config: dict[str, Any]) -> RunInfo:
        """Continue the run of the evaluations before this training, else start one."""
        if self._run_state is _RunState.EVALUATED and self._run_id is not None:
            info = self._resume(config, self._run_id)
            if info is not None:
                return info
        return self.tracker.init(config)

    def _record_outside_training(
        self, args: Any, state: Any, model: Any, metrics: Mapping[str, Any]
    ) -> None:
        """Record an ``evaluate()``'s or ``predict()``'s metrics in the callback's run."""
        info = self._resume(None, self._run_id) if self._run_id is not None else None
        if info is None:  # no run yet (or it cannot be continued): one of evaluations
            info = self.tracker.init(_run_config(args, model))
            self._run_state = _RunState.EVALUATED
        self._run_id = info.run_id
        self.tracker.log(metrics, step=state.global_step)
        self.tracker.finish(dict(metrics))

    def _resume(self, config: dict[str, Any] | None, run_id: str) -> RunInfo | None:
        """Continue ``run_id``, or return ``None`` (with a warning) if it cannot be."""
        if self._jsonl is None:
            if not self._warned_no_file:
                self._warned_no_file = True
                logger.warning(
                    "steplog: SteplogCallback starts a new run for each evaluate() or "
                    "predict() outside train(): continuing a run needs a "
                    "steplog.JsonlBackend among its backends"
                )
            return None
        try:
            return self.tracker.init(config, resume=run_id)
        except (RunNotFoundError, RunFileError) as exc:
            logger.warning(
                "steplog: SteplogCallback cannot continue run %s (%s); starting a new run",
                run_id,
                exc,
            )
            return None


def register_report_to() -> None:
    """Make ``TrainingArguments(report_to="steplog")`` add a :class:`SteplogCallback`.

    transformers takes ``report_to`` names from a fixed table of its own integrations
    and raises ``ValueError: steplog is not supported`` for any other. It has no
    documented way to add one; this puts :class:`SteplogCallback` into that table
    (``transformers.integrations.integration_utils.INTEGRATION_TO_CALLBACK``, which
    the ``Trainer`` reads when it is made). The ``Trainer`` then makes the callback
    with no arguments: JSONL under ``$STEPLOG_ROOT`` (default ``runs/``), experiment
    ``"transformers"``; for other backends or options, pass
    ``callbacks=[SteplogCallback(...)]`` instead. ``report_to="all"`` does not include
    it (transformers lists its own). Calling this again changes nothing.

    Raises:
        RuntimeError: This transformers has no such table.
    """
    utils = require(
        "transformers.integrations.integration_utils",
        "transformers",
        "steplog.integrations.transformers",
    )
    table = getattr(utils, "INTEGRATION_TO_CALLBACK", None)
    if not isinstance(table, dict):
        raise RuntimeError(
            "this transformers has no integration table (INTEGRATION_TO_CALLBACK) to "
            "register report_to='steplog' in; pass callbacks=[SteplogCallback(...)] to "
            "the Trainer instead"
        )
    table[REPORT_TO_NAME] = SteplogCallback


def _run_config(args: Any, model: Any) -> dict[str, Any]:
    """The training arguments, and the model's config under ``"model_config"``."""
    config: dict[str, Any] = args.to_dict()
    model_config = getattr(model, "config", None)
    if isinstance(model_config, Mapping):
        config["model_config"] = _string_keys(dict(model_config))
    elif model_config is not None and hasattr(model_config, "to_dict"):
        config["model_config"] = _string_keys(model_config.to_dict())
    return config


def _string_keys(value: Any) -> Any:
    """``value`` with the int keys of its mappings as strings, as config.json has them.

    Every ``PretrainedConfig`` has ``id2label = {0: "LABEL_0", ...}``; transformers
    writes its keys as strings and turns them back into ints when it loads a config.
    A key whose string is already a key of the same mapping stays as it is.
    """
    if isinstance(value, dict):
        return {
            (str(k) if type(k) is int and str(k) not in value else k): _string_keys(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_string_keys(v) for v in value]
    return value


def _read_run_id(path: Path) -> str | None:
    try:
        run_id = json.loads(path.read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) else None
