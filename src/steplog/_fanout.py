"""The fan-out to the in-process async sinks (console, live plot, a local backend of
your own): remote backends follow the run file through their lanes (``_lane.py``).

The writer thread (:mod:`steplog._writer`) feeds the synchronous backends
(:class:`steplog.SyncBackend`: JSONL, memory, null) itself, through a
:class:`steplog._delivery.DirectRunner` each. Any other in-process backend
(``Backend.local``, or a ``SyncBackend`` subclass that replaced the async methods) is
fed here: only when one is attached does the
writer start a :class:`Fanout`, an anyio event loop (asyncio backend) in its own daemon
thread, where each sink gets its own :class:`BackendRunner` task fed by its own queue of
batches. So a slow sink never holds up the others: it only lets its own backlog grow, up
to ``backlog_limit`` events, where the overflow policy applies to it alone
(``"block"``: the writer waits; ``"drop_oldest"``: that sink sheds its oldest queued
batches; ``"drop_newest"``: it skips the new batch). Failed writes are retried per
:class:`RetryPolicy`; after ``breaker_after`` batches given up in a row the breaker
opens until a probe gets through.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.abc

from ._delivery import Delivery, RetryPolicy
from ._options import OverflowPolicy
from ._threads import run_thread
from .backends.base import Backend
from .errors import BackendOpenError, WorkerError
from .events import Event, RunEnd, RunInfo, RunStats

__all__ = ["BackendRunner", "Fanout"]

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
        """Write batches until the queue is closed and empty."""
        queue = self._queue
        try:
            while True:
                if queue:
                    item = queue.popleft()
                    if isinstance(item, _Marker):
                        item.reached()
                        continue
                    await self._write(item)
                    if self.abandoned:
                        return
                    continue
                if self._closed:
                    return
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
        finally:
            self.done = True
            self.finished.set()
            self.on_progress()

    async def _write(self, item: Sequence[Event]) -> None:
        """Write one queued batch (retried per the policy; counted as failed if given up)."""
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
        else:
            self.failed += count
        self.on_progress()

    def _put(self, item: Sequence[Event] | _Marker) -> None:
        self._queue.append(item)
        self._wakeup.set()

    def accept(self, batch: Sequence[Event]) -> None:
        """Queue a batch already counted in ``submitted`` (on the loop thread).

        Under the drop policies a backend whose backlog is over its limit drops here;
        under ``"block"`` the writer waited for room before handing the batch over.
        """
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
        """Queue a marker that is reached once every batch queued so far is written."""
        self._put(marker)

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
        self._thread = run_thread(
            self._thread_main, args=(info,), name=f"steplog-fanout-{info.run_id}"
        )
        self._thread.start()
        self._opened.result()

    def submit(self, batch: Sequence[Event]) -> None:
        """Hand a batch to every backend (blocks while one is full under ``"block"``)."""
        count = len(batch)
        skip: list[BackendRunner] = []
        for runner in self.runners:
            if runner.policy is OverflowPolicy.BLOCK and not self._wait_for_room(runner):
                # Shutting down and this backend is still stalled: give up on it so
                # the others still get this batch.
                skip.append(runner)
                continue
            runner.submitted += count
        self._call(self._accept, batch, skip)

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
        """Events each backend has yet to write."""
        return {r.name: r.backlog for r in self.runners if not r.done}

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
