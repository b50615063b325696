"""The writer thread: takes encoded lines off the buffer and hands them on.

One writer serves one run. It is a plain daemon thread (never an event loop: waking one
from another thread costs the logging loop far more than setting a
``threading.Event``), woken once per ``batch_size`` events or every ``flush_interval``.
Each round it takes every queued event off the buffer as one batch and hands it to the
run's outputs (:mod:`steplog._outputs`: the run file, as the run's durability strategy
says; the synchronous backends, :class:`steplog.SyncBackend` — the run file's
:class:`steplog.runfile.write.RunFile` appends a batch in one ``os.write``, which
releases the GIL; the async in-process sinks; the lanes), so the loop it serves pays as
little of its time as possible for the GIL; then it serves the flushes, and at the end
the stop (:mod:`steplog._requests`). Events ``log()`` left as rows (tensors to read
from a device) are read back and encoded here (:mod:`steplog._readback`), a batch at a
time; system metrics and watchers (:mod:`steplog._monitor`) run after each round.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import select
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ._buffer import SPEEDUPS, LineBuffer
from ._delivery import RetryPolicy
from ._monitor import Monitor
from ._options import DEFAULT_MAX_ARRAY_SIZE
from ._outputs import Outputs
from ._readback import Readback
from ._requests import FlushRequest, Requests, StopRequest, resolve_after
from ._threads import Stopper, run_thread
from .backends.base import Backend
from .errors import WorkerError
from .events import RunEnd, RunInfo, RunStats, RunStatus
from .runfile.codec import ValueEncoder

__all__ = ["Writer"]

logger = logging.getLogger("steplog")
# Empties a written batch for reuse (pure Python: every batch gets a new bytearray).
_emptied = SPEEDUPS.emptied if SPEEDUPS is not None else None
# The largest batch kept for reuse: a burst's bigger one is freed (a run holds at most
# this much for the next batches).
_RECYCLE_BYTES = 8 * 2**20


class Writer:
    """Runs one run's writer thread: opens, feeds and closes the run's outputs."""

    def __init__(
        self,
        buffer: LineBuffer,
        backends: Sequence[tuple[str, Backend]],
        *,
        encoder: ValueEncoder,
        batch_size: int,
        flush_interval: float,
        snapshot: bool = True,
        max_array_size: int = DEFAULT_MAX_ARRAY_SIZE,
        retry: RetryPolicy | None = None,
        durability: str = "thread",
        delivery: str = "thread",
        down_grace: float = 10.0,
        monitor: Monitor | None = None,
    ) -> None:
        self.buffer = buffer
        #: How the run's threads are stopped from outside (``RunThread.stop``), set by
        #: the tracker before :meth:`start`; without one they are plain daemon threads.
        self.stopper: Stopper | None = None
        #: System metrics and watchers (``None`` when both are off: no work at all).
        self.monitor = monitor
        self.encoder = encoder
        self.flush_interval = flush_interval
        self.readback = Readback(encoder, snapshot=snapshot, max_array_size=max_array_size)
        self.requests = Requests()
        #: Where batches go: the run file (as ``durability`` says), the other sinks,
        #: the lanes.
        self.outputs = Outputs(
            backends,
            buffer=buffer,
            readback=self.readback,
            batch_size=batch_size,
            flush_interval=flush_interval,
            retry=retry if retry is not None else RetryPolicy(),
            durability=durability,
            delivery=delivery,
            down_grace=down_grace,
            monitor=monitor,
            deadline=self.requests.deadline,
        )
        #: Who writes the run file: this thread, or the writer process.
        self.durability = self.outputs.durability
        # Woken through a socket pair rather than a threading.Event: sending a byte is
        # reentrant, so a signal handler that logs can wake the writer even while it
        # interrupted a wake-up on the same thread (Event.set would deadlock there).
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._thread: threading.Thread | None = None
        self._started: concurrent.futures.Future[RunInfo] = concurrent.futures.Future()
        self._dead = False

    # -- called from other threads ----------------------------------------------

    def start(self, info: RunInfo) -> concurrent.futures.Future[RunInfo]:
        """Start the thread and open the backends; the future fails if one cannot open.

        The future's result is ``info`` with arrays and tensors in its config converted
        to plain values, as the backends received it.
        """
        self._thread = run_thread(
            self._thread_main,
            args=(info,),
            name=f"steplog-writer-{info.run_id}",
            stopper=self.stopper,
        )
        self._thread.start()
        return self._started

    def refresh_inspection(self) -> None:
        """Tell ``log()`` whether to look for arrays and tensors (cheap; every wake-up)."""
        self.readback.refresh_inspection(self.buffer)

    def alive(self) -> bool:
        """Return whether the writer thread still runs."""
        return not self._dead and self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Ask the writer to drain now (cheap enough to call once per batch; reentrant)."""
        # Full: the writer has wake-ups waiting already. Closed: it has ended.
        with contextlib.suppress(OSError):
            self._wake_out.send(b"w")

    def flush(self) -> concurrent.futures.Future[None]:
        """Return a future that resolves once every event logged so far is written."""
        callbacks = self.monitor.callbacks if self.monitor is not None else None
        future = FlushRequest(
            after_callbacks=callbacks is None or not callbacks.runs_in(threading.get_ident())
        )
        if not self.alive():
            future.set_exception(WorkerError("the steplog writer is not running"))
        elif not self.requests.add_flush(future):  # the run has ended meanwhile
            future.set_exception(WorkerError("the steplog writer has stopped"))
        else:
            self.wake()
        return future

    def stop(
        self, status: RunStatus, summary: Mapping[str, Any], timeout: float | None
    ) -> concurrent.futures.Future[RunStats]:
        """Drain everything, close the backends; the future gives the run's statistics."""
        request = StopRequest(status, summary, timeout)
        if not self.alive():
            request.future.set_exception(WorkerError("the steplog writer is not running"))
        elif self.requests.stop is not None:  # the tracker deactivates a run once
            request.future.set_exception(WorkerError("the run is already being finished"))
        else:
            self.requests.stop = request
            self.wake()
        return request.future

    def hurry(self, status: RunStatus) -> bool:
        """Bring the run's end forward, as ``status`` (see ``StopRequest.hurry``).

        Returns whether a stop was under way (there is nothing to hurry otherwise).
        """
        request = self.requests.stop
        if request is None or request.future.done():
            return False
        request.hurry(status)
        self.wake()
        return True

    def pending(self) -> dict[str, int]:
        """Events each backend has yet to write (read from another thread: approximate)."""
        queued = self.buffer.count
        pending = dict.fromkeys(self.outputs.names, queued)
        for name, backlog in self.outputs.backlogs().items():
            pending[name] += backlog
        if not self.alive():
            return {}
        return pending

    def join(self, timeout: float | None = None) -> None:
        """Wait for the writer thread to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    # -- writer thread ----------------------------------------------------------

    def _thread_main(self, info: RunInfo) -> None:
        try:
            self._main(info)
        except BaseException as exc:  # the writer must never die silently
            self._dead = True
            logger.error("steplog: the writer thread died", exc_info=exc)
            error = WorkerError(f"the steplog writer thread died: {exc!r}")
            error.__cause__ = exc
            futures: list[concurrent.futures.Future[Any]] = [self._started]
            futures += self._take_flushes(last=True)
            if self.requests.stop is not None:
                futures.append(self.requests.stop.future)
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        finally:
            self._dead = True
            self.buffer.close()
            self._wake_in.close()
            self._wake_out.close()
            for future in self._take_flushes(last=True):
                if not future.done():
                    future.set_exception(WorkerError("the run ended before the flush completed"))

    def _drain_wake_ups(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError: nothing left
            while self._wake_in.recv(4096):
                pass

    def _take_flushes(self, *, last: bool = False) -> list[Any]:
        flushes: list[Any] = self.requests.take_flushes(last=last)
        if last:
            flushes = self.durability.waiting() + flushes
        return flushes

    def _main(self, info: RunInfo) -> None:
        info = dataclasses.replace(info, config=self.readback.convert(dict(info.config)))
        if not self._open(info):
            return
        self.buffer.connect(self.wake, self.alive)
        self._started.set_result(info)
        buffer = self.buffer
        monitor = self.monitor
        if monitor is not None:
            monitor.start()
        while True:
            if buffer.count < buffer.wake_at:
                select.select([self._wake_in], [], [], self.flush_interval)
            self._drain_wake_ups()
            self.durability.check()
            buffer.rearm(stopping=self.requests.stopping)
            self.refresh_inspection()
            stop = self.requests.stop
            # Take the flush requests first, then count the events: every event logged
            # before a flush() call is already queued when its request is seen here.
            flushes = self._take_flushes()
            if stop is not None:
                # The tracker no longer hands the buffer out, but another thread's log()
                # may hold it still: end it first, so that such a call either counts its
                # event before the drain below (which takes it), or raises
                # InactiveRunError — never counted and left behind.
                buffer.end(stopping=self.requests.stopping, remaining=stop.remaining)
                self._drain()  # (at least once: the value watchers' last values may
                # wait without lines)
                while buffer.count:
                    self._drain()
            else:
                # Drain what is there now; what arrives meanwhile waits for the next
                # round, so flush requests and stops are never starved by a busy producer.
                self._drain()
            if monitor is not None:
                monitor.tick(self._events_seen())
                self._write_records()
            self._complete_flushes(self.durability.confirm(flushes, stop))
            if stop is not None:
                self._end(info, stop)
                return

    def _open(self, info: RunInfo) -> bool:
        try:
            self.outputs.open(info, self.encoder)
        except Exception as exc:
            self._started.set_exception(exc)
            return False
        return True

    def forget_after_fork(self) -> None:
        """In a forked child: let go of the run file and the writer process.

        The child's copy of the run file's descriptor would keep the writer's lock
        (``runfile.lock``: it belongs to the open file, which the fork shares) after the
        parent is gone, and block a resume for as long as the child lives (a DataLoader
        worker, a helper process); the writer process's ring is left untouched.
        """
        self.outputs.forget_after_fork()
        self._wake_in.close()
        self._wake_out.close()

    def _complete_flushes(self, flushes: list[FlushRequest]) -> None:
        if not flushes:
            return
        # Markers go in now, right behind the batches (and alerts) these flushes wait for.
        waits = self.outputs.flush_waits()
        callbacks = self.monitor.callbacks if self.monitor is not None else None
        marker = callbacks.mark() if callbacks is not None else None
        for future in flushes:
            needs = [*waits, marker] if marker is not None and future.after_callbacks else waits
            resolve_after(future, needs)

    def _drain(self) -> None:
        """Take everything queued and deliver it as one batch; then check the values
        ``log()`` handed the value watchers before the take (their rows are read back
        by then: see ``ValueTap``)."""
        monitor = self.monitor
        tap = monitor.tap if monitor is not None else None
        values = tap.swap() if tap is not None else None
        items, count = self.buffer.take(stopping=self.requests.stopping)
        if items:  # (not `count`: under a line tracer it may be one off; see LineBuffer)
            self.outputs.deliver(items, count)
            self._recycle(items)
        if values is not None and monitor is not None:
            monitor.check_values(values)

    def _recycle(self, items: list[Any]) -> None:
        """Hand the batch's last ``bytearray`` back to the buffer, emptied with its
        allocation kept (``LineBuffer.spare``), when nothing else holds it any more
        (an async sink's queue, a backend that kept the batch: then the next batch gets
        a new one), and when it is at most ``_RECYCLE_BYTES``. The compiled ``log()``
        appends into the allocation without growing it, so a loop's appends stop
        reallocating (copying) the batch and touching fresh memory (page faults: the
        main cause of ``log()``'s slowest calls, see docs/benchmarks.md). Needs the
        compiled extension."""
        last = items[-1]
        del items[:]
        # References: ``last`` and getrefcount's argument; one more is someone else's.
        if (
            _emptied is not None
            and type(last) is bytearray
            and len(last) <= _RECYCLE_BYTES
            and sys.getrefcount(last) == 2
            and _emptied(last)
        ):
            self.buffer.spare = last

    def _events_seen(self) -> int:
        """Events logged so far that the writer has seen (taken, or dropped)."""
        return self.durability.written(self.outputs.taken) + self.buffer.dropped

    def _write_records(self) -> None:
        """Append the monitor's system and alert records to the run file(s)."""
        if self.monitor is None:
            return
        data = self.monitor.take_records()
        if data:
            self.outputs.write_records(data)

    def _end(self, info: RunInfo, request: StopRequest) -> None:
        if self.monitor is not None:
            self.monitor.finish(self._events_seen())
            self._write_records()
            callbacks = self.monitor.callbacks
            if callbacks is not None:  # the deadline holds whatever on_alert does
                callbacks.close(request.remaining(), own=callbacks.runs_in(request.requester))
        self.outputs.settle()
        stats = self._stats(drain_seconds=time.perf_counter() - request.received)
        end = RunEnd(
            run_id=info.run_id,
            end_time=time.time(),
            status=request.status,
            summary=self.readback.convert(dict(request.summary)),
            stats=stats,
        )
        self.outputs.close(end, request.close_budget)
        request.future.set_result(self._stats(drain_seconds=stats.drain_seconds))

    def _stats(self, *, drain_seconds: float) -> RunStats:
        buffer = self.buffer
        durability = self.durability
        dropped = buffer.drop_count(stopping=self.requests.stopping)
        written = durability.written(self.outputs.taken)
        backends, errors = self.outputs.stats(written, dropped)
        return RunStats(
            logged=written + dropped + durability.queued(),
            written=written,
            dropped=dropped,
            batches=self.outputs.batches,
            backend_errors=errors,
            max_buffer_depth=buffer.max_depth,
            drain_seconds=drain_seconds,
            device_syncs=self.readback.stats.device_syncs,
            device_copies=self.readback.stats.device_copies,
            changed_values=self.readback.stats.changed,
            alerts=self.monitor.alerts if self.monitor is not None else 0,
            alert_callback_errors=self.monitor.callback_errors if self.monitor is not None else 0,
            writer_takeover=durability.took_over,
            backends=backends,
        )
