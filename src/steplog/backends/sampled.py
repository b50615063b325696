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

Sampling happens in the backend's lane, per batch; the hot loop never sees it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..events import Event, RunEnd, RunInfo
from .base import Backend, backend_name

__all__ = ["COUNT_KEY", "REDUCTIONS", "Checkpoint", "Sampled", "WindowSampler"]

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
        self._sampler = self.sampler()
        self.received = 0
        self.sent = 0
        # The batch whose points the inner backend has not taken yet, and those points.
        self._pending: tuple[Sequence[Event], list[Event]] | None = None

    @property
    def local(self) -> bool:  # type: ignore[override]
        """A sampled in-process sink is in-process too (see :attr:`Backend.local`)."""
        return self.backend.local

    def sampler(self, state: Mapping[str, Any] | None = None) -> WindowSampler:
        """A fresh :class:`WindowSampler` of this rule (from a checkpoint's ``state``)."""
        return WindowSampler(self, state)

    def __repr__(self) -> str:
        rule = f"every={self.every}" if self.every is not None else f"interval={self.interval}"
        extra = ""
        if self.extremes:
            extra += ", extremes=True"
        if self.endpoints != self.extremes:
            extra += f", endpoints={self.endpoints}"
        return f"Sampled({self.backend!r}, {rule}, reduce={self.reduce!r}{extra})"

    def __getstate__(self) -> dict[str, Any]:
        # The configuration, not a run's windows (a lane makes its own sampler).
        state = dict(self.__dict__)
        state.pop("_sampler", None)
        state.pop("_pending", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

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
        last = [point for point, _ in self._sampler.end_segment(0)]
        try:
            if last:
                self.sent += len(last)
                await self.backend.write(last)
        finally:
            # The inner backend is closed even when that last write failed.
            await self.backend.close(end)

    def sample(self, events: Sequence[Event]) -> list[Event]:
        """The events (or reduced points) of this batch that go through."""
        sampler = self._sampler
        out: list[Event] = []
        for event in events:
            out += [point for point, _ in sampler.add(event, 0, 0)]
        self.received += len(events)
        self.sent += len(out)
        return out

    def _point(self, window: list[Event]) -> Event:
        last = window[-1]
        # "last", or a window of one: the point carries the last event's data as logged.
        as_logged = self.reduce == "last" or len(window) == 1
        if as_logged and not self.extremes:
            return last
        # Each key's values in the window, in order; what is reduced is the run of
        # numbers (ints and floats, not bools) after the last value that is not one.
        columns: dict[str, list[Any]] = {}
        for event in window:
            for key, value in event.data.items():
                column = columns.get(key)
                if column is None:
                    columns[key] = [value]
                else:
                    column.append(value)
        numbers: dict[str, list[float]] = {}
        data: dict[str, Any] = {}
        for key, values in columns.items():
            i = len(values)
            while i and type(values[i - 1]) in _NUMERIC:
                i -= 1
            if i == len(values):
                data[key] = values[-1]
            else:
                numbers[key] = values[i:] if i else values
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


#: Where a lane may resume reading a run file: the byte ``offset`` of a line start,
#: the step records before it (``events``) and the sampler's ``state`` there.
Checkpoint = tuple[int, int, dict[str, Any]]


class WindowSampler:
    """One pass of a :class:`Sampled` rule over a run's events, deterministic from them.

    The same events in the same order give the same points, however the reading is cut
    into batches and wherever it resumes from a :data:`Checkpoint` it gave: a lane that
    re-reads a run file after an outage, a crash or a resume sends exactly the points
    it would have sent in one go. So the windows depend on the events only:

    * ``interval``: fixed buckets of logging time, ``floor(time / interval)`` (an event
      whose time goes back — another thread, a clock step — stays in the open window);
    * ``every``: runs of ``every`` consecutive events of a segment;
    * a segment (a process's part of a resumed run) ends every window: no window spans
      two processes, and a killed segment's last window is its own;
    * with ``endpoints``, the run's first event is a window of its own and each
      segment's last event goes through (thinning) or ends its window.

    :meth:`add` and :meth:`end_segment` return the points they complete, each with the
    checkpoint that is safe once it (and every point before it) has been acknowledged;
    :attr:`safe` is the checkpoint that is safe once every point returned so far has
    been. A checkpoint never passes an event whose window is still open.
    """

    def __init__(self, rule: Sampled, state: Mapping[str, Any] | None = None) -> None:
        self.rule = rule
        state = dict(state or {})
        self.run_events = int(state.get("run_events", 0))  # events of the run before
        self.segment_events = int(state.get("segment_events", 0))  # ... of the segment
        self.bucket: int | None = state.get("bucket")  # thinning by interval: last passed
        self.window: list[Event] = []
        self.window_bucket: int | None = None
        self.unsent_last: Event | None = None  # thinning with endpoints
        self.safe: Checkpoint = (0, self.run_events, self._state())
        self._started = False

    def _state(self) -> dict[str, Any]:
        return {
            "run_events": self.run_events,
            "segment_events": self.segment_events,
            "bucket": self.bucket,
        }

    def start(self, offset: int) -> None:
        """Reading starts at ``offset`` (a checkpoint's, or the first step's)."""
        self.safe = (offset, self.run_events, self._state())
        self._started = True

    def add(self, event: Event, start: int, end: int) -> list[tuple[Event, Checkpoint]]:
        """Feed the next event (its line spans ``[start, end)`` of the file)."""
        if not self._started:
            self.start(start)
        rule = self.rule
        out: list[tuple[Event, Checkpoint]] = []
        if rule.reduce is None:
            passes = self._passes(event)
            self.run_events += 1
            self.segment_events += 1
            if passes:
                self.unsent_last = None
                self.safe = (end, self.run_events, self._state())
                out.append((event, self.safe))
            elif rule.endpoints:
                self.unsent_last = event  # the segment's last event, unless another comes
                self.safe = (start, self.run_events - 1, self._before(event))
            else:
                self.safe = (end, self.run_events, self._state())
            return out
        first_of_run = rule.endpoints and self.run_events == 0
        bucket = self._bucket(event)
        if self.window and (first_of_run or self._closes(bucket)):
            point = rule._point(self.window)
            self.window = []
            self.safe = (start, self.run_events, self._state())
            out.append((point, self.safe))
        if not self.window:
            self.window_bucket = bucket
        self.window.append(event)
        self.run_events += 1
        self.segment_events += 1
        if first_of_run or (rule.every is not None and len(self.window) >= rule.every):
            point = rule._point(self.window)
            self.window = []
            self.safe = (end, self.run_events, self._state())
            out.append((point, self.safe))
        return out

    def end_segment(self, end: int) -> list[tuple[Event, Checkpoint]]:
        """The segment ended (a resume or run-end record ending at ``end``, or the end of
        a run whose writer is gone): its open window, or its unsent last event."""
        out: list[Event] = []
        if self.window:
            out.append(self.rule._point(self.window))
            self.window = []
        elif self.unsent_last is not None:
            out.append(self.unsent_last)
        self.unsent_last = None
        self.segment_events = 0
        self.bucket = None
        self.safe = (end, self.run_events, self._state())
        return [(point, self.safe) for point in out]

    def _passes(self, event: Event) -> bool:
        rule = self.rule
        if rule.every is not None:
            return self.segment_events % rule.every == 0
        bucket = self._bucket(event)
        if self.bucket is not None and bucket <= self.bucket:
            return False
        self.bucket = bucket
        return True

    def _bucket(self, event: Event) -> int:
        interval = self.rule.interval
        if interval is None:
            return 0
        bucket = math.floor(event.time / interval) if math.isfinite(event.time) else 0
        if self.window_bucket is not None and self.window:
            return max(bucket, self.window_bucket)  # never back into a closed window
        return bucket

    def _closes(self, bucket: int) -> bool:
        """Whether an event in ``bucket`` starts a new window (reductions)."""
        return self.rule.interval is not None and bucket != self.window_bucket

    def _before(self, event: Event) -> dict[str, Any]:
        """The state before ``event`` was added (thinning: it did not pass)."""
        state = self._state()
        state["run_events"] -= 1
        state["segment_events"] -= 1
        return state


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _min(values: list[float]) -> float:
    return math.nan if any(v != v for v in values) else min(values)


def _max(values: list[float]) -> float:
    return math.nan if any(v != v for v in values) else max(values)


_REDUCE = {"mean": _mean, "min": _min, "max": _max}
_NUMERIC = frozenset((int, float))
