"""A backend that discards everything."""

from __future__ import annotations

from collections.abc import Sequence

from ..events import Event, RunEnd, RunInfo
from .base import Backend, _overrides

__all__ = ["NullBackend"]


class NullBackend(Backend):
    """Accepts every event and stores nothing (for benchmarks and dry runs)."""

    local = True  # an in-process sink: the writer thread feeds it

    async def open(self, run: RunInfo) -> None:
        """Do nothing."""

    async def write(self, events: Sequence[Event]) -> None:
        """Do nothing."""

    async def close(self, end: RunEnd) -> None:
        """Do nothing."""

    def _direct_sink(self) -> _NullSink | None:
        if _overrides(self, NullBackend, "open", "write", "close"):
            return None
        return _NullSink()


class _NullSink:
    """The writer thread's side of a :class:`NullBackend`: nothing to do."""

    def open(self, run: RunInfo, encoder: object) -> None:
        pass

    def write(self, data: bytes | bytearray, batch: Sequence[Event]) -> None:
        pass

    def abandon(self) -> int:
        return 0

    def close(self, end: RunEnd) -> None:
        pass
