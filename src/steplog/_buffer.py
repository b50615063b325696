"""The bounded buffer between ``log()`` and the writer, with its overflow policies."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._options import OverflowPolicy

__all__ = ["LineBuffer", "RingCopy", "RingPending", "Row"]


#: An event ``log()`` could not encode on the spot (tensors to read from a device, or
#: references kept with ``snapshot=False``): ``(step, time, data)``, encoded by the writer.
Row = tuple[int, float, dict[str, Any]]


class RingPending(bytes):
    """A line still to be put into the writer process's ring (queued behind a row)."""

    __slots__ = ()


class RingCopy(bytes):
    """A line the writer process's ring had when it died: the run file has it (the
    writer thread wrote what the ring held); only the other backends still need it."""

    __slots__ = ()


# How long a blocked producer sleeps between checks that the writer is still alive.
_BLOCK_POLL_SECONDS = 0.05
# How long the writer, ending a run, waits for the lock before it goes on without it.
_STOP_LOCK_WAIT = 0.25


def _never() -> bool:
    return False


#: Whether ``log()`` may append without the lock: the GIL makes the append region of
#: the fast path atomic (see :class:`LineBuffer`). A free-threaded build running
#: without the GIL has no such guarantee: there, every line goes through the lock
#: (``limit`` stays 0). Decided once, at import: a free-threaded build may turn the GIL
#: on later (an extension that needs it), never off again, so "locked" stays correct.
LOCK_FREE: bool = getattr(sys, "_is_gil_enabled", lambda: True)()

#: The longest line ``log()`` appends without the lock. Longer ones (rare: a
#: 100-key record is ~2.5 KiB) take the locked path; the bound is what lets one count
#: comparison also keep the byte budget (see :meth:`LineBuffer._reopen`).
FAST_LINE = 16 * 2**10


