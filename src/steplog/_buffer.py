"""The bounded buffer between ``log()`` and the writer, with its overflow policies.

:class:`LineBuffer` is the producer side of ``durability="thread"``; the writer
process's mode extends it (:class:`steplog._ringbuffer.RingBuffer`) through two hooks:
the ``limit`` the hot path gets back after a slow step, and how a dropped item counts.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._options import OverflowPolicy
from .errors import InactiveRunError

__all__ = ["LineBuffer", "Row", "refuse_hidden_slots", "shadows_slots"]


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


#: Whether ``log()`` may append without the lock: the GIL makes the append region of
#: the fast path atomic (see :class:`LineBuffer`). A free-threaded build running
#: without the GIL has no such guarantee: there, every line goes through the lock
#: (``limit`` stays 0). Decided once, at import: a free-threaded build may turn the GIL
#: on later (an extension that needs it), never off again, so "locked" stays correct.
LOCK_FREE: bool = getattr(sys, "_is_gil_enabled", lambda: True)()


def _extension() -> Any:
    """The compiled helpers (``steplog._speedups``), or None: not built (no compiler at
    install time), turned off (``STEPLOG_PURE_PYTHON=1``), or a build without the GIL
    (the compiled append rests on it, as the lock-free path does)."""
    if os.environ.get("STEPLOG_PURE_PYTHON") or not LOCK_FREE:
        return None
    try:
        from . import _speedups
    except ImportError:
        return None
    return _speedups


#: ``steplog._speedups`` where it is built and used (see :func:`_extension`), else None:
#: ``Tracker.log`` (``tracker._compiled_log``), the append under the lock here, and the
#: writer's recycling of a written batch take it from here.
SPEEDUPS = _extension()
_append_kept = SPEEDUPS.append if SPEEDUPS is not None else None


def shadows_slots(cls: type, base: type) -> bool:
    """Whether ``cls`` finds anything but ``base``'s own slot under one of its names (a
    slot of its own, a class attribute, a property): the compiled ``log()``, which reads
    ``base``'s slots at their offsets, would not see it."""
    return any(
        inspect.getattr_static(cls, name, None) is not base.__dict__[name]
        for name in base.__slots__  # type: ignore[attr-defined]
    )


def refuse_hidden_slots(cls: type, base: type) -> None:
    """Refuse a subclass ``cls`` of ``base`` that hides one of ``base``'s slots (for
    the classes whose slots the compiled ``log()`` reads, and that no user subclasses)."""
    if shadows_slots(cls, base):
        raise TypeError(f"{cls.__name__} must not hide {base.__name__}'s slots")


