"""A backend that keeps the run in memory, for tests and notebooks."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from .._batch import events_of
from ..events import Event, RunEnd, RunInfo, RunStats
from ..runfile.codec import ValueEncoder
from .base import SyncBackend

__all__ = ["MemoryBackend"]


class MemoryBackend(SyncBackend):
    """Keeps every event of the latest run in memory.

    The attributes describe the most recent run (``open`` resets them). Read them after
    ``flush()`` or ``finish()``: the writer thread fills them (a :class:`SyncBackend`).

    Attributes:
        info: The run that was opened, or ``None``.
        records: Every event of the run, in order.
        history: Per key, the values in logging order (like ``run.history`` of
            :func:`steplog.read_run`).
        summary: The summary passed to ``finish()``.
        status: The run's end status, or ``None`` while it is running.
        stats: The run's statistics once it is closed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.info: RunInfo | None = None
        self.records: list[Event] = []
        self.history: dict[str, list[Any]] = {}
        self.summary: Mapping[str, Any] = {}
        self.status: str | None = None
        self.stats: RunStats | None = None

    @property
    def config(self) -> Mapping[str, Any]:
        """The merged config of the run (empty before ``open``)."""
        return self.info.config if self.info is not None else {}

    def open_sync(self, run: RunInfo, encoder: ValueEncoder) -> None:
        """Forget the previous run and start recording ``run``."""
        with self._lock:
            self._reset()
            self.info = run

    def write_sync(self, events: Sequence[Event]) -> None:
        """Append the events and extend the per-key history."""
        events = events_of(events)
        with self._lock:
            self.records.extend(events)
            history = self.history
            for event in events:
                for key, value in event.data.items():
                    series = history.get(key)
                    if series is None:
                        history[key] = [value]
                    else:
                        series.append(value)

    def close_sync(self, end: RunEnd) -> None:
        """Record the summary, status and statistics."""
        with self._lock:
            self.summary = dict(end.summary)
            self.status = end.status
            self.stats = end.stats

    def steps(self, key: str) -> list[int]:
        """Return the steps at which ``key`` was logged, aligned with ``history[key]``."""
        return [e.step for e in self.records if key in e.data]
