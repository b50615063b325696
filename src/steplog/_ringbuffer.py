"""The producer side of ``durability="process"``: ``log()`` puts lines into the ring.

:class:`RingBuffer` is the :class:`~steplog._buffer.LineBuffer` of a run whose file the
writer process writes (:mod:`steplog._ring`). Once the ring is attached, every
``log()`` takes :meth:`RingBuffer.put_slow`, which copies its line into the ring — where
it survives a SIGKILL of this process — and, if other sinks are attached, also queues a
copy for the writer thread to hand to them. The writer's side of the same mode is
:class:`steplog._durability.ProcessDurability`.

The queue keeps two kinds of items of its own here: :class:`RingPending`, a line still
to be put into the ring by the writer thread (it queued behind a row, or its producer
could not put it in itself), and :class:`RingCopy`, a copy of a line the ring had when
the writer process died (the file has it; only the other sinks still need it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._buffer import _BLOCK_POLL_SECONDS, _STOP_LOCK_WAIT, LineBuffer, Row, _never, _no_deadline
from ._options import OverflowPolicy

if TYPE_CHECKING:  # _ring imports POSIX-only modules: loaded only when a ring starts
    from ._ring import ProcessWriter

__all__ = ["RingBuffer", "RingCopy", "RingPending"]

# How many times end() waits _STOP_LOCK_WAIT for a producer still in the ring (~1 s).
_END_LOCK_TRIES = 4


class RingPending(bytes):
    """A line still to be put into the writer process's ring (queued behind a row)."""

    __slots__ = ()


class RingCopy(bytes):
    """A line the writer process's ring had when it died: the run file has it (the
    writer thread wrote what the ring held); only the other backends still need it."""

    __slots__ = ()


class RingBuffer(LineBuffer):
    """A :class:`~steplog._buffer.LineBuffer` whose lines go into the writer process's
    ring once one is attached (:meth:`attach`), and queue as usual again once the
    writer thread took the run file over (:meth:`detach`).

    Attributes:
        ring: The writer process while it writes the run file, else None.
        ringed: Lines ``log()`` put into the ring itself.
        others: Whether other sinks need a copy of every line.
        others_dropped: Copies for the other sinks dropped by the policy (the events
            themselves are stored).
    """

    __slots__ = (
        "_in_ring_put",
        "_ring_lock",
        "_rows_pending",
        "_since_wake",
        "others",
        "others_dropped",
        "ring",
        "ringed",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ring: ProcessWriter | None = None
        self.ringed = 0
        self.others = False
        self.others_dropped = 0
        #: Rows or pending lines are queued: later lines queue behind them (in order).
        self._rows_pending = False
        self._ring_lock = threading.RLock()
        self._in_ring_put = False  # a signal handler's log() must not re-enter ring.put
        self._since_wake = 0

    def attach(self, ring: ProcessWriter, *, others: bool) -> None:
        """Send lines straight into the writer process's ring.

        From now on ``limit`` stays 0, so every ``log()`` goes through
        :meth:`put_slow`, which puts its line into ``ring`` and, if ``others`` (other
        backends are attached), also queues it for the writer thread to hand to them.
        While rows (device tensors the writer must read first) wait in the buffer,
        later lines queue behind them as :class:`RingPending`, so the file keeps the
        order of the ``log()`` calls.
        """
        with self.lock:
            self.ring = ring
            self.others = others
            self.limit = 0

    def detach(self) -> None:
        """The writer process died and the writer thread took the run file over (after
        writing every line the ring held): lines queue here again, as without a ring.

        Copies of lines the ring had, queued for the other backends, become
        :class:`RingCopy` lines (one each), so that the writer does not write them to
        the file twice; a copy queued by a put that raced this call becomes one too.
        """
        with self.lock:
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
            if self._late:
                self.limit = 0
            else:
                self._reset_limit()
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

    def end(
        self,
        *,
        stopping: Callable[[], bool] = _never,
        remaining: Callable[[], float | None] = _no_deadline,
    ) -> None:
        """Turn producers away (see :meth:`LineBuffer.end`), then wait for one still
        putting a line into the ring: it holds the ring lock, counts the line
        (:attr:`ringed`) before it lets go, and the producers after it see ``ended``
        under the same lock. Bounded as :meth:`~steplog._buffer.LineBuffer.writer_lock`
        is (and by the stop's deadline, ``remaining()``): a producer frozen under a
        signal handler that waits for this very end holds the lock for good, so the
        writer goes on without it after a short wait (then at most that event's count
        is off, in a process about to end) instead of waiting out the deadline."""
        super().end(stopping=stopping, remaining=remaining)
        for _ in range(_END_LOCK_TRIES):
            if self._ring_lock.acquire(timeout=_STOP_LOCK_WAIT):
                self._ring_lock.release()
                return
            left = remaining()
            if left is not None and left <= 0:
                return

    # -- producer side ----------------------------------------------------------

    def put_slow(self, line: bytes) -> None:
        """Put a line into the ring (with a copy for the other sinks), or queue it as
        :class:`~steplog._buffer.LineBuffer` does while no ring is attached."""
        if self.ring is None:
            super().put_slow(line)
            return
        if not self._take_ring_lock():
            # The writer thread (a value's __repr__, a callback) while a producer holds
            # the ring: queue the line for itself to put in, without waiting.
            self._rows_pending = True
            self._queue_item(RingPending(line), wait=False)
            return
        try:
            self._refuse_if_ended()  # (see end)
            ring = self.ring  # once: the writer thread may take the file over meanwhile
            if ring is not None:
                self._put_ringed_locked(ring, line)
                return
        finally:
            self._ring_lock.release()
        self.put_slow(line)  # it did, before this call got here

    def put_row(self, row: Row) -> None:
        """Queue an event the writer must encode; later lines queue behind it."""
        if self.ring is None:
            super().put_row(row)
            return
        if not self._take_ring_lock():
            self._rows_pending = True  # the writer: queue behind, never wait
            self._queue_item(row, wait=False)
            return
        try:
            self._rows_pending = True
            self._queue_item(row)
        finally:
            self._ring_lock.release()

    def _take_ring_lock(self) -> bool:
        """Take the ring lock; the writer thread never waits for it (a producer may hold
        it while it waits for room that only the writer makes): False, then."""
        if threading.get_ident() == self._writer:
            return self._ring_lock.acquire(blocking=False)
        self._ring_lock.acquire()
        return True

    def _put_ringed_locked(self, ring: ProcessWriter, line: bytes) -> None:
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

    def _put_into_ring(self, ring: ProcessWriter, line: bytes) -> None:
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

    def _wait_for_ring(self, ring: ProcessWriter, line: bytes) -> bool:
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

    # -- hooks of LineBuffer -----------------------------------------------------

    def _reset_limit(self) -> None:
        # With a ring, every log() takes put_slow.
        if self.ring is not None:
            self.limit = 0
        else:
            super()._reset_limit()

    def _count_drop(self, item: Any) -> None:
        # A line while the ring runs, or a RingCopy, is a copy of a line the ring has:
        # stored all the same, only the other sinks miss it.
        if (self.ring is not None and item is None) or type(item) is RingCopy:
            self.others_dropped += 1
        else:
            self.dropped += 1
