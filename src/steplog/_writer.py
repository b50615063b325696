"""The writer thread: takes encoded lines off the buffer and writes them.

One writer serves one run. It is a plain daemon thread (never an event loop: waking one
from another thread costs the logging loop far more than setting a
``threading.Event``), woken once per ``batch_size`` events or every ``flush_interval``.
Its common work is to join the lines ``log()`` encoded and hand them to the local
backends in one ``os.write`` (which releases the GIL), so the loop it serves pays as
little of its time as possible for the GIL. Events ``log()`` left as rows (tensors to
read from a device) are read back and encoded here, a batch at a time.

Backends other than the built-in local ones are async: the writer starts a
:class:`steplog._worker.Fanout` for them only when one is attached, and hands it each
batch as a :class:`steplog._batch.LineBatch` whose events are decoded only if read.
Callers talk to the writer through ``concurrent.futures.Future`` objects, which a sync
caller waits on and an async caller awaits.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ._arrays import (
    ResolveStats,
    convert_now,
    libraries_loaded,
    plain_types,
    pop_deferred,
    resolve,
    snapshot,
)
from ._batch import LineBatch
from ._buffer import LineBuffer
from ._values import ValueEncoder
from ._worker import DirectRunner, Fanout, RetryPolicy
from .backends.base import Backend
from .errors import BackendOpenError, WorkerError
from .events import RunEnd, RunInfo, RunStats, RunStatus

__all__ = ["BACKLOG_BATCHES", "Writer"]

logger = logging.getLogger("steplog")

#: Batches grow up to this many times ``batch_size`` while a backlog is drained.
BACKLOG_BATCHES = 4


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


class Writer:
    """Runs one run's writer thread: opens, feeds and closes the backends."""

    def __init__(
        self,
        buffer: LineBuffer,
        backends: Sequence[tuple[str, Backend]],
        *,
        encoder: ValueEncoder,
        batch_size: int,
        flush_interval: float,
        snapshot: bool = True,
        max_array_size: int = 1_000,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.buffer = buffer
        self.encoder = encoder
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.snapshot = snapshot
        self.max_array_size = max_array_size
        self.retry = retry if retry is not None else RetryPolicy()
        self.resolve_stats = ResolveStats()
        self.names = [name for name, _ in backends]
        self.direct: list[DirectRunner] = []
        remote: list[tuple[str, Backend]] = []
        for name, backend in backends:
            sink = backend._direct_sink()
            if sink is None:
                remote.append((name, backend))
            else:
                self.direct.append(
                    DirectRunner(
                        backend, name, sink, retry=self.retry, deadline=self._stop_deadline
                    )
                )
        self.fanout: Fanout | None = None
        if remote:
            self.fanout = Fanout(
                remote,
                backlog_limit=buffer.capacity,
                policy=buffer.policy,
                retry=self.retry,
                deadline=self._stop_deadline,
            )
        self.taken = 0
        self.batches = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._started: concurrent.futures.Future[RunInfo] = concurrent.futures.Future()
        # None once the run has ended; the lock keeps a flush() from slipping in between
        # the writer taking the requests and draining the events they wait for.
        self._flushes: list[concurrent.futures.Future[None]] | None = []
        self._flush_lock = threading.Lock()
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
            name=f"steplog-writer-{info.run_id}",
            daemon=True,
        )
        self._thread.start()
        return self._started

    def refresh_inspection(self) -> None:
        """Tell ``log()`` whether to look for arrays and tensors (cheap; every wake-up)."""
        buffer = self.buffer
        buffer.libraries = libraries_loaded()
        buffer.is_plain = plain_types().issuperset

    def alive(self) -> bool:
        """Return whether the writer thread still runs."""
        return not self._dead and self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Ask the writer to drain now (cheap enough to call once per batch)."""
        self._wake.set()

    def flush(self) -> concurrent.futures.Future[None]:
        """Return a future that resolves once every event logged so far is written."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        if not self.alive():
            future.set_exception(WorkerError("the steplog writer is not running"))
            return future
        with self._flush_lock:
            if self._flushes is None:  # the run has ended meanwhile
                future.set_exception(WorkerError("the steplog writer has stopped"))
                return future
            self._flushes.append(future)
        self._wake.set()
        return future

    def stop(
        self, status: RunStatus, summary: Mapping[str, Any], timeout: float | None
    ) -> concurrent.futures.Future[RunStats]:
        """Drain everything, close the backends; the future gives the run's statistics."""
        request = _StopRequest(status, summary, timeout)
        if not self.alive():
            request.future.set_exception(WorkerError("the steplog writer is not running"))
        elif self._stop is not None:  # the tracker deactivates a run once; keep it that way
            request.future.set_exception(WorkerError("the run is already being finished"))
        else:
            self._stop = request
            self._wake.set()
        return request.future

    def pending(self) -> dict[str, int]:
        """Events each backend has yet to write (read from another thread: approximate)."""
        queued = len(self.buffer.items)
        pending = dict.fromkeys(self.names, queued)
        if self.fanout is not None:
            for name, backlog in self.fanout.pending().items():
                pending[name] += backlog
        if not self.alive():
            return {}
        return pending

    def join(self, timeout: float | None = None) -> None:
        """Wait for the writer thread to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    # -- writer thread ----------------------------------------------------------

    def _stop_deadline(self) -> float | None:
        return None if self._stop is None else self._stop.deadline

    def _thread_main(self, info: RunInfo) -> None:
        try:
            self._main(info)
        except BaseException as exc:  # the writer must never die silently
            self._dead = True
            logger.error("steplog: the writer thread died", exc_info=exc)
            error = WorkerError(f"the steplog worker died: {exc!r}")
            error.__cause__ = exc
            futures: list[concurrent.futures.Future[Any]] = [self._started]
            futures += self._take_flushes(last=True)
            if self._stop is not None:
                futures.append(self._stop.future)
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        finally:
            self._dead = True
            self.buffer.close()
            for future in self._take_flushes(last=True):
                if not future.done():
                    future.set_exception(WorkerError("the run ended before the flush completed"))

    def _take_flushes(self, *, last: bool = False) -> list[concurrent.futures.Future[None]]:
        with self._flush_lock:
            flushes = self._flushes or []
            self._flushes = None if last else []
        return flushes

    def _main(self, info: RunInfo) -> None:
        info = dataclasses.replace(info, config=self._convert(dict(info.config)))
        if not self._open(info):
            return
        self.buffer.connect(self.wake, self.alive)
        self._started.set_result(info)
        buffer = self.buffer
        while True:
            if len(buffer.items) < buffer.wake_at:
                self._wake.wait(self.flush_interval)
            self._wake.clear()
            buffer.rearm()
            self.refresh_inspection()
            stop = self._stop
            # Take the flush requests first, then count the events: every event logged
            # before a flush() call is already queued when its request is seen here.
            flushes = self._take_flushes()
            if stop is not None:
                # The tracker no longer accepts events: drain every one of them.
                while buffer.items:
                    self._drain(len(buffer.items))
            else:
                # Drain what is there now; what arrives meanwhile waits for the next
                # round, so flush requests and stops are never starved by a busy producer.
                self._drain(len(buffer.items))
            self._complete_flushes(flushes)
            if stop is not None:
                self._end(info, stop)
                return

    def _open(self, info: RunInfo) -> bool:
        opened: list[DirectRunner] = []
        for runner in self.direct:
            try:
                runner.sink.open(info, self.encoder)
            except Exception as exc:
                error = BackendOpenError(
                    f"backend {runner.name!r} ({runner.backend!r}) could not open run "
                    f"{info.run_id!r}: {exc}"
                )
                error.__cause__ = exc
                self._close_quietly(opened, info)
                self._started.set_exception(error)
                return False
            opened.append(runner)
        if self.fanout is not None:
            try:
                self.fanout.start(info)
            except Exception as exc:
                self._close_quietly(opened, info)
                self._started.set_exception(exc)
                return False
        return True

    def _close_quietly(self, runners: list[DirectRunner], info: RunInfo) -> None:
        end = RunEnd(info.run_id, time.time(), "failed", {}, RunStats())
        for runner in runners:
            try:
                runner.sink.close(end)
            except Exception as exc:
                logger.warning("steplog: closing backend %r failed: %r", runner.name, exc)

    def _complete_flushes(self, flushes: list[concurrent.futures.Future[None]]) -> None:
        if not flushes:
            return
        if self.fanout is None:
            for future in flushes:
                if not future.done():
                    future.set_result(None)
            return
        # Markers go in now, right behind the batches these flushes wait for.
        marked = self.fanout.mark()
        for future in flushes:
            marked.add_done_callback(_resolver(future))

    def _drain(self, count: int) -> None:
        buffer = self.buffer
        while count > 0:
            # Under a backlog, batches grow up to BACKLOG_BATCHES x batch_size: each
            # batch costs this thread a few GIL hand-overs (the file write), and while the
            # producer thread holds the GIL each hand-over can wait out the interpreter's
            # switch interval (5 ms).
            size = max(self.batch_size, min(len(buffer.items), BACKLOG_BATCHES * self.batch_size))
            items = buffer.take(min(count, size))
            if not items:
                return
            count -= len(items)
            if buffer.has_rows:
                items = self._encode_rows(items)
            self._deliver(items)

    def _encode_rows(self, items: list[Any]) -> list[bytes]:
        """Read back and encode the rows among ``items`` (lines stay as they are)."""
        rows = [item for item in items if type(item) is tuple]
        if not rows:
            return items
        if not self.snapshot:
            # References were queued as they are: find the arrays and tensors now.
            is_plain = plain_types().issuperset
            for _, _, data in rows:
                if not is_plain(map(type, data.values())):
                    snapshot(data, max_array_size=self.max_array_size)
        placeholders = pop_deferred(rows)
        if placeholders:
            resolve(placeholders, self.resolve_stats, max_array_size=self.max_array_size)
        encode_row = self.encoder.encode_row
        return [encode_row(*item) if type(item) is tuple else item for item in items]

    def _deliver(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        batch = LineBatch(lines)
        self.taken += len(lines)
        self.batches += 1
        for runner in self.direct:
            runner.write_with_retries(data, batch)
        if self.fanout is not None:
            self.fanout.submit(batch)

    def _convert(self, values: dict[str, Any]) -> Any:
        """Arrays and tensors in a config or summary, as plain values."""
        if not libraries_loaded():
            return values
        return convert_now(values, self.resolve_stats, max_array_size=self.max_array_size)

    def _end(self, info: RunInfo, request: _StopRequest) -> None:
        if self.fanout is not None:
            self.fanout.drain(request.remaining())
        stats = self._stats(drain_seconds=time.perf_counter() - request.received)
        end = RunEnd(
            run_id=info.run_id,
            end_time=time.time(),
            status=request.status,
            summary=self._convert(dict(request.summary)),
            stats=stats,
        )
        for runner in self.direct:
            try:
                runner.sink.close(end)
            except Exception as exc:
                runner.record_error("close", exc)
        if self.fanout is not None:
            self.fanout.close(end, request.timeout)
        request.future.set_result(self._stats(drain_seconds=stats.drain_seconds))

    def _stats(self, *, drain_seconds: float) -> RunStats:
        dropped = self.buffer.drop_count()
        runners: dict[str, Any] = {r.name: r for r in self.direct}
        if self.fanout is not None:
            runners.update((r.name, r) for r in self.fanout.runners)
        return RunStats(
            logged=self.taken + dropped + len(self.buffer.items),
            written=self.taken,
            dropped=dropped,
            batches=self.batches,
            backend_errors=sum(r.errors for r in runners.values()),
            max_buffer_depth=self.buffer.max_depth,
            drain_seconds=drain_seconds,
            device_syncs=self.resolve_stats.device_syncs,
            backends={name: runners[name].stats(dropped) for name in self.names},
        )


def _resolver(future: concurrent.futures.Future[None]) -> Any:
    def done(marked: concurrent.futures.Future[None]) -> None:
        if future.done():
            return
        error = marked.exception()
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    return done
