"""Delivery to backends: retries and the circuit breaker, and the fan-out to async backends.

The writer thread (:mod:`steplog._writer`) feeds the built-in local backends (JSONL,
memory, null) itself, synchronously, through a :class:`DirectRunner` each. Every other
backend is async: only when one is attached does the writer start a :class:`Fanout`,
an anyio event loop (asyncio backend) in its own daemon thread, where each backend gets
its own :class:`BackendRunner` task fed by its own queue of batches. So a slow or
failing backend never holds up the others: it only lets its own backlog grow, up to
``backlog_limit`` events, where the overflow policy applies to it alone (``"block"``:
the writer waits, keeping every backend lossless; ``"drop_oldest"``: that backend sheds
its oldest queued batches; ``"drop_newest"``: it skips the new batch). Failed writes
are retried per :class:`RetryPolicy`, by both kinds of runner alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.abc

from ._batch import EventBatch
from ._delivery import Delivery, RetryPolicy
from ._options import OverflowPolicy
from .backends.base import Backend
from .errors import BackendOpenError, WorkerError
from .events import BackendStats, Event, RunEnd, RunInfo, RunStats

__all__ = ["BackendRunner", "Fanout", "FileSource"]

logger = logging.getLogger("steplog")

# How often a writer waiting on a stalled backend checks for a shutdown deadline.
_STALL_CHECK_SECONDS = 0.1
# How long the writer waits for the fan-out's loop to answer once the deadline passed
# before leaving a backend that blocks it behind.
_STUCK_GRACE_SECONDS = 1.0


# -- async backends, in the fan-out's event loop ----------------------------------------


class _Marker:
    """Travels through each backend's stream behind the batches a flush waits for.

    The same marker goes into every backend's queue; the flush's future resolves once
    every one of them has reached it.
    """

    __slots__ = ("future", "waiting")

    def __init__(self, future: concurrent.futures.Future[None], count: int) -> None:
        self.future = future
        self.waiting = count

    def reached(self) -> None:
        self.waiting -= 1
        if self.waiting <= 0 and not self.future.done():
            self.future.set_result(None)


class _Unbound:
    """Stands for an anyio event until the fan-out's loop makes it (see bind_loop)."""

    def set(self) -> None:
        pass

    def is_set(self) -> bool:
        return False


_UNBOUND: Any = _Unbound()

#: Bytes of the run file read per catch-up batch.
CATCH_UP_BYTES = 4 * 2**20


