"""A backend that prints chosen keys, throttled, without garbling progress bars."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from ..events import Event, RunEnd, RunInfo
from .base import Backend

__all__ = ["ConsoleBackend"]


class ConsoleBackend(Backend):
    """Prints the latest values of chosen keys at most once every ``every`` seconds.

    A loop logging 100 000 steps a second prints one line a second (by default), and
    one final line at the end of the run. While a ``tqdm`` progress bar is active the
    lines go through ``tqdm.write`` so the bar is redrawn below them instead of garbled.

    Args:
        keys: Keys to print, in this order. ``None`` prints every key of the latest
            event (up to ``max_keys``).
        every: Minimum number of seconds between two printed lines; ``0`` prints a line
            for every event.
        file: Stream to print to; defaults to ``sys.stdout`` at the time of printing.
        max_keys: With ``keys=None``, print at most this many keys per line.
    """

    local = True  # an in-process sink: the writer thread feeds it

    def __init__(
        self,
        keys: Iterable[str] | None = None,
        *,
        every: float = 1.0,
        file: TextIO | None = None,
        max_keys: int = 8,
    ) -> None:
        if isinstance(keys, str):
            raise TypeError("keys must be a list of key names, not a single string")
        if not every >= 0:
            raise ValueError(f"every must be >= 0 seconds, got {every!r}")
        self.keys = list(keys) if keys is not None else None
        self.every = every
        self.file = file
        self.max_keys = max_keys
        self._prefix = ""
        self._last_print = -math.inf
        self._pending: Event | None = None
        self._latest: dict[str, Any] = {}
        self._steps = 0

    def __repr__(self) -> str:
        return f"ConsoleBackend(keys={self.keys!r}, every={self.every!r})"

    async def open(self, run: RunInfo) -> None:
        """Print one line announcing the run."""
        self._prefix = f"[{run.experiment}]"
        self._last_print = -math.inf
        self._pending = None
        self._latest = {}
        self._steps = 0
        self._print(f"{self._prefix} run {run.run_id} started")

    async def write(self, events: Sequence[Event]) -> None:
        """Print the latest values if ``every`` seconds passed since the last line (with
        ``every=0``, every event)."""
        if not events:
            return
        self._steps += len(events)
        if self.every == 0:
            for event in events:
                self._remember((event,))
                self._print_event(event)
            self._pending = None
            return
        self._remember(events)
        now = time.monotonic()
        if now - self._last_print >= self.every:
            self._last_print = now
            self._print_event(events[-1])
            self._pending = None
        else:
            self._pending = events[-1]

    async def close(self, end: RunEnd) -> None:
        """Print the last unprinted values, then the status and summary."""
        if self._pending is not None:
            self._print_event(self._pending)
            self._pending = None
        steps = f"{self._steps} step{'' if self._steps == 1 else 's'}"
        line = f"{self._prefix} run {end.run_id} {end.status} after {steps}"
        if end.summary:
            line += "  " + _format_items(end.summary.items())
        self._print(line)

    def _remember(self, events: Sequence[Event]) -> None:
        # Keep the last value of each requested key even when the latest event lacks it
        # (key sets often change between steps). Walk back only until all are found.
        if self.keys is None:
            return
        missing = set(self.keys)
        for event in reversed(events):
            for key in [k for k in missing if k in event.data]:
                self._latest[key] = event.data[key]
                missing.discard(key)
            if not missing:
                break

    def _print_event(self, event: Event) -> None:
        if self.keys is None:
            items: Iterable[tuple[str, Any]] = list(event.data.items())[: self.max_keys]
        else:
            items = [(k, self._latest[k]) for k in self.keys if k in self._latest]
        self._print(f"{self._prefix} step {event.step}  {_format_items(items)}".rstrip())

    def _print(self, line: str) -> None:
        file = self.file if self.file is not None else sys.stdout
        tqdm_module = sys.modules.get("tqdm")
        if tqdm_module is not None:
            # tqdm.write clears active bars, prints, and redraws them.
            tqdm_module.tqdm.write(line, file=file)
        else:
            print(line, file=file, flush=True)


def _format_items(items: Iterable[tuple[str, Any]]) -> str:
    return "  ".join(f"{key}={_format_value(value)}" for key, value in items)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, Mapping):
        return "{…}"
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"
