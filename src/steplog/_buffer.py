"""The bounded buffer between ``log()`` and the worker, with its overflow policies."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from typing import Any, Literal, overload

from .events import Event

__all__ = [
    "OVERFLOW_POLICIES",
    "STEP_KEY",
    "TIME_KEY",
    "EventBatch",
    "EventBuffer",
    "OverflowPolicy",
]

#: Keys under which ``log()`` stamps the step and time into its copy of the data; the
#: worker pops them when it turns the copies into :class:`Event` objects. (A tuple
#: holding a dict is always tracked by the cyclic GC, a dict of numbers and strings is
#: not: queuing stamped dicts instead of tuples keeps waiting events out of the GC's
#: way, which saved ~0.2 µs per event of collections in the benchmark.)
STEP_KEY = "\x00steplog.step"
TIME_KEY = "\x00steplog.time"

OverflowPolicy = Literal["block", "drop_oldest", "drop_newest"]
OVERFLOW_POLICIES: tuple[OverflowPolicy, ...] = ("block", "drop_oldest", "drop_newest")

_new_tuple = tuple.__new__

# How long a blocked producer sleeps between checks that the worker is still alive.
_BLOCK_POLL_SECONDS = 0.05


class EventBuffer:
    """A deque of events bounded by ``capacity``, shared by producers and the worker.

    Queued events are ``log()``'s copies of the logged dicts, stamped under
    :data:`STEP_KEY` and :data:`TIME_KEY`; :meth:`take` returns them as
    :class:`Event` objects.

    The hot path (``Tracker.log``) appends to :attr:`events` directly and calls
    :meth:`make_room` only when ``len(events) >= limit``. That single comparison
    covers both rare cases:

    * waking the worker: while the wake-up is *armed*, ``limit`` is ``wake_at`` (the
      batch size); the first producer past it disarms it (``limit = capacity``) and
      wakes the worker once. The worker re-arms it when it starts draining. So the
      worker is woken at most once per batch, not once per event;
    * overflow: once ``len(events) >= capacity`` the policy applies.

    Appends and pops of a deque are atomic, so producers take no lock on the hot path;
    the lock below guards only the drop counter and blocking.

    Attributes:
        events: The queued events, oldest first.
        limit: Length at which a producer must call :meth:`make_room`.
        capacity: Maximum number of queued events.
        dropped: Events dropped by the overflow policy so far.
        max_depth: Deepest the buffer was seen (by :meth:`take` or at an overflow).
    """

    def __init__(
        self,
        capacity: int,
        *,
        wake_at: int,
        policy: OverflowPolicy,
    ) -> None:
        self.events: deque[dict[str, Any]] = deque()
        self.capacity = capacity
        self.wake_at = min(wake_at, capacity)
        self.policy = policy
        self.limit = self.wake_at
        self.dropped = 0
        self.max_depth = 0
        self.closed = False
        #: Whether ``log()`` must look for arrays and tensors to snapshot (refreshed by
        #: the worker: true once torch, numpy or jax is imported, if snapshots are on).
        self.inspect = False
        #: ``frozenset.issuperset`` of the types ``log()`` stores as they are.
        self.is_plain: Callable[[Iterable[type]], bool] = frozenset().issuperset
        #: Set once an event with placeholders for the worker was queued.
        self.deferred = False
        self._armed = True
        self._wake: Callable[[], None] = _nothing
        self._alive: Callable[[], bool] = _always
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._blocked = 0

    def connect(self, wake: Callable[[], None], alive: Callable[[], bool]) -> None:
        """Set how to wake the worker and how to tell whether it still runs."""
        self._wake = wake
        self._alive = alive

    # -- producer side ----------------------------------------------------------

    def make_room(self) -> bool:
        """Wake the worker if armed, then apply the overflow policy if full.

        Returns:
            ``True`` if the new event must be dropped (``drop_newest`` on a full buffer).
        """
        if self._armed:
            self._armed = False
            self.limit = self.capacity
            self._wake()
        events = self.events
        if len(events) < self.capacity:
            return False
        policy = self.policy
        with self._lock:
            self.max_depth = max(self.max_depth, len(events))
            if policy == "drop_newest":
                self.dropped += 1
                return True
            if policy == "drop_oldest":
                try:
                    events.popleft()
                except IndexError:  # the worker emptied it meanwhile
                    return False
                self.dropped += 1
                return False
            # block: wait until the worker has taken events out, or has stopped.
            self._blocked += 1
            try:
                while len(events) >= self.capacity and not self.closed:
                    self._wake()
                    self._room.wait(_BLOCK_POLL_SECONDS)
                    if not self._alive():
                        # Never block forever on a dead worker: count the event as
                        # dropped so the accounting stays exact.
                        self.dropped += 1
                        return True
            finally:
                self._blocked -= 1
            return False

    # -- worker side ------------------------------------------------------------

    def rearm(self) -> None:
        """Re-enable the wake-up (the worker is about to drain)."""
        self._armed = True
        self.limit = self.wake_at

    def take(self, count: int) -> EventBatch:
        """Remove and return up to ``count`` of the oldest events."""
        events = self.events
        depth = len(events)
        if depth > self.max_depth:
            self.max_depth = depth
        n = min(count, depth)
        if self.policy == "drop_oldest":
            # Producers may pop concurrently under this policy: tolerate an early end.
            batch: list[dict[str, Any]] = []
            pop = events.popleft
            try:
                for _ in range(n):
                    batch.append(pop())
            except IndexError:
                pass
        else:
            pop = events.popleft
            batch = [pop() for _ in range(n)]
        if self._blocked:
            with self._lock:
                self._room.notify_all()
        return EventBatch([(data.pop(STEP_KEY), data.pop(TIME_KEY), data) for data in batch])

    def close(self) -> None:
        """Release every blocked producer; later overflows no longer wait."""
        with self._lock:
            self.closed = True
            self._room.notify_all()

    def drop_count(self) -> int:
        """Return the number of dropped events (consistent with producers)."""
        with self._lock:
            return self.dropped


class EventBatch(Sequence[Event]):
    """One batch as handed to the backends: a read-only sequence of :class:`Event`.

    The rows are kept as plain ``(step, time, data)`` tuples and turned into ``Event``
    objects only when a backend reads them (once, shared by all backends). Built-in
    backends that only unpack rows read :attr:`rows` directly: creating and freeing a
    tuple-subclass instance costs ~0.25 µs per event more than a plain tuple.

    Attributes:
        rows: The ``(step, time, data)`` tuples, in logging order.
    """

    __slots__ = ("_events", "rows")

    def __init__(self, rows: list[tuple[int, float, dict[str, Any]]]) -> None:
        self.rows = rows
        self._events: list[Event] | None = None

    def _materialize(self) -> list[Event]:
        events = self._events
        if events is None:
            events = self._events = list(map(_new_tuple, repeat(Event, len(self.rows)), self.rows))
        return events

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...

    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        return self._materialize()[index]

    def __iter__(self) -> Iterator[Event]:
        return iter(self._materialize())

    def __repr__(self) -> str:
        return f"<EventBatch of {len(self.rows)} events>"


def _nothing() -> None:
    pass


def _always() -> bool:
    return True