class LineBuffer:
    """Encoded events waiting for the writer, bounded by a count and a byte budget.

    ``log()`` appends each event's JSON line (ending in ``\\n``) to :attr:`data`, one
    growing ``bytearray``: the line object is freed at once, on the thread that made
    it, and the writer takes a whole batch as one buffer. (Measured against a list of
    line objects: that kept every line alive until the writer freed it, from another
    thread, and cost the loop ~0.6 µs of CPU more per 10-key event.) The few events the
    writer must finish (:data:`Row`: tensors to read from a device) close the current
    ``bytearray`` into :attr:`segments` and queue behind it, so the order of ``log()``
    calls is kept.

    **The lock-free fast path** (``Tracker.log`` inlines it; :meth:`put` is the same)::

        if buffer.count < buffer.limit and size <= buffer.fast_line:
            buffer.count += 1
            buffer.data.extend(line)
            return

    takes no lock. Why that is safe with the GIL (CPython 3.10 to 3.14, default build):

    1. *The region is atomic.* CPython switches threads, and runs Python-level signal
       handlers, only at its "eval breaker" checks — on a backward jump, at a
       function's start, and right *after* a call returns — or when C code releases the
       GIL. From the ``count`` load to the end of ``extend`` there is no backward jump
       and one call, ``extend`` itself, whose check comes after it has appended; it
       never releases the GIL (a memcpy into a resized buffer) and runs no Python code
       (``line`` is ``bytes``). Nothing in the region allocates a container, so the
       garbage collector (and the finalizers it could run) cannot start inside it. So
       another thread, or a signal handler that calls ``log()``, runs entirely before
       the region or entirely after it: the check, the reservation and the append are
       one step. ``tests/test_hot_path.py`` checks, with a signal timer firing
       thousands of times inside ``log()``, that no handler ever runs inside it.
    2. *Lock holders close it first.* Every step under :attr:`lock` that reads or
       changes :attr:`count`, :attr:`data` or :attr:`segments` first sets ``limit =
       0`` (so no producer enters the region; by 1., none is inside it) and ends with
       :meth:`_reopen`, which computes the next ``limit``. The writer's :meth:`take`
       swaps :attr:`data` for a fresh ``bytearray`` and reads and resets :attr:`count`
       while it is closed: a producer that had loaded the old ``bytearray`` had also
       appended to it (1.), so nothing is lost, counted twice, or torn; everything the
       old lock-based reasoning about policies and accounting says still holds, because
       producers that bypass the lock only run while no lock holder is mid-step.
    3. *One comparison keeps every limit.* ``limit`` is at most the wake-up threshold
       (while armed: the producer that reaches it calls :meth:`put_slow`, which wakes
       the writer) and the capacity, and at most ``count + room // fast_line``, where
       ``room`` is what is left of the byte budget: each fast append adds at most
       ``fast_line`` bytes, so the fast path can never exceed the budget either. The
       first event that does not fit these conservative bounds takes
       :meth:`put_slow`, which decides exactly as before (overflow policy, wake-up)
       and reopens with fresh bounds.

    ``count += 1`` and ``data.extend(line)`` are each on one line and re-read the
    attribute: under a line-level tracer (a debugger's ``sys.settrace``, which can
    switch threads between lines), no increment or line is lost either; only the limits
    may then be passed by the few producers that interleave, and a batch's count may be
    one off from its lines (the total stays exact). An opcode-level tracer
    (``frame.f_trace_opcodes``) is outside this argument. On a free-threaded build
    without the GIL, 1. does not hold: :data:`LOCK_FREE` is false and ``limit`` stays
    0, so every line takes :meth:`put_slow`, under the lock.

    Attributes:
        lock: Guards everything below; lock-free producers only run while no holder is
            mid-step (see above).
        data: The newest queued lines (swapped for a fresh one by :meth:`take` and when
            a segment closes; never changed in place except by appends, and by a
            drop of its first line under the lock).
        segments: Older queued items, oldest first: ``bytearray`` runs of lines and rows.
        count: Events queued.
        limit: Count at which a producer must call :meth:`put_slow` (0: always).
        fast_line: Longest line the lock-free path appends.
        line_limit: Longest line queued as it is (``max_event_bytes``: the slow path
            records a longer event as a marker).
        capacity: Maximum number of queued events.
        byte_budget: Maximum bytes of queued lines (a longer single line still fits
            into an empty buffer).
        dropped: Events dropped by the overflow policy so far.
        max_depth: Most events seen queued (by :meth:`take` or at an overflow).
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
        self.fast_line = min(line_limit, FAST_LINE)
        self._segment_bytes = 0  # bytes of lines in segments
        self.dropped = 0
        self.max_depth = 0
        self.closed = False
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
        #: ``durability="process"``: the writer process's ring (see :meth:`attach_ring`).
        self.ring: Any = None
        self.ringed = 0  # lines log() put into the ring itself
        #: Ring mode: copies for the other backends dropped (the events are stored).
        self.others_dropped = 0
        self.others = False
        self._rows_pending = False
        self._ring_lock = threading.RLock()
        self._in_ring_put = False  # a signal handler's log() must not re-enter ring.put
        self._since_wake = 0
        self.limit = 0
        with self.lock:
            self._reopen()

    def connect(self, wake: Callable[[], None], alive: Callable[[], bool]) -> None:
        """Set how to wake the writer and how to tell whether it still runs (called by
        the writer thread, which this buffer then knows as such)."""
        self._wake = wake
        self._alive = alive
        self._writer = threading.get_ident()

    def attach_ring(self, ring: Any, *, others: bool) -> None:
        """Send lines straight into the writer process's ring (``durability="process"``).

        From now on ``limit`` stays 0, so every ``log()`` goes through
        :meth:`put_slow`, which puts its line into ``ring`` (a
        :class:`steplog._ring.ProcessWriter`) — where it survives a SIGKILL of this
        process — and, if ``others`` (other backends are attached), also queues it for
        the writer thread to hand to them. While rows (device tensors the writer must
        read first) wait in the buffer, later lines queue behind them as
        :class:`RingPending`, so the file keeps the order of the ``log()`` calls.
        """
        with self.lock:
            self.ring = ring
            self.others = others
            self.limit = 0

    # -- producer side ----------------------------------------------------------

    def put(self, line: bytes) -> None:
        """Queue one line (what ``Tracker.log`` does inline on its fast path)."""
        size = len(line)
        # The lock-free region (see the class docstring): no call before extend().
        if self.count < self.limit and size <= self.fast_line:
            self.count += 1
            self.data.extend(line)
            return
        self.put_slow(line)

    def put_slow(self, line: bytes) -> None:
        """Queue a line the hot path did not: wake the writer, apply the policy."""
        if self.ring is not None:
            self._put_ringed(line)
            return
        with self.lock:
            self.limit = 0  # closed while this step runs (see the class docstring)
            try:
                if self._nested():
                    self._put_late(bytearray(line))
                    return
                self._flush_late()
                if self._armed and self.count >= self.wake_at:
                    self._wake_if_armed()
                if not self._overflow(len(line)):
                    self._append(line)
                self._flush_late()
            finally:
                self._reopen()

    def put_row(self, row: Row) -> None:
        """Queue an event the writer must encode (see :data:`Row`)."""
        if self.ring is not None:
            if not self._take_ring_lock():
                self._rows_pending = True  # the writer: queue behind, never wait
                self._queue_item(row, wait=False)
                return
            try:
                self._rows_pending = True
                self._queue_item(row)
            finally:
                self._ring_lock.release()
            return
        self._queue_item(row)

    def _take_ring_lock(self) -> bool:
        """Take the ring lock; the writer thread never waits for it (a producer may hold
        it while it waits for room that only the writer makes): False, then."""
        if threading.get_ident() == self._writer:
            return self._ring_lock.acquire(blocking=False)
        self._ring_lock.acquire()
        return True

    def _queue_item(self, item: Any, *, wait: bool = True) -> None:
        """Queue a row or a ring-pending line behind the current lines.

        ``wait=False`` queues it even over the limits (a signal handler's line that
        must not wait; bounded by the signal rate).
        """
        with self.lock:
            self.limit = 0
            try:
                self.has_rows = True
                if self._nested():
                    self._put_late(item)
                    return
                self._flush_late()
                if self._armed and self.count >= self.wake_at:
                    self._wake_if_armed()
                if not (wait and self._overflow(0)):
                    self._close_segment()
                    self.segments.append(item)
                    self.count += 1
                self._flush_late()
            finally:
                self._reopen()

    def _append(self, line: bytes) -> None:
        # Never ``self.data += line``: that stores the attribute again, and would undo
        # a swap made meanwhile (the lock-free path appends with one call instead).
        self.count += 1
        self.data.extend(line)

    def _reopen(self) -> None:
        """Open the lock-free path again, with bounds that keep every limit (lock held;
        see the class docstring, 3.). A step interrupted on this thread (by a signal
        handler that logs) is still under way: it reopens when it ends."""
        if self._held() > 1:
            return
        if self.ring is not None or self._late or not LOCK_FREE:
            self.limit = 0
            return
        fast_line = self.fast_line = min(self.line_limit, FAST_LINE)
        room = (self.byte_budget - self._segment_bytes - len(self.data)) // fast_line
        limit = self.wake_at if self._armed else self.capacity
        self.limit = min(limit, self.count + room)

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

    def _close_segment(self) -> None:
        """Move the current lines into :attr:`segments` (lock held, fast path closed)."""
        fresh = bytearray()
        data = self.data
        if data:
            self.data = fresh
            self.segments.append(data)
            self._segment_bytes += len(data)

    def _wake_if_armed(self) -> None:
        if self._armed:
            self._armed = False
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
                self.limit = 0  # the writer reopened it while this thread waited
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
        line = True  # a line (in ring mode: a copy of one the ring has), not a row
        first: Any = None
        if segments:
            first = segments[0]
            if type(first) is bytearray:
                end = first.index(b"\n") + 1
                del first[:end]
                self._segment_bytes -= end
                if not first:
                    del segments[0]
            else:
                del segments[0]
                line = type(first) is RingCopy
        elif self.data:
            del self.data[: self.data.index(b"\n") + 1]
        else:  # only items queued by signal handlers are left
            line = type(self._late.pop(0)) is bytearray
        self.count -= 1
        if (self.ring is not None and line) or type(first) is RingCopy:
            self.others_dropped += 1  # a copy of a line in the ring: stored all the same
        else:
            self.dropped += 1

    # -- durability="process" ---------------------------------------------------

    def _put_ringed(self, line: bytes) -> None:
        if not self._take_ring_lock():
            # The writer thread (a value's __repr__, a callback) while a producer holds
            # the ring: queue the line for itself to put in, without waiting.
            self._rows_pending = True
            self._queue_item(RingPending(line), wait=False)
            return
        try:
            ring = self.ring  # once: the writer thread may take the file over meanwhile
            if ring is not None:
                self._put_ringed_locked(ring, line)
                return
        finally:
            self._ring_lock.release()
        self.put_slow(line)  # it did, before this call got here

    def _put_ringed_locked(self, ring: Any, line: bytes) -> None:
        """Put a line into the ring, or queue it behind the rows (ring lock held)."""
        if self._in_ring_put or threading.get_ident() in self._waiting:
            # A signal handler interrupted a put on this thread: the ring's copy is
            # not reentrant, so queue the line for the writer — without waiting for
            # room, which the writer could only make once the interrupted put (that
            # holds the ring) goes on.
            self._rows_pending = True
            self._queue_item(RingPending(line), wait=False)
            return
        if self._rows_pending:
            self._queue_item(RingPending(line))
            return
        self._in_ring_put = True
        try:
            self._put_into_ring(ring, line)
        finally:
            self._in_ring_put = False

    def _put_into_ring(self, ring: Any, line: bytes) -> None:
        """Put a line into the ring (ring lock held), applying the overflow policy."""
        if not ring.put(line):
            ring.wake()
            if self.policy is not OverflowPolicy.BLOCK and ring.alive():
                with self.lock:  # a line in the ring cannot be dropped again
                    self.dropped += 1
                return
            if not self._wait_for_ring(ring, line):
                # The writer process is gone (the writer thread takes the file over and
                # writes what the ring held), or this is the writer thread, which must
                # not wait: the line queues for the writer thread, in order.
                self._rows_pending = True
                self._queue_item(RingPending(line))
                return
        self.ringed += 1
        self._since_wake += 1
        if self._since_wake >= self.wake_at:
            self._since_wake = 0
            ring.wake()
        if self.others:
            self._queue_copy(line)

    def _wait_for_ring(self, ring: Any, line: bytes) -> bool:
        """Wait until ``line`` is in the ring (``block``); False if it never will be
        from here: the writer process died, or this is the writer thread."""
        ident = threading.get_ident()
        if ident == self._writer:
            return False
        self._waiting.add(ident)
        try:
            while not ring.put(line):
                if not ring.wait_for_room(len(line), _BLOCK_POLL_SECONDS) and not ring.alive():
                    return False
        finally:
            self._waiting.discard(ident)
        return True

    def _queue_copy(self, line: bytes) -> None:
        """Queue a copy of a line already in the ring, for the other backends.

        The event is stored (the ring has it); only the other backends can miss it, so
        a copy that finds no room under a drop policy counts in :attr:`others_dropped`,
        never in :attr:`dropped`.
        """
        with self.lock:
            self.limit = 0
            try:
                self._queue_copy_locked(line)
            finally:
                self._reopen()

    def _queue_copy_locked(self, line: bytes) -> None:
        if self.ring is not None:
            if self.count >= self.wake_at:
                self._wake_if_armed()
            if self.policy is not OverflowPolicy.BLOCK and self._full(len(line)):
                self.others_dropped += 1
                return
            if self._overflow(len(line)):  # block, and the writer died
                self.dropped -= 1
                self.others_dropped += 1
                return
            if self.ring is not None:  # (the wait for room lets go of the lock)
                self._append(line)
                return
        # The writer took the file over since the put: the file has this line.
        self._close_segment()
        self.segments.append(RingCopy(line))
        self.count += 1

    def detach_ring(self) -> None:
        """The writer process died and the writer thread took the run file over (after
        writing every line the ring held): lines queue here again, as without a ring.

        Copies of lines the ring had, queued for the other backends, become
        :class:`RingCopy` lines (one each), so that the writer does not write them to
        the file twice; a copy queued by a put that raced this call becomes one too.
        """
        with self.lock:
            self.limit = 0
            self._close_segment()
            segments: list[Any] = []
            for item in self.segments:
                if type(item) is bytearray:
                    segments += [RingCopy(line) for line in item.splitlines(keepends=True)]
                else:
                    segments.append(item)
            self.segments = segments
            self._late = [
                RingCopy(item) if type(item) is bytearray else item for item in self._late
            ]
            self._segment_bytes = 0
            self.ring = None
            self._rows_pending = False
            self.has_rows = True
            self._reopen()
            self._room.notify_all()

    def ring_idle(self) -> None:
        """The writer put every row and pending line it took into the ring: lines go
        straight in again, unless more of them were queued meanwhile.

        Never waits for a lock: a producer may hold one while it waits for room that
        only the writer's next take makes (then the lines keep queuing behind the rows
        for one more round).
        """
        if not self._ring_lock.acquire(blocking=False):
            return
        try:
            # Nor for the buffer lock while holding the ring lock: log() takes them in
            # the other order (a signal handler's log() inside a log() holding it).
            if not self.lock.acquire(blocking=False):
                return
            try:
                if not any(type(item) is not bytearray for item in self.segments):
                    self._rows_pending = False
            finally:
                self.lock.release()
        finally:
            self._ring_lock.release()

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
            self.limit = 0
            self._armed = True
            self._reopen()

    def take(self, *, stopping: Callable[[], bool] = _never) -> tuple[list[Any], int]:
        """Remove and return every queued item (``bytearray`` runs and rows) and the count."""
        fresh = bytearray()
        with self.writer_lock(stopping):
            self.limit = 0  # closed: no producer appends until _reopen (class docstring)
            try:
                self._flush_late()
                items = self.segments
                self.segments = []
                data = self.data
                self.data = fresh
                count = self.count
                self.count = 0
                if data:
                    items.append(data)
                if count > self.max_depth:
                    self.max_depth = count
                self._segment_bytes = 0
                if self._blocked:
                    self._room.notify_all()
            finally:
                self._reopen()
        return items, count

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
