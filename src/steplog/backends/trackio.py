"""trackio backend (``steplog[trackio]``): a local (or Hugging Face Space) trackio project.

trackio's ``log`` is synchronous and buffers into its own SQLite store; the backend calls
it from a worker thread a batch at a time. Each event is logged at its steplog step.
trackio reserves some keys (``step``, ``time``, …) and renames them with a ``__`` prefix,
as it does for any caller. The summary is logged as a last row (numbers and strings) at
the final step; trackio has no separate summary.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import anyio.to_thread

from .._extras import require
from ..events import Event, RunEnd, RunInfo
from .base import Backend, PicklesAsConfiguration

__all__ = ["TrackioBackend"]


class TrackioBackend(PicklesAsConfiguration, Backend):
    """Log runs to a trackio project.

    Args:
        project: trackio project; default the tracker's experiment name.
        name: Run name; default the steplog run id.
        space_id: Log to a Hugging Face Space instead of locally.
        **init_kwargs: Passed on to ``trackio.init``.

    Where the local store lives is trackio's business: ``$TRACKIO_DIR`` (default
    ``~/.cache/huggingface/trackio``).
    """

    name = "trackio"

    _sdk = ("_trackio", "trackio", "trackio", "TrackioBackend")
    _run_state = ("run", "_batch")

    def __init__(
        self,
        project: str | None = None,
        *,
        name: str | None = None,
        space_id: str | None = None,
        **init_kwargs: Any,
    ) -> None:
        self._trackio = require("trackio", "trackio", "TrackioBackend")
        self.project = project
        self.run_name = name
        self.space_id = space_id
        self.init_kwargs = init_kwargs
        self.run: Any = None
        self._last_step = 0
        self._batch: Sequence[Event] | None = None  # a batch trackio took part of
        self._done = 0

    def __repr__(self) -> str:
        return f"TrackioBackend(project={self.project!r})"

    async def open(self, run: RunInfo) -> None:
        kwargs: dict[str, Any] = {
            "project": self.project or run.experiment,
            "name": self.run_name or run.run_id,
            "config": dict(run.config),
            "space_id": self.space_id,
            "embed": False,
            **self.init_kwargs,
        }
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        os.environ.setdefault("TRACKIO_QUIET", "1")
        self.run = await anyio.to_thread.run_sync(lambda: self._trackio.init(**kwargs))
        self._last_step = 0

    async def write(self, events: Sequence[Event]) -> None:
        run = self.run
        # A retry passes the same batch again (Backend.write): go on after the events
        # trackio already took, so none is logged twice.
        if events is not self._batch:
            self._batch, self._done = events, 0

        def log() -> None:
            for step, _, data in events[self._done :]:
                run.log(dict(data), step=step)
                self._done += 1

        await anyio.to_thread.run_sync(log)
        self._batch = None
        if events:
            self._last_step = max(self._last_step, events[-1].step)

    async def close(self, end: RunEnd) -> None:
        run = self.run
        if run is None:
            return
        self.run = None
        summary = {
            f"summary/{k}": v
            for k, v in end.summary.items()
            if isinstance(v, (int, float, str)) and not isinstance(v, bool)
        }

        def finish() -> None:
            if summary:
                run.log(summary, step=self._last_step)
            run.finish()

        await anyio.to_thread.run_sync(finish)
