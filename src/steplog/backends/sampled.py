"""Per-backend sampling: a slow or rate-limited backend gets a thinned stream.

The run file keeps every step; a dashboard that cannot take 100 000 points a second gets
every N-th step, at most one point per T seconds, or one reduced point (mean, min, max
or last) per window::

    tracker = steplog.Tracker(
        steplog.JsonlBackend("runs"),                                   # every step
        steplog.Sampled(WandbBackend(project="p"), interval=0.1, reduce="mean"),
    )

A mean hides spikes: ``extremes=True`` adds each window's ``<key>/min``, ``<key>/max``
and ``sampled/count`` to its point, and keeps the run's first and last points, so a
thinned chart still shows every spike and where the run started and ended.

Sampling happens in the worker, per batch; the hot loop never sees it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from ..events import Event, RunEnd, RunInfo
from ..runfile.schema import is_number
from .base import Backend, backend_name

__all__ = ["COUNT_KEY", "REDUCTIONS", "Sampled"]

Reduction = Literal["mean", "min", "max", "last"]
REDUCTIONS = ("mean", "min", "max", "last")

#: The key of a window's number of events in the points of ``Sampled(extremes=True)``.
COUNT_KEY = "sampled/count"


class Sampled(Backend):
    """Send ``backend`` a thinned or reduced stream of the run's events.

    Args:
        backend: The backend to feed.
        every: Windows of ``every`` consecutive events.
        interval: Windows of ``interval`` seconds (by the events' logging time).
        reduce: ``None`` (default) thins: the first event of each window goes through
            unchanged, as ``if step % every == 0`` would. ``"mean"``, ``"min"``,
            ``"max"`` or ``"last"`` send one point per window, stamped with the window's
            last step and time: numeric values (not bools) reduced over the events that
            have the key (NaN propagates through mean/min/max), other values the last
            one seen. A window still open when the run ends is sent at close, so the
            final values always arrive.
        extremes: Needs a reduction. Each point also gets, for every key the reduction
            treats as a number, ``<key>/min`` and ``<key>/max`` over the window's values
            (NaN propagates), and ``sampled/count`` (:data:`COUNT_KEY`), the window's
            number of events, so a spike a mean would hide stays on the chart. Nested
            mappings are not reduced (their last value is sent) and get neither; a key
            the run logs itself is never overwritten by one of these.
        endpoints: Keep the run's first and last points; ``None`` (default) follows
            ``extremes``. With a reduction the run's first event is a window of its own
            (sent as logged, plus the ``extremes`` keys), and the windows of ``every``
            events start after it, so points fall on steps 0, N, 2N, … and the last
            step. When thinning, the run's last event is sent at close unless it already
            went through.

    Exactly one of ``every`` and ``interval`` must be given.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        every: int | None = None,
        interval: float | None = None,
        reduce: Reduction | None = None,
        extremes: bool = False,
        endpoints: bool | None = None,
    ) -> None:
        if not isinstance(backend, Backend):
            raise TypeError(f"Sampled wraps a steplog Backend, not {type(backend).__name__}")
        if (every is None) == (interval is None):
            raise ValueError("give exactly one of every= (events) or interval= (seconds)")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int)):
            raise TypeError(f"every must be an int, not {type(every).__name__}")
        if every is not None and every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        if interval is not None and not (isinstance(interval, (int, float)) and interval > 0):
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        if reduce is not None and reduce not in REDUCTIONS:
            raise ValueError(
                f"reduce must be one of {', '.join(REDUCTIONS)} or None, got {reduce!r}"
            )
        if not isinstance(extremes, bool):
            raise TypeError(f"extremes must be a bool, not {type(extremes).__name__}")
        if endpoints is not None and not isinstance(endpoints, bool):
            raise TypeError(f"endpoints must be a bool or None, not {type(endpoints).__name__}")
        if extremes and reduce is None:
            # A thinned point is one logged event: it has no window to take extremes of.
            raise ValueError(
                "extremes=True needs a reduction (reduce='mean', 'min', 'max' or 'last'): "
                "thinning sends single events, which have no window min/max"
            )
        self.backend = backend
        self.every = every
        self.interval = float(interval) if interval is not None else None
        self.reduce = reduce
        self.extremes = extremes
        self.endpoints = extremes if endpoints is None else endpoints
        self.name = backend_name(backend)
        self._reset()

    def _reset(self) -> None:
        self._count = 0  # events seen in the current window
        self._window_start = 0.0
        self._window: list[Event] = []
        # When thinning with endpoints: the run's last event so far, if not sent.
        self._unsent_last: Event | None = None
        self.received = 0
        self.sent = 0
        # The batch whose points the inner backend has not taken yet, and those points.
        self._pending: tuple[Sequence[Event], list[Event]] | None = None

    def __repr__(self) -> str:
        rule = f"every={self.every}" if self.every is not None else f"interval={self.interval}"
        extra = ""
        if self.extremes:
            extra += ", extremes=True"
        if self.endpoints != self.extremes:
            extra += f", endpoints={self.endpoints}"
        return f"Sampled({self.backend!r}, {rule}, reduce={self.reduce!r}{extra})"

    async def open(self, run: RunInfo) -> None:
        self._reset()
        await self.backend.open(run)

    async def write(self, events: Sequence[Event]) -> None:
        # A retry passes the same batch again (see Backend.write): send the same points
        # again instead of sampling it twice (which would shift the windows and count
        # every event twice).
        retry = self._pending
        if retry is not None and retry[0] is events:
            out = retry[1]
        else:
            out = self.sample(events)
        if out:
            self._pending = (events, out)
            await self.backend.write(out)
        self._pending = None

    async def close(self, end: RunEnd) -> None:
        last: Event | None = None
        if self.reduce is not None and self._window:
            last = self._reduced()
        elif self._unsent_last is not None:
            last = self._unsent_last
            self._unsent_last = None
        try:
            if last is not None:
                self.sent += 1
                await self.backend.write([last])
        finally:
            # The inner backend is closed even when that last write failed.
            await self.backend.close(end)

    def sample(self, events: Sequence[Event]) -> list[Event]:
        """The events (or reduced points) of this batch that go through."""
        out: list[Event] = []
        thin = self.reduce is None
        for event in events:
            self.received += 1
            if not thin and self.endpoints and self.received == 1:
                # The run's first point as logged: a window of its own.
                out.append(self._point([event]))
                continue
            if self._starts_window(event):
                if not thin and self._window:
                    out.append(self._reduced())
                self._count = 0
                self._window_start = event.time
                self._window = []
                if thin:
                    out.append(event)
            self._count += 1
            if not thin:
                self._window.append(event)
                if self.every is not None and self._count == self.every:
                    out.append(self._reduced())
                    self._count = 0
                    self._window_start = math.inf  # the next event opens a window
            elif self.endpoints:
                self._unsent_last = None if out and out[-1] is event else event
        self.sent += len(out)
        return out

    def _starts_window(self, event: Event) -> bool:
        if self.every is not None:
            return self._count == 0 or self._count >= self.every
        assert self.interval is not None
        return self._count == 0 or event.time >= self._window_start + self.interval

    def _reduced(self) -> Event:
        """The current window's point; the window is emptied."""
        window = self._window
        self._window = []
        return self._point(window)

    def _point(self, window: list[Event]) -> Event:
        last = window[-1]
        # "last", or a window of one: the point carries the last event's data as logged.
        as_logged = self.reduce == "last" or len(window) == 1
        if as_logged and not self.extremes:
            return last
        numbers: dict[str, list[float]] = {}
        data: dict[str, Any] = {}
        for event in window:
            for key, value in event.data.items():
                if is_number(value):
                    numbers.setdefault(key, []).append(value)
                    data.pop(key, None)
                else:
                    data[key] = value
                    numbers.pop(key, None)
        if as_logged:
            data = dict(last.data)
        else:
            for key, values in numbers.items():
                data[key] = _REDUCE[self.reduce](values)  # type: ignore[index]
        if self.extremes:
            # The run's own keys come first: setdefault never overwrites one.
            for key, values in numbers.items():
                data.setdefault(f"{key}/min", _min(values))
                data.setdefault(f"{key}/max", _max(values))
            data.setdefault(COUNT_KEY, len(window))
        return Event(last.step, last.time, data)


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _min(values: list[float]) -> float:
    return math.nan if any(v != v for v in values) else min(values)


def _max(values: list[float]) -> float:
    return math.nan if any(v != v for v in values) else max(values)


_REDUCE = {"mean": _mean, "min": _min, "max": _max}
