"""What callers ask of a run's writer thread: flushes and the stop that ends the run.

Callers talk to the writer (:class:`steplog._writer.Writer`) through
``concurrent.futures.Future`` objects, which a sync caller waits on and an async caller
awaits. :class:`Requests` holds those the writer has yet to serve: a flush is done once
every event logged before it is written (:func:`resolve_after` joins what it waits
for); the :class:`StopRequest` carries the run's status, summary and deadline.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Mapping
from typing import Any

from .events import RunStats, RunStatus

__all__ = ["CLOSE_GRACE_SECONDS", "FlushRequest", "Requests", "StopRequest", "resolve_after"]

#: Seconds async backends get to close even when the stop's deadline has passed.
CLOSE_GRACE_SECONDS = 1.0


class FlushRequest(concurrent.futures.Future):  # type: ignore[type-arg]
    """A ``flush()`` waiting on the writer: done once every event logged before it is
    written, and every alert those fired has been through ``on_alert`` — unless
    ``on_alert`` itself asked (``after_callbacks`` False: it would wait for itself)."""

    def __init__(self, *, after_callbacks: bool) -> None:
        super().__init__()
        self.after_callbacks = after_callbacks


class StopRequest:
    """A ``finish()`` (or an exit hook) waiting on the writer: drain, close, report.

    Attributes:
        requester: The thread that asked (``on_alert`` finishing its own run is not
            waited for).
        future: Resolves to the run's statistics.
        deadline: ``time.monotonic()`` by which the run ends (None: no deadline).
    """

    def __init__(
        self,
        status: RunStatus,
        summary: Mapping[str, Any],
        timeout: float | None,
    ) -> None:
        self.requester = threading.get_ident()
        self.status = status
        self.summary = summary
        self.timeout = timeout
        self.future: concurrent.futures.Future[RunStats] = concurrent.futures.Future()
        self.received = time.perf_counter()
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left before the deadline (``None``: no deadline)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def close_budget(self) -> float | None:
        """Seconds the async backends get to close: what is left, and at least a little
        (backends that kept up close in milliseconds; one stuck past the deadline is
        not waited for again)."""
        remaining = self.remaining()
        return None if remaining is None else max(remaining, CLOSE_GRACE_SECONDS)

    def hurry(self, status: RunStatus) -> None:
        """End now: the deadline is brought forward and the status changed (SIGTERM, or
        Ctrl-C during a slow finish). The local backends still get every event; remote
        ones stop where they are, their undelivered events counted as failed."""
        if self.status != "failed":
            self.status = status
        self.deadline = time.monotonic()


class Requests:
    """The flushes and the stop a writer has yet to serve.

    Attributes:
        stop: The stop, once asked for (the run is ending).
    """

    def __init__(self) -> None:
        # None once the run has ended; the lock keeps a flush() from slipping in between
        # the writer taking the requests and draining the events they wait for.
        self._flushes: list[FlushRequest] | None = []
        self._lock = threading.Lock()
        self.stop: StopRequest | None = None

    def add_flush(self, future: FlushRequest) -> bool:
        """Queue a flush; False if the run has ended (nothing will serve it)."""
        with self._lock:
            if self._flushes is None:
                return False
            self._flushes.append(future)
        return True

    def take_flushes(self, *, last: bool = False) -> list[FlushRequest]:
        """Take the flushes queued so far (``last``: and refuse later ones)."""
        with self._lock:
            flushes = self._flushes or []
            self._flushes = None if last else []
        return flushes

    def stopping(self) -> bool:
        """Whether the run is ending (a stop was asked for)."""
        return self.stop is not None

    def deadline(self) -> float | None:
        """The stop's deadline (None: no stop yet, or no deadline)."""
        stop = self.stop
        return None if stop is None else stop.deadline


def resolve_after(
    future: concurrent.futures.Future[None], needs: list[concurrent.futures.Future[None]]
) -> None:
    """Resolve ``future`` once every one of ``needs`` is done (with the first error)."""
    if not needs:
        if not future.done():
            future.set_result(None)
        return
    left = [len(needs)]
    lock = threading.Lock()

    def done(need: concurrent.futures.Future[None]) -> None:
        error = need.exception()
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if future.done():
            return
        if error is not None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(error)
        elif last:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_result(None)

    for need in needs:
        need.add_done_callback(done)
