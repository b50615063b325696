"""What every integration holds: a tracker, the path of its run file, its statistics."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..backends.base import Backend
from ..backends.jsonl import JsonlBackend
from ..events import RunStats
from ..tracker import Tracker

__all__ = ["TrackerHost"]


class TrackerHost:
    """Base of the integrations' loggers and callbacks: owns their :class:`Tracker`.

    Attributes:
        tracker: The underlying :class:`steplog.Tracker`.
    """

    tracker: Tracker

    def _host(
        self,
        backends: tuple[Backend, ...],
        *,
        experiment_name: str,
        experiment_config: Mapping[str, Any] | None,
        options: dict[str, Any],
    ) -> None:
        """Make the tracker (``options`` are :class:`Tracker`'s keyword arguments)."""
        self.tracker = Tracker(
            *backends,
            experiment_name=experiment_name,
            experiment_config=experiment_config,
            **options,
        )

    @property
    def _jsonl(self) -> JsonlBackend | None:
        return next((b for b in self.tracker.backends if isinstance(b, JsonlBackend)), None)

    @property
    def run_path(self) -> Path | None:
        """The run file of the current (or last) run (its first JSONL backend's), or
        ``None`` before a run started or without a JSONL backend."""
        jsonl = self._jsonl
        return jsonl.path if jsonl is not None else None

    @property
    def last_stats(self) -> RunStats | None:
        """Statistics of the last finished run."""
        return self.tracker.last_stats
