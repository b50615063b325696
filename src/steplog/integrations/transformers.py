"""A Hugging Face ``Trainer`` callback backed by steplog (``steplog[transformers]``).

::

    from steplog.integrations.transformers import SteplogCallback

    callback = SteplogCallback(steplog.JsonlBackend("runs"), experiment_name="gpt2-ft")
    trainer = Trainer(model, args, train_dataset=..., callbacks=[callback])
    trainer.train()
    run = steplog.read_run(callback.run_path)

How the ``Trainer`` drives the callback, and what steplog does with it (on the
world's process zero only; other processes write nothing):

* ``on_train_begin``: a run starts, its config the ``TrainingArguments``
  (``args.to_dict()``, tokens masked) and the model's config under ``"model_config"``
  (int keys, such as every config's ``id2label`` has, as strings: config.json's form).
  The run id is written to ``<output_dir>/steplog_run.json``. When the training
  resumes from a checkpoint (``state.global_step > 0`` there, or
  ``args.resume_from_checkpoint``) and that file names a run, the run is continued
  (``Tracker.init(config, resume=run_id)``) rather than a new one started.
* ``on_log``: the logs, at ``step=state.global_step`` — the values and steps of the
  Trainer's own ``state.log_history``. After a resume, the Trainer replays the steps
  between its checkpoint and the point where the killed run stopped: logs at steps the
  run file already has are not logged again (as W&B does), so its steps keep going up
  and each is there once; the run's first values for those steps stay.
* ``on_train_end``: the run is finished, its summary the last logs (``train_loss``,
  ``train_runtime``, ...) with ``global_step``, ``best_metric`` and
  ``best_model_checkpoint``.

The ``Trainer`` has no hook for a training that raises: such a run stays open and
steplog's exit hook ends it (``"failed"`` after an uncaught exception, otherwise
``"unfinished"``); a later ``train()`` with the same callback ends it as
``"unfinished"`` before starting its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._extras import require
from ..backends.base import Backend
from ._host import TrackerHost

__all__ = ["RUN_FILE_NAME", "SteplogCallback"]

_callbacks = require(
    "transformers.trainer_callback", "transformers", "steplog.integrations.transformers"
)
TrainerCallback = _callbacks.TrainerCallback

DEFAULT_EXPERIMENT_NAME = "transformers"
#: The file in ``output_dir`` that names the run, for a resumed training to continue.
RUN_FILE_NAME = "steplog_run.json"

_SUMMARY_STATE = ("global_step", "best_metric", "best_model_checkpoint")


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
        self._last_logs: dict[str, Any] = {}
        self._first_new_step = 0  # after a resume: the steps before are in the file
        self._replayed = 0  # logs skipped as replays of steps the file has

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
        else:
            info = self.tracker.init(config)
        self._last_logs = {}
        self._first_new_step = info.resumed.step if info.resumed is not None else 0
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
        """Log ``logs`` at the global step."""
        if not state.is_world_process_zero or not logs or not self.tracker.active:
            return
        self._last_logs.update(logs)
        if state.global_step < self._first_new_step:
            self._replayed += 1  # the Trainer replays steps the run file already has
            return
        self.tracker.log(logs, step=state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Finish the run with the last logs and the best checkpoint as its summary."""
        if not state.is_world_process_zero or not self.tracker.active:
            return
        summary = dict(self._last_logs)
        summary.update({name: getattr(state, name, None) for name in _SUMMARY_STATE})
        if self._replayed:
            summary["steplog_replayed_logs_skipped"] = self._replayed
        self.tracker.finish(summary)


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
