"""A backend that discards everything."""

from __future__ import annotations

from collections.abc import Sequence

from ..events import Event, RunEnd, RunInfo
from .base import Backend

__all__ = ["NullBackend"]


class NullBackend(Backend):
    """Accepts every event and stores nothing (for benchmarks and dry runs)."""

    async def open(self, run: RunInfo) -> None:
        """Do nothing."""

    async def write(self, events: Sequence[Event]) -> None:
        """Do nothing."""

    async def close(self, end: RunEnd) -> None:
        """Do nothing."""