#: The longest line ``log()`` appends without the lock. Longer ones (rare: a
#: 100-key record is ~2.5 KiB) take the locked path; the bound is what lets one count
#: comparison also keep the byte budget (see :meth:`LineBuffer._reset_limit`).
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

    **The lock-free fast path** (``Tracker.log`` inlines it, in Python and in its
    compiled form, ``steplog._speedups``; :meth:`put` is the same)::

        if buffer.count < buffer.limit and size <= buffer.fast_line:
            buffer.data += line
            buffer.count += 1
            return

    takes no lock. Why that is safe with the GIL (CPython 3.10 to 3.14, default build):

    1. *The region is atomic.* CPython switches threads, and runs Python-level signal
       handlers, only at its "eval breaker" checks — on a backward jump, at a
       function's start (3.11 on), and right *after* a call returns; 3.10 also checks
       at a conditional jump that is taken, where the limit check failed and the
       producer leaves the region for :meth:`put_slow` — or when C code releases the
       GIL. From the ``count`` load to the function's return there is no backward jump
       and no call: the append is an in-place concatenation (``BINARY_OP``, which never
       checks), which never releases the GIL (a memcpy into a resized buffer) and runs
       no Python code (``line`` is ``bytes``, ``data`` a plain attribute); its
       ``STORE_ATTR`` stores back the very ``bytearray`` it loaded, since nothing can
       swap it in between. (Measured: ~80 ns less per call than ``data.extend(line)``,
       whose method call checks only after it has appended.) Nothing in the region
       allocates a container, so the garbage collector (and the finalizers it could
       run) cannot start inside it. So another thread, or a signal handler that calls
       ``log()``, runs entirely before the region or entirely after it: the check, the
       reservation and the append are one step. ``tests/test_hot_path.py`` checks,
       with a signal timer firing thousands of times inside ``log()``, that no handler
       ever runs inside it (and fails if a call is put there). The compiled ``log()``
       is atomic for a plainer reason: from reading ``count`` to the append it runs no
       Python code and never releases the GIL.
    2. *Lock holders close it first.* Every step under :attr:`lock` that reads or
       changes :attr:`count`, :attr:`data` or :attr:`segments` first sets ``limit =
       0`` (so no producer enters the region; by 1., none is inside it) and ends with
       :meth:`_reset_limit`, which computes the next ``limit``. The writer's :meth:`take`
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
       and reopens with fresh bounds (:meth:`_reset_limit`).

    The end of the run (:meth:`end`) closes the path for good: ``limit`` stays 0, and
    :meth:`put_slow` turns the event away under the lock (a producer whose region ran
    before it queued its line before the last take: it is written and counted).

    Subclasses (the writer process's mode, :class:`steplog._ringbuffer.RingBuffer`)
    extend it through two hooks: :meth:`_reset_limit`, the ``limit`` the hot path gets
    back after a slow step (0: every ``log()`` takes :meth:`put_slow`), and
    :meth:`_count_drop`, how a dropped item counts.

    ``count += 1`` and ``data += line`` are each on one line and re-read the
    attribute: under a line-level tracer (a debugger's ``sys.settrace``, which can
    switch threads between lines), no increment or line is lost either; only the limits
    may then be passed by the few producers that interleave, and a batch's count may be
    one off from its lines (the total stays exact). An opcode-level tracer
    (``frame.f_trace_opcodes``, ``sys.monitoring``'s instruction events) is outside
    this argument: one that switches threads between the load and the store of
    ``data`` can put back a ``bytearray`` the writer already took. On a free-threaded build
    without the GIL, 1. does not hold: :data:`LOCK_FREE` is false and ``limit`` stays
    0, so every line takes :meth:`put_slow`, under the lock.

    Attributes:
        lock: Guards everything below; lock-free producers only run while no holder is
            mid-step (see above).
        data: The newest queued lines (swapped for a fresh one by :meth:`take` and when
            a segment closes; never changed in place except by appends, and by a
            drop of its first line under the lock).
        spare: The ``bytearray`` :meth:`take` makes the next :attr:`data`: one the
            writer has written and emptied with its allocation kept (``Writer._recycle``,
            compiled extension only), else None (a new one). Appends by the compiled
            ``log()`` and by :meth:`_append` fill the allocation without reallocating.
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
        ended: The writer's last take is next (:meth:`end`): producers are turned away.
        closed: Overflows no longer wait (:meth:`end`, or :meth:`close`).
    """

    # Slots: fixed offsets, which the compiled ``log()`` reads directly (its hot
    # attributes: count, limit, fast_line, data), and CPython's fastest attribute access
    # on every version (3.13's instance dicts lose their inline values beside slots).
    __slots__ = (
        "__weakref__",
        "_alive",
        "_armed",
        "_blocked",
        "_held",
        "_late",
        "_room",
        "_segment_bytes",
        "_waiting",
        "_wake",
        "_writer",
        "byte_budget",
        "capacity",
        "closed",
        "count",
        "data",
        "dropped",
        "ended",
        "fast_line",
        "has_rows",
        "is_plain",
        "libraries",
        "limit",
        "line_limit",
        "lock",
        "max_depth",
        "policy",
        "segments",
        "spare",
        "wake_at",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        refuse_hidden_slots(cls, LineBuffer)

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
        self.spare: bytearray | None = None
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
        self.limit = 0
        LineBuffer._reset_limit(self)  # (this class's: a subclass is not set up yet)

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
        # The lock-free region (see the class docstring): no call in it.
        if self.count < self.limit and size <= self.fast_line:
            self.data += line
            self.count += 1
            return
        self.put_slow(line)

    def put_slow(self, line: bytes) -> None:
        """Queue a line the hot path did not: wake the writer, apply the policy."""
        with self.lock:
            self.limit = 0  # closed while this step runs (see the class docstring)
            try:
                self._refuse_if_ended()
                if self._nested():
                    self._put_late(bytearray(line))
                    return
                self._flush_late()
                if self._armed and self.count >= self.wake_at:
                    self._wake_if_armed()
                if not self._overflow(len(line)):
                    self._refuse_if_ended()  # the wait for room let go of the lock
                    self._append(line)
                self._flush_late()
            finally:
                self._reset_limit()

    def put_row(self, row: Row) -> None:
        """Queue an event the writer must encode (see :data:`Row`)."""
        self._queue_item(row)

    def _queue_item(self, item: Any, *, wait: bool = True) -> None:
        """Queue a row (or another item that is not a line) behind the current lines.

        ``wait=False`` queues it even over the limits (a signal handler's line that
        must not wait; bounded by the signal rate).
        """
        with self.lock:
            self.limit = 0
            try:
                self._refuse_if_ended()
                self.has_rows = True
                if self._nested():
                    self._put_late(item)
                    return
                self._flush_late()
                if self._armed and self.count >= self.wake_at:
                    self._wake_if_armed()
                if not (wait and self._overflow(0)):
                    self._refuse_if_ended()  # the wait for room let go of the lock
                    self._close_segment()
                    self.segments.append(item)
                    self.count += 1
                self._flush_late()
            finally:
                self._reset_limit()

    def _refuse_if_ended(self) -> None:
        """Turn a new event away once the run is ending (lock held; see :meth:`end`)."""
        if self.ended:
            raise InactiveRunError(
                "log() called with no active run: the run ended while the call was under "
                "way (finish() or the exit in another thread); the event is not recorded"
            )

    def _append(self, line: bytes) -> None:
        # Under the lock (not a hot path): extend() leaves the attribute alone.
        # Append, then count: an append that fails (BufferError: a memoryview of data
        # lives) leaves nothing counted.
        if _append_kept is not None and type(line) is bytes:
            _append_kept(self.data, line)  # (keeps a recycled allocation: see spare)
        else:
            self.data.extend(line)
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

    def _reset_limit(self) -> None:
        """Give the hot path its ``limit`` back after a slow step (lock held): bounds
        that keep every limit (the class docstring, 3.): at most the batch size while
        the wake-up is armed, the capacity once it fired, and what the byte budget has
        room for; 0 for good once the run is ending (:meth:`end`). A step interrupted
        on this thread (by a signal handler that logs) is still under way: it reopens
        when it ends."""
        if self._held() > 1:
            return
        if self.ended or self._late or not LOCK_FREE:
            self.limit = 0
            return
        fast_line = self.fast_line = min(self.line_limit, FAST_LINE)
        room = (self.byte_budget - self._segment_bytes - len(self.data)) // fast_line
        limit = self.wake_at if self._armed else self.capacity
        self.limit = min(limit, self.count + room)

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
            self.limit = 0
            self._armed = True
            self._reset_limit()

    def take(self, *, stopping: Callable[[], bool] = _never) -> tuple[list[Any], int]:
        """Remove and return every queued item (``bytearray`` runs and rows) and the count."""
        fresh = self.spare
        if fresh is None:
            fresh = bytearray()
        self.spare = None
        with self.writer_lock(stopping):
            self.limit = 0  # closed: no producer appends until _reset_limit (docstring)
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
                self._reset_limit()
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
        unset, or in the lock-free region, which runs wholly before the ``limit = 0``
        stored here (its line is then queued for the last take) or fails its check
        after it — so the last take gets every event a producer counted, and the run
        end's ``logged == written + dropped`` holds. ``limit`` stays 0 (the hot path's check
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
