"""The bounded buffer between ``log()`` and the writer, with its overflow policies."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Literal

__all__ = [
    "OVERFLOW_POLICIES",
    "LineBuffer",
    "OverflowPolicy",
    "Row",
]

OverflowPolicy = Literal["block", "drop_oldest", "drop_newest"]
OVERFLOW_POLICIES: tuple[OverflowPolicy, ...] = ("block", "drop_oldest", "drop_newest")

#: An event ``log()`` could not encode on the spot (tensors to read from a device, or
#: references kept with ``snapshot=False``): ``(step, time, data)``, encoded by the writer.
Row = tuple[int, float, dict[str, Any]]

# How long a blocked producer sleeps between checks that the writer is still alive.
_BLOCK_POLL_SECONDS = 0.05


class LineBuffer:
    """A list of encoded events bounded by a count and a byte budget.

    Queued items are JSON lines (``bytes``, each ending in ``\\n``), encoded by ``log()``
    on the caller's thread, or :data:`Row` tuples for the few events the writer must
    finish (device tensors). The writer takes them in order with :meth:`take`.

    The hot path (``Tracker.log``) appends a line to :attr:`items` directly and calls
    :meth:`make_room` only when ``len(items) >= limit``. That single comparison covers
    both rare cases:

    * waking the writer: while the wake-up is *armed*, ``limit`` is ``wake_at`` (the
      batch size); the first producer past it disarms it (``limit = capacity``) and
      wakes the writer once. The writer re-arms it when it starts draining. So the
      writer is woken at most once per batch, not once per event;
    * overflow: once ``len(items) >= capacity`` the policy applies.

    Appending to a list and removing a prefix with ``del items[:n]`` are each one
    atomic operation on a list (under the GIL, and under the per-object locks of a
    free-threaded build), so producers take no lock for lines of up to
    :attr:`small_bytes`. Longer lines count against the byte budget exactly, under
    the lock (:meth:`put_large`): small lines are bounded by the count (``capacity x
    small_bytes``), large ones by ``byte_budget``. The lock also guards the drop
    counter, blocking, and every removal (so ``drop_oldest`` never races the writer).

    Attributes:
        items: The queued lines and rows, oldest first.
        limit: Length at which a producer must call :meth:`make_room`.
        capacity: Maximum number of queued events.
        small_bytes: Lines up to this long are queued without a lock.
        dropped: Events dropped by the overflow policy so far.
        max_depth: Deepest the buffer was seen (by :meth:`take` or at an overflow).
    """

    def __init__(
        self,
        capacity: int,
        *,
        wake_at: int,
        policy: OverflowPolicy,
        byte_budget: int = 64 * 2**20,
    ) -> None:
        self.items: list[Any] = []
        self.capacity = capacity
        self.wake_at = min(wake_at, capacity)
        self.policy = policy
        self.limit = self.wake_at
        # Half of the budget for the lines counted by number, half for the large ones.
        self.small_bytes = max(64, byte_budget // (2 * capacity))
        self.large_budget = max(1, byte_budget - self.small_bytes * capacity)
        self.large_bytes = 0
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
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._blocked = 0

    def connect(self, wake: Callable[[], None], alive: Callable[[], bool]) -> None:
        """Set how to wake the writer and how to tell whether it still runs."""
        self._wake = wake
        self._alive = alive

    # -- producer side ----------------------------------------------------------

    def make_room(self) -> bool:
        """Wake the writer if armed, then apply the overflow policy if full.

        Returns:
            ``True`` if the new event must be dropped (``drop_newest`` on a full buffer).
        """
        self._wake_if_armed()
        if len(self.items) < self.capacity:
            return False
        with self._lock:
            return self._overflow(0)

    def _wake_if_armed(self) -> None:
        if self._armed:
            self._armed = False
            self.limit = self.capacity
            self._wake()

    def put_row(self, row: Row) -> None:
        """Queue an event the writer must encode (see :data:`Row`)."""
        self.has_rows = True
        items = self.items
        if len(items) >= self.limit and self.make_room():
            return
        items.append(row)

    def put_large(self, line: bytes) -> None:
        """Queue a line longer than :attr:`small_bytes`, counted against the byte budget."""
        size = len(line)
        if len(self.items) >= self.limit:
            self._wake_if_armed()
        with self._lock:
            if self._overflow(size):
                return
            self.large_bytes += size
            self.items.append(line)

    def _overflow(self, size: int) -> bool:
        """Apply the policy until the event fits (lock held); True: drop the new event."""
        items = self.items
        if not self._full(size):
            return False
        self.max_depth = max(self.max_depth, len(items))
        policy = self.policy
        if policy == "drop_newest":
            self.dropped += 1
            return True
        if policy == "drop_oldest":
            while items and self._full(size):
                self._forget(items.pop(0))
                self.dropped += 1
            return False
        # block: wait until the writer has taken events out, or has stopped.
        self._blocked += 1
        try:
            while self._full(size) and not self.closed:
                self._wake()
                self._room.wait(_BLOCK_POLL_SECONDS)
                if not self._alive():
                    # Never block forever on a dead writer: count the event as dropped
                    # so the accounting stays exact.
                    self.dropped += 1
                    return True
        finally:
            self._blocked -= 1
        return False

    def _full(self, size: int) -> bool:
        if len(self.items) >= self.capacity:
            return True
        # A line larger than the whole budget still goes in, into an otherwise empty buffer.
        return size > 0 and self.large_bytes + size > self.large_budget and self.large_bytes > 0

    def _forget(self, item: Any) -> None:
        if type(item) is bytes and len(item) > self.small_bytes:
            self.large_bytes -= len(item)

    # -- writer side ------------------------------------------------------------

    def rearm(self) -> None:
        """Re-enable the wake-up (the writer is about to drain)."""
        self._armed = True
        self.limit = self.wake_at

    def take(self, count: int) -> list[Any]:
        """Remove and return up to ``count`` of the oldest items."""
        items = self.items
        with self._lock:
            depth = len(items)
            if depth > self.max_depth:
                self.max_depth = depth
            batch = items[:count]
            del items[: len(batch)]
            if self.large_bytes:
                small = self.small_bytes
                self.large_bytes -= sum(
                    len(item) for item in batch if type(item) is bytes and len(item) > small
                )
            if self._blocked:
                self._room.notify_all()
        return batch

    def close(self) -> None:
        """Release every blocked producer; later overflows no longer wait."""
        with self._lock:
            self.closed = True
            self._room.notify_all()

    def drop_count(self) -> int:
        """Return the number of dropped events (consistent with producers)."""
        with self._lock:
            return self.dropped


def _nothing() -> None:
    pass


def _always() -> bool:
    return True