class FileSource:
    """The run's JSONL file, read back to catch a backend up (see ``BackendRunner``)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend  # a JsonlBackend written by the writer thread
        self._fd = -1

    def size(self) -> int:
        """Bytes written to the file so far (by the writer thread)."""
        return int(self.backend._size)

    def read(self, start: int, end: int) -> bytes:
        """The bytes ``[start, end)`` of the file."""
        if self._fd < 0:
            self._fd = os.open(self.backend.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        chunks = []
        while start < end:
            chunk = os.pread(self._fd, end - start, start)
            if not chunk:
                break
            chunks.append(chunk)
            start += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class BackendRunner(Delivery):
    """Feeds one async backend its batches, in order, and counts what happened to them.

    ``submitted`` is counted by the thread that hands batches over (the writer), and
    ``settled`` by the event loop, so each counter has one writer; the backlog is their
    difference.
    """

    def __init__(
        self,
        backend: Backend,
        name: str,
        *,
        backlog_limit: int,
        policy: OverflowPolicy | str,
        deadline: Callable[[], float | None],
        retry: RetryPolicy,
        source: FileSource | None = None,
    ) -> None:
        super().__init__(backend, name, retry=retry, deadline=deadline)
        self.backlog_limit = backlog_limit
        self.policy = OverflowPolicy(policy)
        self.submitted = 0
        self.settled = 0
        self.queued = 0  # events accepted and not yet settled (loop thread only)
        # anyio events are made on the fan-out's loop (bind_loop): made here, on the
        # caller's thread, they would belong to the caller's async library (trio, say).
        self.finished: anyio.Event = _UNBOUND
        self.done = False
        #: Cancels :meth:`run` when the backend is abandoned at the shutdown deadline
        #: (made on the loop, by the fan-out, which needs a running loop for it).
        self.scope: anyio.CancelScope | None = None
        self.closed = False
        self.closed_event: anyio.Event = _UNBOUND
        self.abandoned = False
        #: The run file, to catch up from (``None``: no JSONL file written by the writer
        #: thread in this run: missed events are counted as failed).
        self.source = source
        self.uses_breaker = source is None
        self._warned = False  # the one-time warning that missed events are lost
        # The gap: a range of the run file the backend has yet to get (``gap_start`` is
        # None when it is live), with its number of events.
        self.gap_start: int | None = None
        self.gap_end = 0
        self.gap_events = 0
        self.in_outage = False
        self.next_probe = 0.0
        self.probes = 0  # failed probes in a row (the pause before the next grows)
        self.caught_up = 0
        self.missing = 0
        self.outages: list[list[float | None]] = []
        # Flush markers waiting for the catch-up to reach a file position.
        self._gap_markers: list[tuple[int, _Marker]] = []
        #: Called (on the loop thread) after each batch is settled.
        self.on_progress: Callable[[], None] = _nothing
        # Batches and flush markers in order. A deque rather than a stream: under
        # "drop_oldest" a backend that lags drops its oldest queued batch.
        self._queue: deque[Sequence[Event] | _Marker] = deque()
        self._wakeup: anyio.Event = _UNBOUND
        self._closed = False

    def bind_loop(self) -> None:
        """Make the runner's events on the running loop (the fan-out's own thread)."""
        self.finished = anyio.Event()
        self.closed_event = anyio.Event()
        self._wakeup = anyio.Event()

    @property
    def backlog(self) -> int:
        """Events handed over and not yet written, failed or dropped."""
        return self.submitted - self.settled

    async def run(self) -> None:
        """Write batches until the queue is closed and empty, catching up from the run
        file what the backend missed (see :meth:`_catch_up`)."""
        queue = self._queue
        try:
            while True:
                if queue:
                    item = queue.popleft()
                    if isinstance(item, _Marker):
                        item.reached()
                        continue
                    await self._write_live(item)
                    if self.abandoned:
                        return
                    continue
                if self.gap_events:
                    if self.in_outage and not self._closed:
                        wait = self.next_probe - time.monotonic()
                        if wait > 0:  # the pause before the next probe (or the run's end)
                            with anyio.move_on_after(wait):
                                await self._wakeup.wait()
                            self._wakeup = anyio.Event()
                            continue
                    await self._catch_up()
                    if self.abandoned:
                        return
                    if self._closed and self.gap_events and self.in_outage:
                        self._give_up_gap("still missing at the end of the run")
                    continue
                if self._closed:
                    return
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
        finally:
            self.done = True
            self.finished.set()
            self.on_progress()

    async def _write_live(self, item: Sequence[Event]) -> None:
        """Write one queued batch; if it is given up and the run file has it, the backend
        goes into an outage and is caught up from the file later."""
        count = len(item)
        ok = await self.write_with_retries(item)
        if self.abandoned:
            # abandon() counted this batch as failed while it was in flight; keep the
            # write's own outcome instead.
            self.failed -= count
            if ok:
                self.delivered += count
            else:
                self.failed += count
            return
        self.queued -= count
        self.settled += count
        if ok:
            self.delivered += count
        elif not self._open_gap_after_failure(item):
            self.failed += count
            if self.source is None and not self.permanent_error and not self._warned:
                self._warned = True
                logger.warning(
                    "steplog: backend %r lost %d events; without a JsonlBackend in the "
                    "tracker they cannot be sent later (with one, a backend that is down "
                    "is caught up from the run file once it is back)",
                    self.name,
                    count,
                )
        self.on_progress()

    def _put(self, item: Sequence[Event] | _Marker) -> None:
        self._queue.append(item)
        self._wakeup.set()

    def accept(self, batch: Sequence[Event]) -> None:
        """Queue a batch already counted in ``submitted`` (on the loop thread).

        Under the drop policies a backend whose backlog is over its limit drops here;
        under ``"block"`` the writer waited for room before handing the batch over.
        """
        count = len(batch)
        if self.gap_start is not None:
            # Behind, or in an outage: the batch is in the run file, right after the
            # gap; it is caught up from there (nothing held in memory meanwhile).
            self._extend_gap(batch)
            self.settled += count
            return
        start = getattr(batch, "file_start", None)
        if self.source is not None and start is not None and self.queued >= self.backlog_limit:
            # Too far behind: stop queuing, catch up from the file once the queue is
            # written (the writer never waits for this backend, whatever the policy).
            self.gap_start = self.gap_end = start
            self._extend_gap(batch)
            self.settled += count
            return
        # Only what this backend already holds counts here, never batches the writer
        # handed over after this one (those are in ``submitted`` already).
        if self.queued >= self.backlog_limit:
            if self.policy is OverflowPolicy.DROP_NEWEST:
                self._drop(len(batch))
                return
            if self.policy is OverflowPolicy.DROP_OLDEST:
                # Whatever is left is the batch being written: never wait for it.
                self._drop_oldest_queued(len(batch))
        self.queued += len(batch)
        self._put(batch)

    # -- catching up from the run file ------------------------------------------

    def _extend_gap(self, batch: Sequence[Event]) -> None:
        """Add a batch the backend did not get to the gap (it must follow it in the file)."""
        start = getattr(batch, "file_start", None)
        if start is not None and start == self.gap_end:
            self.gap_end = batch.file_end  # type: ignore[attr-defined]
            self.gap_events += len(batch)
        else:  # not in the file (its own write failed there): nothing to catch up from
            self.failed += len(batch)

    def _open_gap_after_failure(self, item: Sequence[Event]) -> bool:
        """A live batch was given up: if the run file has it, start an outage whose gap
        begins with it (the queued batches join the gap: they follow it in the file)."""
        start = getattr(item, "file_start", None)
        if self.source is None or start is None or self.permanent_error:
            return False
        # Already behind (batches after the queued ones went to a gap): the failed batch
        # and the queue come before that gap in the file; the new gap covers them all.
        later = None if self.gap_start is None else (self.gap_start, self.gap_end)
        later_events, self.gap_events = self.gap_events, 0
        self.gap_start = self.gap_end = start
        self._extend_gap(item)
        while self._queue:
            queued = self._queue.popleft()
            if isinstance(queued, _Marker):
                queued.reached()  # a flush does not wait for the outage to end
                continue
            self.queued -= len(queued)
            self.settled += len(queued)
            self._extend_gap(queued)
        if later is not None:
            if later[0] == self.gap_end:
                self.gap_end = later[1]
                self.gap_events += later_events
            else:  # not contiguous (cannot happen: batches reach us in file order)
                self.failed += later_events
        self._enter_outage()
        return True

    def _enter_outage(self) -> None:
        self._reach_gap_markers(everything=True)  # flushes do not wait for an outage
        if not self.in_outage:
            self.in_outage = True
            self.outages.append([time.time(), None])
            logger.warning(
                "steplog: backend %r is unreachable (%s); the run goes on, and what it "
                "misses is sent from the run file once it is back",
                self.name,
                self.last_error,
            )
        delay = self.retry.probe_delay(self.probes, self.retry_after)
        self.probes += 1
        self.next_probe = time.monotonic() + delay

    async def _catch_up(self) -> None:
        """Send the gap from the run file, in order, then rejoin the live stream.

        The gap can grow while this runs (the writer keeps handing batches over); the
        switch back to live batches happens between two awaits, when the gap is empty,
        so nothing is sent twice or skipped.
        """
        source = self.source
        assert source is not None and self.gap_start is not None
        while self.gap_events > 0 and self.gap_start < self.gap_end:
            start = self.gap_start
            end = min(self.gap_end, start + CATCH_UP_BYTES)
            data = source.read(start, end)
            if end < self.gap_end:
                cut = data.rfind(b"\n") + 1
                data = data[:cut] if cut else source.read(start, self.gap_end)
            count = data.count(b"\n")
            if not data or not count:
                break
            batch = EventBatch(data, count, file_start=start, file_end=start + len(data))
            ok = await self.write_with_retries(batch)
            if self.abandoned:
                return
            if not ok:
                if self.permanent_error:  # retrying this range cannot help: skip it
                    self.failed += count
                    self.gap_events -= count
                    self.gap_start = start + len(data)
                    continue
                self._enter_outage()
                return
            self.delivered += count
            self.caught_up += count
            self.gap_events -= count
            self.gap_start = start + len(data)
            self._reach_gap_markers()
            self.on_progress()
        # Caught up: join the live stream (no await between the check and the switch).
        if self.gap_events > 0:  # lines the file did not have after all
            self.failed += self.gap_events
        self.gap_events = 0
        self.gap_start = None
        self._reach_gap_markers(everything=True)
        if self.in_outage:
            self.in_outage = False
            self.outages[-1][1] = time.time()
            logger.warning(
                "steplog: backend %r is back; %d events caught up from the run file so far",
                self.name,
                self.caught_up,
            )
        self.probes = 0
        self.retry_after = None

    def _give_up_gap(self, reason: str) -> None:
        """The run ends while the backend is still out: count what it missed as failed."""
        self.missing = self.gap_events
        self.failed += self.gap_events
        self.gap_events = 0
        self.gap_start = None
        self._reach_gap_markers(everything=True)
        self.errors += 1
        self.last_error = f"{reason}: {self.last_error}"
        logger.error(
            "steplog: backend %r missed %d events (%s); `steplog replay` can send them "
            "from the run file later",
            self.name,
            self.missing,
            reason,
        )

    def _drop(self, count: int) -> None:
        self.dropped += count
        self.settled += count

    def _drop_oldest_queued(self, room: int) -> None:
        """Drop the oldest queued (not in-flight) batches until ``room`` more events fit."""
        queue = self._queue
        index = 0
        while self.queued + room > self.backlog_limit and index < len(queue):
            item = queue[index]
            if isinstance(item, _Marker):  # flush markers keep their place
                index += 1
                continue
            del queue[index]
            self.queued -= len(item)
            self._drop(len(item))

    def mark(self, marker: _Marker) -> None:
        """Queue a marker that is reached once every batch queued so far is written.

        In a gap (behind or out) it is reached at once: a flush does not wait for an
        outage to end; the gap is caught up from the file whatever happens.
        """
        if self.gap_start is not None:  # the queue (if any) holds older batches
            if self.in_outage:
                marker.reached()  # a flush does not wait for an outage to end
            else:  # behind: reached once the catch-up has sent what it covers
                self._gap_markers.append((self.gap_end, marker))
            return
        self._put(marker)

    def _reach_gap_markers(self, everything: bool = False) -> None:
        """Flush markers the catch-up has passed (or all of them)."""
        position = self.gap_start
        while self._gap_markers and (
            everything or position is None or self._gap_markers[0][0] <= position
        ):
            self._gap_markers.pop(0)[1].reached()

    def stats(self, shared_drops: int) -> BackendStats:
        """This backend's counts, with what it got from the run file and its outages."""
        return dataclasses.replace(
            super().stats(shared_drops),
            caught_up=self.caught_up,
            missing=self.missing,
            outages=[list(o) for o in self.outages],
        )

    def close_stream(self) -> None:
        """Let :meth:`run` end after the queued batches."""
        self._closed = True
        self._wakeup.set()

    def abandon(self, reason: str) -> None:
        """Count the events still queued as failed (the backend did not finish in time).

        A batch in flight is counted too; should its write still return, :meth:`run`
        replaces that count with the write's outcome.
        """
        self.abandoned = True
        if self.gap_events:  # what it missed and was still to get from the file
            self.missing = self.gap_events
            self.failed += self.gap_events
            self.gap_events = 0
        backlog = self.backlog
        if backlog:
            self.failed += backlog
            self.settled += backlog
            self.errors += 1
            self.last_error = reason
            logger.error("steplog: backend %r: %s (%d events)", self.name, reason, backlog)


