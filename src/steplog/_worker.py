"""The background worker: drains the buffer in batches and fans out to the backends.

One worker serves one run. It runs an anyio event loop (asyncio backend) in its own
daemon thread, for synchronous and asynchronous callers alike: a worker task on the
caller's own loop would deadlock under the ``"block"`` policy, and a daemon thread never
keeps the interpreter alive. Callers talk to it through ``concurrent.futures.Future``
objects, which a sync caller waits on and an async caller awaits via
``asyncio.wrap_future``.

Each backend gets its own :class:`BackendRunner` task fed by its own queue of
batches, so a slow or failing backend never holds up the others: it only lets its own
backlog grow, up to ``backlog_limit`` events, where the overflow policy applies to it
alone (``"block"``: the dispatcher waits, keeping every backend lossless;
``"drop_oldest"``: that backend sheds its oldest queued batches; ``"drop_newest"``: it
skips the new batch). Failed writes are retried per :class:`RetryPolicy`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from ._arrays import (
    ResolveStats,
    convert_now,
    libraries_loaded,
    plain_types,
    pop_deferred,
    resolve,
    snapshot,
)
from ._buffer import EventBatch, EventBuffer
from .backends.base import Backend
from .errors import BackendOpenError, PermanentBackendError, WorkerError
from .events import BackendStats, RunEnd, RunInfo, RunStats, RunStatus

__all__ = ["BackendRunner", "RetryPolicy", "Worker"]

logger = logging.getLogger("steplog")

# How often a dispatcher waiting on a stalled backend checks for a shutdown deadline.
_STALL_CHECK_SECONDS = 0.1


class _Marker:
    """Travels through a backend's stream behind the batches a flush waits for."""

    __slots__ = ("reached",)

    def __init__(self) -> None:
        self.reached = anyio.Event()


