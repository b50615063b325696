"""Weights & Biases backend (``steplog[wandb]``).

The wandb SDK is synchronous and costs 100–300 µs per ``run.log`` call, so the backend
runs it in a worker thread, a batch at a time; the hot loop and the other backends never
wait for it. For loops faster than a few thousand steps a second, feed it a thinned
stream with :class:`steplog.Sampled` (the JSONL file keeps every step)::

    steplog.Tracker(
        steplog.JsonlBackend("runs"),
        steplog.Sampled(WandbBackend(project="gcg", mode="offline"), interval=0.1),
    )

Steps. W&B's history steps must increase. By default (``step_metric=False``) each event
is logged at its steplog step, so W&B's step axis is steplog's; several events with the
same step merge into one W&B row (later values win), and an event whose step is lower
than one already sent cannot be stored at its step: it is not sent, it is counted
(:attr:`WandbBackend.out_of_order`, the W&B summary key ``steplog/out_of_order``) and
reported once through ``logging`` — it stays in the JSONL file. With
``step_metric=True`` nothing is skipped: every event is its own W&B row, steplog's step
is logged as the metric ``step`` and declared the x axis of every chart
(``define_metric("*", step_metric="step")``), so out-of-order steps plot where they
belong.

Config goes to ``wandb.config``; the summary to ``run.summary``; a run that did not
finish cleanly exits with code 1 (W&B marks it failed/crashed).

Closing. ``run.finish()`` returns once W&B's service has the run's exit, but it only
*tells* the service that the run is over; the service writes the last part of the run's
transaction log (``run-<id>.wandb``: up to 32 KiB it holds in memory, the exit record
among them) when it gets to that message, a few milliseconds later, or much later on a
loaded machine. The backend waits for that (30 s at most), so when ``finish()``
returns the run directory is complete: ready for ``wandb sync`` (which marks a log
without an exit record failed) or a copy.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from .._extras import require
from ..events import Event, RunEnd, RunInfo
from ._wandb_log import log_has_ended
from .base import Backend, PicklesAsConfiguration

__all__ = ["WandbBackend"]

logger = logging.getLogger("steplog")

# Seconds close() waits, after run.finish(), for W&B's service to write the end of the
# run's transaction log: milliseconds normally, seconds on a loaded machine.
_LOG_CLOSE_TIMEOUT = 30.0


class WandbBackend(PicklesAsConfiguration, Backend):
    """Log runs to Weights & Biases.

    Args:
        project: W&B project; default the tracker's experiment name.
        entity: W&B entity (user or team).
        mode: ``"online"``, ``"offline"`` or ``"disabled"``; default W&B's own
            (``$WANDB_MODE``, else online).
        dir: Where W&B keeps its local files.
        name: Run display name; default the steplog run id.
        step_metric: Log steplog's step as a metric and make it the x axis, instead of
            using W&B's step (see the module documentation).
        **init_kwargs: Passed on to ``wandb.init`` (``tags``, ``group``, ``notes``, …).
    """

    name = "wandb"

    _sdk = ("_wandb", "wandb", "wandb", "WandbBackend")
    _run_state = ("run",)

    def __init__(
        self,
        project: str | None = None,
        *,
        entity: str | None = None,
        mode: str | None = None,
        dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
        step_metric: bool = False,
        **init_kwargs: Any,
    ) -> None:
        self._wandb = require("wandb", "wandb", "WandbBackend")
        self.project = project
        self.entity = entity
        self.mode = mode
        self.dir = str(dir) if dir is not None else None
        self.run_name = name
        self.step_metric = step_metric
        self.init_kwargs = init_kwargs
        self.run: Any = None
        self.out_of_order = 0
        self._last_step: int | None = None

    def __repr__(self) -> str:
        return f"WandbBackend(project={self.project!r}, mode={self.mode!r})"

    async def open(self, run: RunInfo) -> None:
        self.out_of_order = 0
        self._last_step = None
        if self.dir is not None:
            Path(self.dir).mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {
            "project": self.project or run.experiment,
            "entity": self.entity,
            "name": self.run_name or run.run_id,
            "id": _wandb_id(run.run_id),
            "config": dict(run.config),
            "dir": self.dir,
            "mode": self.mode,
            "reinit": "create_new",
            "resume": "allow",
            "group": run.group,
            "tags": list(run.tags) or None,
            **self.init_kwargs,
        }
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        self.run = await anyio.to_thread.run_sync(lambda: self._wandb.init(**kwargs))
        if self.step_metric:
            await anyio.to_thread.run_sync(lambda: self.run.define_metric("*", step_metric="step"))

    async def write(self, events: Sequence[Event]) -> None:
        await anyio.to_thread.run_sync(self._log_batch, events)

    def _log_batch(self, events: Sequence[Event]) -> None:
        run = self.run
        if self.step_metric:
            for step, _, data in events:
                run.log({**data, "step": step})
            return
        skipped = 0
        last = self._last_step
        for step, _, data in events:
            if last is not None and step < last:
                if not self.out_of_order and not skipped:
                    logger.warning(
                        "steplog: W&B steps must not go back: step %d came after step %d "
                        "and was not sent to W&B (it is in the run file; later ones are "
                        "counted in the W&B summary as steplog/out_of_order). "
                        "WandbBackend(step_metric=True) keeps them.",
                        step,
                        last,
                    )
                skipped += 1
                continue
            run.log(dict(data), step=step)
            last = step
        self._last_step = last
        self.out_of_order += skipped

    async def close(self, end: RunEnd) -> None:
        run = self.run
        if run is None:
            return
        self.run = None

        def finish() -> None:
            summary = dict(end.summary)
            if self.out_of_order:
                summary["steplog/out_of_order"] = self.out_of_order
            summary["steplog/status"] = end.status
            run.summary.update(summary)
            run.finish(exit_code=0 if end.status == "finished" else 1)

        log = run.settings.sync_file
        await anyio.to_thread.run_sync(finish)
        await _wait_for_log_end(log, _LOG_CLOSE_TIMEOUT)


def _wandb_id(run_id: str) -> str:
    """A W&B run id (letters, digits, dashes, underscores) derived from steplog's."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", run_id)[:128]


async def _wait_for_log_end(path: str, timeout: float) -> None:
    """Wait until the transaction log at ``path`` holds the run's exit record.

    ``run.finish()`` publishes "stream finished" to W&B's service without waiting for
    it; only when the service handles it does it close the log, writing the block it
    still holds in memory (the exit record is in it). No log (mode ``"disabled"``, a
    log turned off in the settings): nothing to wait for.
    """
    if not await anyio.to_thread.run_sync(os.path.exists, path):
        return
    pause = 0.001
    with anyio.move_on_after(timeout):
        while not await anyio.to_thread.run_sync(log_has_ended, Path(path)):
            await anyio.sleep(pause)
            pause = min(2 * pause, 0.05)
        return
    logger.warning(
        "steplog: W&B's service did not finish writing %s within %.0f s; the offline "
        "run may be incomplete until it does",
        path,
        timeout,
    )