class Fanout:
    """The async backends of one run, in an event loop of their own thread.

    Driven from the writer thread: :meth:`start` opens the backends, :meth:`submit`
    hands over a batch, :meth:`mark` returns a future for a flush, :meth:`drain` and
    :meth:`close` end the run. A worker task on the caller's own loop would deadlock
    under the ``"block"`` policy, and a daemon thread never keeps the interpreter
    alive.
    """

    def __init__(
        self,
        backends: Sequence[tuple[str, Backend]],
        *,
        backlog_limit: int,
        policy: OverflowPolicy | str,
        retry: RetryPolicy,
        deadline: Callable[[], float | None],
        source: FileSource | None = None,
    ) -> None:
        self._deadline = deadline
        self.runners = [
            BackendRunner(
                backend,
                name,
                backlog_limit=backlog_limit,
                policy=policy,
                deadline=deadline,
                retry=retry,
                source=source,
            )
            for name, backend in backends
        ]
        self._room = threading.Condition()
        for runner in self.runners:
            runner.on_progress = self._on_progress
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._opened: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._drained: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._ended: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._drain_scope: anyio.CancelScope | None = None
        self._abandoned = False
        #: Set when a backend's task is left behind (stuck past the deadline), or the
        #: whole loop stopped answering (a backend blocks it).
        self.stuck = False
        self._end: RunEnd | None = None
        self._close_timeout: float | None = None
        self._marks: list[concurrent.futures.Future[None]] = []

    # -- called from the writer thread ------------------------------------------

    def start(self, info: RunInfo) -> None:
        """Start the loop thread and open every backend (raises BackendOpenError)."""
        self._thread = threading.Thread(
            target=self._thread_main,
            args=(info,),
            name=f"steplog-fanout-{info.run_id}",
            daemon=True,
        )
        self._thread.start()
        self._opened.result()

    def submit(self, batch: Sequence[Event]) -> None:
        """Hand a batch to every backend (blocks while one is full under ``"block"``)."""
        count = len(batch)
        skip: list[BackendRunner] = []
        for runner in self.runners:
            waits = runner.policy is OverflowPolicy.BLOCK and not self._can_spill(runner, batch)
            if waits and not self._wait_for_room(runner):
                # Shutting down and this backend is still stalled: give up on it so
                # the others still get this batch.
                skip.append(runner)
                continue
            runner.submitted += count
        self._call(self._accept, batch, skip)

    @staticmethod
    def _can_spill(runner: BackendRunner, batch: Sequence[Event]) -> bool:
        """Whether a full backlog need not hold the writer up: the run file has the
        batch, so the backend can be caught up from it."""
        return runner.source is not None and getattr(batch, "file_start", None) is not None

    def _wait_for_room(self, runner: BackendRunner) -> bool:
        """Block policy: wait for room in the backlog; False once the stop deadline passed."""
        with self._room:
            while runner.backlog >= runner.backlog_limit and not runner.done:
                if runner._out_of_time():
                    return False
                # Re-check now and then: a stop with a timeout may arrive meanwhile.
                self._room.wait(_STALL_CHECK_SECONDS)
        return True

    def mark(self) -> concurrent.futures.Future[None]:
        """A future that resolves once every batch submitted so far is written."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._marks.append(future)
        self._call(self._start_mark, future)
        return future

    def drain(self) -> None:
        """Let every backend finish its backlog; abandon those still busy at the deadline.

        The deadline (the stop's, read again and again: it can be brought forward while
        this waits) is kept here, on the writer's side, whatever a backend does: one
        stuck in a call that cannot be cancelled (a thread call, or blocking code that
        stalls the whole loop) is counted as failed and left behind.
        """
        self._call(self._request_drain)
        if _wait_until(self._drained, self._deadline):
            return
        with contextlib.suppress(WorkerError):
            self._call(self._abandon_drain)
        if _wait_for(self._drained, _STUCK_GRACE_SECONDS):
            return
        # The loop does not answer: a backend blocks it. Settle its counts from here.
        self.stuck = True
        busy = [runner for runner in self.runners if not runner.done]
        for runner in busy:
            runner.abandon("abandoned: stuck past the shutdown timeout")
            runner.done = True
        logger.error(
            "steplog: the event loop of backends %s stopped answering (a backend blocks "
            "it); they are left behind, not closed",
            ", ".join(repr(r.name) for r in self.runners),
        )

    def close(self, end: RunEnd, timeout: float | None) -> None:
        """Close every backend with ``end`` (all at once, each within ``timeout``).

        Returns by then, plus a short grace, even if a backend's ``close()`` hangs; the
        loop thread is then left behind (it is a daemon).
        """
        self._end = end
        self._close_timeout = timeout
        if not self.stuck:
            with contextlib.suppress(WorkerError):
                self._call(self._request_close)
            wait = None if timeout is None else timeout + _STUCK_GRACE_SECONDS
            with contextlib.suppress(WorkerError):
                if _wait_for(self._ended, wait):
                    if self._thread is not None and not self.stuck:
                        self._thread.join(_STUCK_GRACE_SECONDS)
                    return
        for runner in self.runners:
            if not runner.closed:
                runner.record_error("close", TimeoutError("close() did not return in time"))
                runner.closed = True

    def pending(self) -> dict[str, int]:
        """Events each backend has yet to write (the file's gap included)."""
        return {r.name: r.backlog + r.gap_events for r in self.runners if not r.done}

    def _call(self, callback: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None:
            raise WorkerError("the steplog fan-out is not running")
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError as exc:  # the loop has closed: it died
            raise WorkerError("the steplog fan-out has stopped") from exc

    # -- loop thread ------------------------------------------------------------

    def _on_progress(self) -> None:
        with self._room:
            self._room.notify_all()

    def _accept(self, batch: Sequence[Event], skip: list[BackendRunner]) -> None:
        for runner in self.runners:
            if runner in skip:
                runner.failed += len(batch)
                runner.last_error = "abandoned: stalled past the shutdown timeout"
            else:
                runner.accept(batch)

    def _start_mark(self, future: concurrent.futures.Future[None]) -> None:
        marker = _Marker(future, len(self.runners))
        for runner in self.runners:
            runner.mark(marker)

    def _request_drain(self) -> None:
        self._drain_requested.set()

    def _abandon_drain(self) -> None:
        self._abandoned = True
        if self._drain_scope is not None:
            self._drain_scope.cancel()

    def _request_close(self) -> None:
        self._close_requested.set()

    def _thread_main(self, info: RunInfo) -> None:
        try:
            anyio.run(self._main, info, backend="asyncio")
        except BaseException as exc:  # the fan-out must never die silently
            logger.error("steplog: the fan-out thread died", exc_info=exc)
            error = WorkerError(f"the steplog fan-out died: {exc!r}")
            error.__cause__ = exc
            for future in (self._opened, self._drained, self._ended):
                if not future.done():
                    future.set_exception(error)
        finally:
            for runner in self.runners:
                runner.done = True
            self._on_progress()
            if not self._ended.done():
                self._ended.set_exception(WorkerError("the steplog fan-out has stopped"))
            for future in self._marks:
                if not future.done():
                    future.set_exception(WorkerError("the run ended before the flush completed"))

    async def _main(self, info: RunInfo) -> None:
        self._drain_requested = anyio.Event()
        self._close_requested = anyio.Event()
        for runner in self.runners:
            runner.bind_loop()
        self._loop = asyncio.get_running_loop()
        opened: list[BackendRunner] = []
        for runner in self.runners:
            try:
                await runner.backend.open(info)
            except Exception as exc:
                error = BackendOpenError(
                    f"backend {runner.name!r} ({runner.backend!r}) could not open run "
                    f"{info.run_id!r}: {exc}"
                )
                error.__cause__ = exc
                await close_quietly([(r.name, r.backend) for r in opened], info)
                self._opened.set_exception(error)
                return
            opened.append(runner)
        async with anyio.create_task_group() as group:
            for runner in self.runners:
                group.start_soon(self._serve, runner)
            self._opened.set_result(None)
            await self._drain_requested.wait()
            for runner in self.runners:
                runner.close_stream()
            with anyio.CancelScope() as self._drain_scope:
                if self._abandoned:
                    self._drain_scope.cancel()
                for runner in self.runners:
                    await runner.finished.wait()
            for runner in self.runners:
                if not runner.finished.is_set():
                    runner.abandon("abandoned after the shutdown timeout")
                    if runner.scope is not None:
                        runner.scope.cancel()
            self._drained.set_result(None)
            await self._close_requested.wait()
            # Each backend closes in its own task (see _serve), all at once: one that
            # hangs never keeps the others from their run end.
            # A backend abandoned mid-write gets the same time: its write may still
            # land (then it is counted as delivered) and it closes after all.
            with anyio.move_on_after(self._close_timeout):
                for runner in self.runners:
                    await runner.closed_event.wait()
            for runner in self.runners:
                if runner.closed:
                    continue
                reason = (
                    "close() did not finish in time"
                    if runner.finished.is_set()
                    else "still stuck in write(); not closed"
                )
                runner.record_error("close", TimeoutError(reason))
                runner.closed = True
                self.stuck = True  # its task is left behind: do not wait for the loop
            self._ended.set_result(None)
            group.cancel_scope.cancel()

    async def _serve(self, runner: BackendRunner) -> None:
        """One backend's task: its batches, then (once the run ends) its close()."""
        with anyio.CancelScope() as runner.scope:
            await runner.run()
        await self._close_requested.wait()
        if runner.closed:  # given up on meanwhile
            return
        end = self._end
        if end is None:  # pragma: no cover - close() sets it before asking
            raise WorkerError("close requested without a run end")
        try:
            await runner.backend.close(end)
        except Exception as exc:
            runner.record_error("close", exc)
        runner.closed = True
        runner.closed_event.set()


async def close_quietly(backends: Sequence[tuple[str, Backend]], info: RunInfo) -> None:
    """Close backends of a run that failed to start; errors are only logged."""
    end = RunEnd(info.run_id, time.time(), "failed", {}, RunStats())
    for name, backend in backends:
        with anyio.move_on_after(5):
            try:
                await backend.close(end)
            except Exception as exc:
                logger.warning("steplog: closing backend %r failed: %r", name, exc)


def _nothing() -> None:
    pass


def _wait_for(future: concurrent.futures.Future[Any], timeout: float | None) -> bool:
    """Wait for ``future`` (raising its exception); False if ``timeout`` passed first."""
    try:
        future.result(timeout)
    except concurrent.futures.TimeoutError:
        return False
    return True


def _wait_until(
    future: concurrent.futures.Future[Any], deadline: Callable[[], float | None]
) -> bool:
    """Wait for ``future`` until ``deadline()`` (read again as it waits) has passed."""
    while True:
        limit = deadline()
        wait = _STALL_CHECK_SECONDS
        if limit is not None:
            wait = min(wait, limit - time.monotonic())
            if wait <= 0:
                return future.done()
        if _wait_for(future, wait):
            return True