class BackendRunner:
    """Feeds one backend its batches, in order, and counts what happened to them."""

    def __init__(
        self,
        backend: Backend,
        name: str,
        *,
        backlog_limit: int,
        policy: str,
        deadline: Callable[[], float | None],
        retry: RetryPolicy,
    ) -> None:
        self.backend = backend
        self.retry = retry
        self.disabled = False
        self._failed_in_a_row = 0
        self._deadline = deadline
        self.name = name
        self.backlog_limit = backlog_limit
        self.policy = policy
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.errors = 0
        self.last_error: str | None = None
        self.backlog = 0
        self.finished = anyio.Event()
        self._progress = anyio.Event()
        # Batches and flush markers in order. A deque rather than a stream: under
        # "drop_oldest" a backend that lags drops its oldest queued batch.
        self._queue: deque[EventBatch | _Marker] = deque()
        self._wakeup = anyio.Event()
        self._closed = False

    async def run(self) -> None:
        """Write batches until the queue is closed and empty."""
        queue = self._queue
        try:
            while True:
                if not queue:
                    if self._closed:
                        return
                    await self._wakeup.wait()
                    self._wakeup = anyio.Event()
                    continue
                item = queue.popleft()
                if isinstance(item, _Marker):
                    item.reached.set()
                    continue
                if await self.write_with_retries(item):
                    self.delivered += len(item)
                else:
                    self.failed += len(item)
                self.backlog -= len(item)
                self._progress.set()
                self._progress = anyio.Event()
        finally:
            self.finished.set()

    def _put(self, item: EventBatch | _Marker) -> None:
        self._queue.append(item)
        self._wakeup.set()

    async def write_with_retries(self, batch: EventBatch) -> bool:
        """Write one batch, retrying transient errors; returns whether it was written.

        Retries keep order and never duplicate: the next batch waits until this one is
        written or given up. After ``breaker_after`` batches in a row are given up, the
        backend is cut off for the rest of the run (circuit breaker): later batches are
        counted as failed without calling it, so a dead backend costs nothing.
        """
        if self.disabled:
            return False
        policy = self.retry
        attempt = 0
        while True:
            try:
                await self.backend.write(batch)
            except Exception as exc:
                self.record_error("write", exc)
                attempt += 1
                delay = policy.delay(attempt)
                permanent = isinstance(exc, PermanentBackendError)
                if permanent or attempt > policy.retries or self._out_of_time(delay):
                    break
                await anyio.sleep(delay)
            else:
                self._failed_in_a_row = 0
                return True
        self._failed_in_a_row += 1
        if policy.breaker_after and self._failed_in_a_row >= policy.breaker_after:
            self.disabled = True
            self.last_error = (
                f"cut off after {self._failed_in_a_row} failed batches: {self.last_error}"
            )
            logger.error(
                "steplog: backend %r failed %d batches in a row; it gets no more events in "
                "this run (the other backends go on)",
                self.name,
                self._failed_in_a_row,
            )
        return False

    async def submit(self, batch: EventBatch) -> None:
        """Queue a batch, applying the overflow policy if the backlog is full."""
        if self.backlog >= self.backlog_limit:
            if self.policy == "drop_newest":
                self.dropped += len(batch)
                return
            if self.policy == "drop_oldest":
                # Whatever is left is the batch being written: never wait for it.
                self._drop_oldest_queued(len(batch))
            elif not await self._wait_for_room():
                # Shutting down and this backend is still stalled: give up on it so
                # the others still get this batch.
                self.failed += len(batch)
                self.last_error = "abandoned: stalled past the shutdown timeout"
                return
        self.backlog += len(batch)
        self._put(batch)

    async def _wait_for_room(self) -> bool:
        """Block policy: wait for room in the backlog; False once the stop deadline passed."""
        while self.backlog >= self.backlog_limit and not self.finished.is_set():
            if self._out_of_time():
                return False
            # Re-check now and then: a stop with a timeout may arrive meanwhile.
            with anyio.move_on_after(_STALL_CHECK_SECONDS):
                await self._progress.wait()
        return True

    def _out_of_time(self, wait: float = 0.0) -> bool:
        """Whether the run's stop deadline passes within ``wait`` seconds."""
        deadline = self._deadline()
        return deadline is not None and time.monotonic() + wait >= deadline

    def _drop_oldest_queued(self, room: int) -> None:
        """Drop the oldest queued (not in-flight) batches until ``room`` events fit."""
        queue = self._queue
        index = 0
        while self.backlog + room > self.backlog_limit and index < len(queue):
            item = queue[index]
            if isinstance(item, _Marker):  # flush markers keep their place
                index += 1
                continue
            del queue[index]
            self.backlog -= len(item)
            self.dropped += len(item)

    def mark(self) -> _Marker:
        """Queue a marker that is reached once every batch queued so far is written."""
        marker = _Marker()
        self._put(marker)
        return marker

    def close_stream(self) -> None:
        """Let :meth:`run` end after the queued batches."""
        self._closed = True
        self._wakeup.set()

    def discard(self) -> None:
        """Forget the queue of a runner that never ran."""
        self._queue.clear()
        self._closed = True

    def abandon(self, reason: str) -> None:
        """Count the events still queued as failed (the backend did not finish in time)."""
        if self.backlog:
            self.failed += self.backlog
            self.errors += 1
            self.last_error = reason
            logger.error("steplog: backend %r: %s (%d events)", self.name, reason, self.backlog)
            self.backlog = 0

    def record_error(self, what: str, exc: BaseException) -> None:
        """Count a failed backend call and log it (at 1, 10, 100, … failures)."""
        self.errors += 1
        self.last_error = f"{what}: {exc!r}"
        if _is_power_of_ten(self.errors):
            logger.warning(
                "steplog: backend %r failed to %s (%d failure%s so far); "
                "the other backends and the run go on",
                self.name,
                what,
                self.errors,
                "" if self.errors == 1 else "s",
                exc_info=exc if self.errors == 1 else None,
            )

    def stats(self, shared_drops: int) -> BackendStats:
        """Return this backend's counts; ``shared_drops`` are the buffer's drops."""
        return BackendStats(
            delivered=self.delivered,
            failed=self.failed,
            dropped=self.dropped + shared_drops,
            errors=self.errors,
            last_error=self.last_error,
            disabled=self.disabled,
        )


