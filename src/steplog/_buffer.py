"""The bounded buffer between ``log()`` and the writer, with its overflow policies.

:class:`LineBuffer` is the producer side of ``durability="thread"``; the writer
process's mode extends it (:class:`steplog._ringbuffer.RingBuffer`) through two hooks:
the ``limit`` the hot path gets back after a slow step, and how a dropped item counts.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._options import OverflowPolicy
from .errors import InactiveRunError

__all__ = ["LineBuffer", "Row"]


#: An event ``log()`` could not encode on the spot (tensors to read from a device, or
#: references kept with ``snapshot=False``): ``(step, time, data)``, encoded by the writer.
Row = tuple[int, float, dict[str, Any]]


# How long a blocked producer sleeps between checks that the writer is still alive.
_BLOCK_POLL_SECONDS = 0.05
# How long the writer, ending a run, waits for the lock before it goes on without it.
_STOP_LOCK_WAIT = 0.25


def _never() -> bool:
    return False


def _no_deadline() -> float | None:
    return None


class LineBuffer:
    """Encoded events waiting for the writer, bounded by a count and a byte budget.

    ``log()`` appends each event's JSON line (ending in ``\\n``) to :attr:`data`, one
    growing ``bytearray``, under :attr:`lock`: the line object is freed at once, on the
    thread that made it, and the writer takes a whole batch as one buffer. (Measured
    against a list of line objects: that kept every line alive until the writer freed
    it, from another thread, and cost the loop ~0.6 µs of CPU more per 10-key event.)
    The few events the writer must finish (:data:`Row`: tensors to read from a device)
    close the current ``bytearray`` into :attr:`segments` and queue behind it, so the
    order of ``log()`` calls is kept.

    The hot path (``Tracker.log``) checks ``count < limit`` and that the line fits
    ``line_limit`` and ``byte_limit`` under the lock and calls :meth:`put_slow` otherwise. The first
    comparison covers both rare cases:

    * waking the writer: while the wake-up is *armed*, ``limit`` is ``wake_at`` (the
      batch size); the first producer past it disarms it (``limit = capacity``) and
      wakes the writer once. The writer re-arms it when it takes a batch. So the writer
      is woken at most once per batch, not once per event;
    * overflow: once ``count >= capacity`` (or the bytes reach ``byte_budget``) the
      policy applies;
    * anything else a subclass must see: ``limit = 0`` sends every ``log()`` through
      :meth:`put_slow` (a signal handler's late item; the writer process's ring);
    * the end of the run (:meth:`end`): ``limit`` stays 0, and :meth:`put_slow` turns
      the event away under the lock.

    Attributes:
        lock: Guards everything below; producers hold it only to append.
        data: The newest queued lines.
        segments: Older queued items, oldest first: ``bytearray`` runs of lines and rows.
        count: Events queued.
        limit: Count at which a producer must call :meth:`put_slow`.
        byte_limit: Length :attr:`data` may reach before a producer must call it.
        line_limit: Longest line the hot path queues itself (``max_event_bytes``: the
            slow path records a longer event as a marker).
        capacity: Maximum number of queued events.
        byte_budget: Maximum bytes of queued lines (a longer single line still fits
            into an empty buffer).
        dropped: Events dropped by the overflow policy so far.
        max_depth: Most events seen queued (by :meth:`take` or at an overflow).
        ended: The writer's last take is next (:meth:`end`): producers are turned away.
        closed: Overflows no longer wait (:meth:`end`, or :meth:`close`).
    """

    def __init__(
        self,
        capacity: int,
        *,
        wake_at: int,
        policy: OverflowPolicy,
        byte_budget: int = 64 * 2**20,
        line_limit: int = 16 * 2**20,
    ) -> None:
        # Reentrant: a signal handler that logs may interrupt a log() holding it (every
        # change under it is one attribute update, so the interrupted call stays sound).
        self.lock = threading.RLock()
        self._held: Callable[[], int] = _recursion_count(self.lock)
        #: Items signal handlers queued while this thread was inside a step under the
        #: lock (see :meth:`_put_late`), taken after everything else.
        self._late: list[Any] = []
        self.line_limit = line_limit
        self.data = bytearray()
        self.segments: list[Any] = []
        self.count = 0
        self.capacity = capacity
        self.wake_at = min(wake_at, capacity)
        self.byte_budget = byte_budget
        self.policy = OverflowPolicy(policy)
        self.limit = self.wake_at
        self.byte_limit = byte_budget
        self._segment_bytes = 0  # bytes of lines in segments
        self.dropped = 0
        self.max_depth = 0
        self.closed = False
        self.ended = False
        #: Whether ``log()``'s slow path must look for arrays and tensors (refreshed by
        #: the writer: true once torch, numpy or jax is imported).
        self.libraries = False
        #: ``frozenset.issuperset`` of the types ``log()`` stores as they are.
        self.is_plain: Callable[[Iterable[type]], bool] = frozenset().issuperset
        #: Set once a :data:`Row` was queued: the writer then looks for rows.
        self.has_rows = False
        self._armed = True
        self._wake: Callable[[], None] = _nothing
        self._alive: Callable[[], bool] = _always
        #: The writer thread: a log() it makes (from a value's __repr__, a backend, a
        #: callback) never waits for room that only it can make.
        self._writer: int | None = None
        self._room = threading.Condition(self.lock)
        self._blocked = 0
        self._waiting: set[int] = set()  # threads waiting for room

    def connect(self, wake: Callable[[], None], alive: Callable[[], bool]) -> None:
        """Set how to wake the writer and how to tell whether it still runs (called by
        the writer thread, which this buffer then knows as such)."""
        self._wake = wake
        self._alive = alive
        self._writer = threading.get_ident()

    # -- producer side ----------------------------------------------------------

    def put(self, line: bytes) -> None:
        """Queue one line (what ``Tracker.log`` does inline on its fast path)."""
        size = len(line)
        with self.lock:
            if (
                self.count < self.limit
                and size <= self.line_limit
                and len(self.data) + size <= self.byte_limit
            ):
                self.data += line
                self.count += 1
                return
        self.put_slow(line)

    def put_slow(self, line: bytes) -> None:
        """Queue a line the hot path did not: wake the writer, apply the policy."""
        with self.lock:
            self._refuse_if_ended()
            if self._nested():
                self._put_late(bytearray(line))
                return
            self._flush_late()
            if self.count >= self.limit:
                self._wake_if_armed()
            if not self._overflow(len(line)):
                self._refuse_if_ended()  # the wait for room let go of the lock
                self._append(line)
            self._flush_late()

    def put_row(self, row: Row) -> None:
        """Queue an event the writer must encode (see :data:`Row`)."""
        self._queue_item(row)

    def _queue_item(self, item: Any, *, wait: bool = True) -> None:
        """Queue a row (or another item that is not a line) behind the current lines.

        ``wait=False`` queues it even over the limits (a signal handler's line that
        must not wait; bounded by the signal rate).
        """
        with self.lock:
            self._refuse_if_ended()
            self.has_rows = True
            if self._nested():
                self._put_late(item)
                return
            self._flush_late()
            if self.count >= self.limit:
                self._wake_if_armed()
            if not (wait and self._overflow(0)):
                self._refuse_if_ended()  # the wait for room let go of the lock
                self._close_segment()
                self.segments.append(item)
                self.count += 1
            self._flush_late()

    def _refuse_if_ended(self) -> None:
        """Turn a new event away once the run is ending (lock held; see :meth:`end`)."""
        if self.ended:
            raise InactiveRunError(
                "log() called with no active run: the run ended while the call was under "
                "way (finish() or the exit in another thread); the event is not recorded"
            )

    def _append(self, line: bytes) -> None:
        self.data += line
        self.count += 1

    def _nested(self) -> bool:
        """Whether this thread already held the lock: a signal handler's ``log()`` that
        interrupted one of this buffer's own steps (lock held)."""
        return self._held() > 1

    def _put_late(self, item: Any) -> None:
        """Queue ``item`` without touching what an interrupted step may be changing.

        The interrupted step (a drop, closing a segment) may be half done, so the item
        goes on a list of its own and is counted; it is never dropped or waited for
        (over the limits by one event per signal). The interrupted step moves it into
        the queue when it ends, and ``limit = 0`` sends the next ``log()`` through
        :meth:`put_slow`, which does the same first: so nothing logged later by the
        same code goes ahead of it.
        """
        self._late.append(item)
        self.count += 1
        self.limit = 0

    def _flush_late(self) -> None:
        """Move the items signal handlers queued aside into the queue (lock held)."""
        if not self._late:
            return
        self._close_segment()
        for item in self._late:
            self.segments.append(item)
            if type(item) is bytearray:
                self._segment_bytes += len(item)
        self._late = []
        self.byte_limit = self.byte_budget - self._segment_bytes
        self._reset_limit()

    def _reset_limit(self) -> None:
        """Give the hot path its ``limit`` back after a slow step (lock held): the batch
        size while the wake-up is armed, the capacity once it fired; 0 for good once the
        run is ending (:meth:`end`)."""
        if self.ended:
            self.limit = 0
        else:
            self.limit = self.wake_at if self._armed else self.capacity

    def _close_segment(self) -> None:
        data = self.data
        if data:
            self.segments.append(data)
            self._segment_bytes += len(data)
            self.data = bytearray()
            self.byte_limit = self.byte_budget - self._segment_bytes

    def _wake_if_armed(self) -> None:
        if self._armed:
            self._armed = False
            self._reset_limit()
            self._wake()

    def _overflow(self, size: int) -> bool:
        """Apply the policy until the event fits (lock held); True: drop the new event."""
        if not self._full(size):
            return False
        self.max_depth = max(self.max_depth, self.count)
        policy = self.policy
        if policy is OverflowPolicy.DROP_NEWEST:
            self.dropped += 1
            return True
        if policy is OverflowPolicy.DROP_OLDEST:
            while self.count and self._full(size):
                self._drop_oldest()
            return False
        # block: wait until the writer has taken events out, or has stopped. A signal
        # handler that logs while this thread waits here goes in over the limit instead
        # of waiting too (handlers would pile up, one more per signal).
        ident = threading.get_ident()
        if ident in self._waiting or ident == self._writer:
            return False
        self._waiting.add(ident)
        self._blocked += 1
        try:
            while self._full(size) and not self.closed:
                self._wake()
                self._room.wait(_BLOCK_POLL_SECONDS)
                if self.ended:
                    break  # the caller turns the event away (a drop now would not count)
                if not self._alive():
                    # Never block forever on a dead writer: count the event as dropped
                    # so the accounting stays exact.
                    self.dropped += 1
                    return True
        finally:
            self._blocked -= 1
            self._waiting.discard(ident)
        return False

    def _full(self, size: int) -> bool:
        if self.count >= self.capacity:
            return True
        queued = self._segment_bytes + len(self.data)
        return size > 0 and queued > 0 and queued + size > self.byte_budget

    def _drop_oldest(self) -> None:
        """Drop the oldest queued event (lock held)."""
        segments = self.segments
        item: Any = None  # what was dropped, when it is not a line of a run of lines
        if segments:
            first = segments[0]
            if type(first) is bytearray:
                end = first.index(b"\n") + 1
                del first[:end]
                self._segment_bytes -= end
                self.byte_limit = self.byte_budget - self._segment_bytes
                if not first:
                    del segments[0]
            else:
                del segments[0]
                item = first
        elif self.data:
            del self.data[: self.data.index(b"\n") + 1]
        else:  # only items queued by signal handlers are left
            late = self._late.pop(0)
            if type(late) is not bytearray:
                item = late
        self.count -= 1
        self._count_drop(item)

    def _count_drop(self, item: Any) -> None:
        """Count an event :meth:`_drop_oldest` dropped (``item``: None for a line)."""
        self.dropped += 1

    # -- writer side ------------------------------------------------------------

    @contextlib.contextmanager
    def writer_lock(self, stopping: Callable[[], bool]) -> Iterator[None]:
        """The lock, for the writer. Once the run is ending (``stopping()``), it waits a
        little only: the end may come from a signal handler (SIGTERM, Ctrl-C) that
        interrupted a ``log()`` holding the lock, and that waits for this very end —
        that thread is frozen, so the writer goes on without the lock (at most the
        interrupted event's count is off by one, in a process about to end) rather than
        wait for it forever."""
        lock = self.lock
        held = lock.acquire(timeout=_STOP_LOCK_WAIT)
        while not held:
            if stopping():
                if not (held := lock.acquire(timeout=_STOP_LOCK_WAIT)):
                    break
            else:
                held = lock.acquire(timeout=_STOP_LOCK_WAIT)
        try:
            yield
        finally:
            if held:
                lock.release()

    def rearm(self, *, stopping: Callable[[], bool] = _never) -> None:
        """Re-enable the wake-up (the writer is about to take a batch)."""
        with self.writer_lock(stopping):
            self._armed = True
            if self._late:
                self.limit = 0
            else:
                self._reset_limit()

    def take(self, *, stopping: Callable[[], bool] = _never) -> tuple[list[Any], int]:
        """Remove and return every queued item (``bytearray`` runs and rows) and the count."""
        with self.writer_lock(stopping):
            count = self.count
            if count > self.max_depth:
                self.max_depth = count
            self._flush_late()
            self._close_segment()
            items = self.segments
            self.segments = []
            self.count = 0
            self._segment_bytes = 0
            self.byte_limit = self.byte_budget
            if self._blocked:
                self._room.notify_all()
        return items, count

    def end(
        self,
        *,
        stopping: Callable[[], bool] = _never,
        remaining: Callable[[], float | None] = _no_deadline,
    ) -> None:
        """The run is ending: turn producers away; the writer's last take comes next.

        Called by the writer once it has the stop, before its last take. The tracker no
        longer hands this buffer out by then, but a ``log()`` of another thread may hold
        it still (it read it just before ``finish()``, or it waits for room). From here
        on such a call raises ``InactiveRunError``: ``ended`` is set under the lock, and a
        producer queues an event (or counts a drop) only under the lock with ``ended``
        unset — so the last take gets every event a producer counted, and the run end's
        ``logged == written + dropped`` holds. ``limit`` stays 0 (the hot path's check
        fails, so every ``log()`` reaches :meth:`put_slow`, which raises); a producer
        waiting for room wakes up to it. ``remaining``: how long the stop lets a
        subclass wait for a producer still under way (the stop's deadline).
        """
        with self.writer_lock(stopping):
            self.ended = self.closed = True
            self.limit = 0
            # RuntimeError: writer_lock went on without the lock (a frozen producer; see
            # there); waiting producers see ``ended`` at their next poll.
            with contextlib.suppress(RuntimeError):
                self._room.notify_all()

    def close(self) -> None:
        """Release every blocked producer; later overflows no longer wait."""
        with self.lock:
            self.closed = True
            self._room.notify_all()

    def drop_count(self, *, stopping: Callable[[], bool] = _never) -> int:
        """Return the number of dropped events (consistent with producers)."""
        with self.writer_lock(stopping):
            return self.dropped


def _nothing() -> None:
    pass


def _recursion_count(lock: Any) -> Callable[[], int]:
    """How many times this thread holds ``lock`` (an ``RLock``)."""
    count = getattr(lock, "_recursion_count", None)
    if count is not None:  # Python >= 3.11, the C RLock
        return count  # type: ignore[no-any-return]

    def held() -> int:  # Python 3.10
        return _depth(lock) if lock._is_owned() else 0

    return held


def _depth(lock: Any) -> int:
    # The pure-Python RLock keeps its count in ``_count``; the C one of 3.10 shows it in
    # its repr ("count=N").
    count = getattr(lock, "_count", None)
    if count is not None:
        return int(count)
    text = repr(lock)
    marker = "count="
    at = text.find(marker)
    return int(text[at + len(marker) :].split(" ")[0].rstrip(">")) if at >= 0 else 1


def _always() -> bool:
    return True
