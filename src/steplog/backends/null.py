"""A backend that discards everything."""

from __future__ import annotations

from collections.abc import Sequence

from ..events import Event, RunEnd, RunInfo
from ..runfile.codec import ValueEncoder
from .base import SyncBackend

__all__ = ["NullBackend"]


class NullBackend(SyncBackend):
    """Accepts every event and stores nothing (for benchmarks and dry runs)."""

    def open_sync(self, run: RunInfo, encoder: ValueEncoder) -> None:
        """Do nothing."""

    def write_sync(self, events: Sequence[Event]) -> None:
        """Do nothing."""

    def close_sync(self, end: RunEnd) -> None:
        """Do nothing."""