#: Batches grow up to this many times ``batch_size`` while a backlog is drained.
BACKLOG_BATCHES = 4


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a failing backend write is retried.

    Attributes:
        retries: Further attempts after the first failure of a batch.
        backoff: Seconds before the first retry; doubled for each further one.
        max_backoff: Longest wait between two attempts.
        breaker_after: Batches given up in a row before the backend is cut off for the
            rest of the run; 0 never cuts it off.
    """

    retries: int = 3
    backoff: float = 0.05
    max_backoff: float = 2.0
    breaker_after: int = 5

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return float(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))


class _StopRequest:
    def __init__(
        self,
        status: RunStatus,
        summary: Mapping[str, Any],
        timeout: float | None,
    ) -> None:
        self.status = status
        self.summary = summary
        self.timeout = timeout
        self.future: concurrent.futures.Future[RunStats] = concurrent.futures.Future()
        self.received = time.perf_counter()
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left before the deadline (``None``: no deadline)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


class Worker:
    """Runs one run's event loop thread: opens, feeds and closes the backends."""

    def __init__(
        self,
        buffer: EventBuffer,
        backends: Sequence[tuple[str, Backend]],
        *,
        batch_size: int,
        flush_interval: float,
        snapshot: bool = True,
        max_array_size: int = 1_000,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.buffer = buffer
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.backends = list(backends)
        # Built on the loop thread: anyio primitives need a running event loop.
        self.runners: list[BackendRunner] = []
        self.taken = 0
        self.batches = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.snapshot = snapshot
        self.max_array_size = max_array_size
        self.retry = retry if retry is not None else RetryPolicy()
        self.resolve_stats = ResolveStats()
        self._libraries = False  # torch, numpy or jax imported (see refresh_inspection)
        self._started: concurrent.futures.Future[RunInfo] = concurrent.futures.Future()
        # Created on the loop thread in _main, before _loop is set (wake() needs both).
        self._wake_event: anyio.Event
        self._flushes: list[concurrent.futures.Future[None]] = []
        self._pending_flushes: set[concurrent.futures.Future[None]] = set()
        self._stop: _StopRequest | None = None
        self._dead = False

    # -- called from other threads ----------------------------------------------

    def start(self, info: RunInfo) -> concurrent.futures.Future[RunInfo]:
        """Start the thread and open the backends; the future fails if one cannot open.

        The future's result is ``info`` with arrays and tensors in its config converted
        to plain values, as the backends received it.
        """
        self._thread = threading.Thread(
            target=self._thread_main,
            args=(info,),
            name=f"steplog-worker-{info.run_id}",
            daemon=True,
        )
        self._thread.start()
        return self._started

    def refresh_inspection(self) -> None:
        """Tell ``log()`` whether to look for arrays and tensors (cheap; every wake-up)."""
        buffer = self.buffer
        self._libraries = libraries_loaded()
        buffer.inspect = self.snapshot and self._libraries
        buffer.is_plain = plain_types().issuperset

    def alive(self) -> bool:
        """Return whether the worker thread still runs its loop."""
        return not self._dead and self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Ask the worker to drain now (cheap enough to call once per batch)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: the worker has ended
                loop.call_soon_threadsafe(self._on_wake)

    def flush(self) -> concurrent.futures.Future[None]:
        """Return a future that resolves once every event logged so far is written."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._call(self._on_flush, future, future)
        return future

    def stop(
        self, status: RunStatus, summary: Mapping[str, Any], timeout: float | None
    ) -> concurrent.futures.Future[RunStats]:
        """Drain everything, close the backends; the future gives the run's statistics."""
        request = _StopRequest(status, summary, timeout)
        self._call(self._on_stop, request, request.future)
        return request.future

    def pending(self) -> dict[str, int]:
        """Events each backend has yet to write (read from another thread: approximate)."""
        queued = len(self.buffer.events)
        return {r.name: r.backlog + queued for r in list(self.runners) if not r.finished.is_set()}

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker thread to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _call(self, callback: Any, arg: Any, future: concurrent.futures.Future[Any]) -> None:
        loop = self._loop
        if loop is None or not self.alive():
            future.set_exception(WorkerError("the steplog worker is not running"))
            return
        try:
            loop.call_soon_threadsafe(callback, arg)
        except RuntimeError:
            future.set_exception(WorkerError("the steplog worker has stopped"))

    # -- loop thread ------------------------------------------------------------

    def _stop_deadline(self) -> float | None:
        return None if self._stop is None else self._stop.deadline

    def _on_wake(self) -> None:
        self._wake_event.set()

    def _on_flush(self, future: concurrent.futures.Future[None]) -> None:
        self._flushes.append(future)
        self._on_wake()

    def _on_stop(self, request: _StopRequest) -> None:
        if self._stop is not None:  # the tracker deactivates a run once; keep it that way
            request.future.set_exception(WorkerError("the run is already being finished"))
            return
        self._stop = request
        self._on_wake()

    def _thread_main(self, info: RunInfo) -> None:
        try:
            anyio.run(self._main, info, backend="asyncio")
        except BaseException as exc:  # the worker must never die silently
            self._dead = True
            logger.error("steplog: the worker thread died", exc_info=exc)
            error = WorkerError(f"the steplog worker died: {exc!r}")
            error.__cause__ = exc
            futures: list[concurrent.futures.Future[Any]] = [self._started, *self._flushes]
            futures += self._pending_flushes
            if self._stop is not None:
                futures.append(self._stop.future)
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        finally:
            self._dead = True
            self.buffer.close()

    async def _main(self, info: RunInfo) -> None:
        self._wake_event = anyio.Event()
        self._loop = asyncio.get_running_loop()
        self.runners = [
            BackendRunner(
                b,
                name,
                backlog_limit=self.buffer.capacity,
                policy=self.buffer.policy,
                deadline=self._stop_deadline,
                retry=self.retry,
            )
            for name, b in self.backends
        ]
        info = dataclasses.replace(info, config=await self._convert(dict(info.config)))
        if not await self._open_backends(info):
            return
        self.buffer.connect(self.wake, self.alive)
        self._started.set_result(info)
        async with anyio.create_task_group() as group:
            for runner in self.runners:
                group.start_soon(runner.run)
            request = await self._dispatch(group)
            with anyio.move_on_after(request.remaining()) as scope:
                for runner in self.runners:
                    await runner.finished.wait()
            if scope.cancelled_caught:
                for runner in self.runners:
                    if not runner.finished.is_set():
                        runner.abandon(f"abandoned after the {request.timeout} s shutdown timeout")
                group.cancel_scope.cancel()
        stats = self._stats(drain_seconds=time.perf_counter() - request.received)
        end = RunEnd(
            run_id=info.run_id,
            end_time=time.time(),
            status=request.status,
            summary=await self._convert(dict(request.summary)),
            stats=stats,
        )
        for runner in self.runners:
            with anyio.move_on_after(request.timeout) as scope:
                try:
                    await runner.backend.close(end)
                except Exception as exc:
                    runner.record_error("close", exc)
            if scope.cancelled_caught:
                runner.record_error("close", TimeoutError("close() did not finish in time"))
        for future in [*self._pending_flushes, *self._flushes]:
            if not future.done():
                future.set_exception(WorkerError("the run ended before the flush completed"))
        request.future.set_result(self._stats(drain_seconds=stats.drain_seconds))

    async def _open_backends(self, info: RunInfo) -> bool:
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
                await self._close_quietly(opened, info)
                for unused in self.runners:
                    unused.discard()
                self._started.set_exception(error)
                return False
            opened.append(runner)
        return True

    async def _close_quietly(self, runners: list[BackendRunner], info: RunInfo) -> None:
        end = RunEnd(info.run_id, time.time(), "failed", {}, RunStats())
        for runner in runners:
            with anyio.move_on_after(5):
                try:
                    await runner.backend.close(end)
                except Exception as exc:
                    logger.warning("steplog: closing backend %r failed: %r", runner.name, exc)

    async def _dispatch(self, group: anyio.abc.TaskGroup) -> _StopRequest:
        buffer = self.buffer
        while True:
            with anyio.move_on_after(self.flush_interval):
                await self._wake_event.wait()
            if self._wake_event.is_set():
                self._wake_event = anyio.Event()
            buffer.rearm()
            self.refresh_inspection()
            stop = self._stop
            if stop is not None:
                # The tracker no longer accepts events: drain every one of them.
                while buffer.events:
                    await self._drain(len(buffer.events))
                self._start_flushes(group, self._take_flushes())
                for runner in self.runners:
                    runner.close_stream()
                return stop
            # Take the flush requests first, then count the events: every event logged
            # before a flush() call is already queued when its request is seen here.
            flushes = self._take_flushes()
            # Drain what is there now; what arrives meanwhile waits for the next round,
            # so flush requests and stops are never starved by a busy producer.
            await self._drain(len(buffer.events))
            self._start_flushes(group, flushes)

    def _take_flushes(self) -> list[concurrent.futures.Future[None]]:
        flushes, self._flushes = self._flushes, []
        self._pending_flushes.update(flushes)
        return flushes

    def _start_flushes(
        self, group: anyio.abc.TaskGroup, flushes: list[concurrent.futures.Future[None]]
    ) -> None:
        for future in flushes:
            # Markers go in now, right behind the batches this flush waits for.
            markers = [runner.mark() for runner in self.runners]
            group.start_soon(self._complete_flush, future, markers)

    async def _complete_flush(
        self, future: concurrent.futures.Future[None], markers: list[_Marker]
    ) -> None:
        for marker in markers:
            await marker.reached.wait()
        self._pending_flushes.discard(future)
        if not future.done():
            future.set_result(None)

    async def _convert(self, values: dict[str, Any]) -> Any:
        """Arrays and tensors in a config or summary, as plain values (off the loop)."""
        if not libraries_loaded():
            return values
        return await anyio.to_thread.run_sync(
            functools.partial(
                convert_now, values, self.resolve_stats, max_array_size=self.max_array_size
            )
        )

    async def _resolve(self, batch: EventBatch) -> None:
        """Read back and convert the arrays and tensors of one batch, in place."""
        rows = batch.rows
        if not self.snapshot:
            # References were queued as they are: find the arrays and tensors now.
            is_plain = plain_types().issuperset
            for _, _, data in rows:
                if not is_plain(map(type, data.values())):
                    snapshot(data, max_array_size=self.max_array_size)
        placeholders = pop_deferred(rows)
        if placeholders:
            await anyio.to_thread.run_sync(
                functools.partial(
                    resolve, placeholders, self.resolve_stats, max_array_size=self.max_array_size
                )
            )

    async def _drain(self, count: int) -> None:
        buffer = self.buffer
        runners = self.runners
        while count > 0:
            # Under a backlog, batches grow up to BACKLOG_BATCHES x batch_size. Each batch
            # costs this thread a few GIL hand-overs (the file write, the event loop's
            # poll), and while the producer thread holds the GIL each hand-over waits out
            # the interpreter's switch interval (5 ms): with fixed 1 024-event batches that
            # "convoy" capped draining at ~190 000 events/s under a busy producer.
            size = max(self.batch_size, min(len(buffer.events), BACKLOG_BATCHES * self.batch_size))
            batch = buffer.take(min(count, size))
            if not batch:
                return
            if buffer.deferred or (self._libraries and not self.snapshot):
                await self._resolve(batch)
            count -= len(batch)
            self.taken += len(batch)
            self.batches += 1
            for runner in runners:
                await runner.submit(batch)
            # Let the backends write while a large backlog is being dispatched.
            await anyio.lowlevel.checkpoint()

    def _stats(self, *, drain_seconds: float) -> RunStats:
        dropped = self.buffer.drop_count()
        return RunStats(
            logged=self.taken + dropped + len(self.buffer.events),
            written=self.taken,
            dropped=dropped,
            batches=self.batches,
            backend_errors=sum(r.errors for r in self.runners),
            max_buffer_depth=self.buffer.max_depth,
            drain_seconds=drain_seconds,
            device_syncs=self.resolve_stats.device_syncs,
            backends={r.name: r.stats(dropped) for r in self.runners},
        )


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1
