"""The writer thread: takes encoded lines off the buffer and writes them.

One writer serves one run. It is a plain daemon thread (never an event loop: waking one
from another thread costs the logging loop far more than setting a
``threading.Event``), woken once per ``batch_size`` events or every ``flush_interval``.
Its common work is to join the lines ``log()`` encoded and hand them to the
synchronous backends (:class:`steplog.SyncBackend`: the run file, memory, null) — the
run file's :class:`steplog.runfile.write.RunFile` appends them in one ``os.write``
(which releases the GIL) — so the loop it serves pays as little of its time as possible
for the GIL. Events ``log()`` left as rows (tensors to read from a device) are read back
and encoded here, a batch at a time.

Other in-process backends (``local``: the console, a live plot) are async: the writer
starts a :class:`steplog._worker.Fanout` for them only when one is attached, and hands it each
batch as a :class:`steplog._batch.EventBatch` whose events are decoded only if read.
Callers talk to the writer through ``concurrent.futures.Future`` objects, which a sync
caller waits on and an async caller awaits.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import select
import signal
import socket
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
from ._batch import EventBatch
from ._buffer import LineBuffer, RingCopy
from ._delivery import DirectRunner, RetryPolicy
from ._monitor import Monitor
from ._options import DEFAULT_MAX_ARRAY_SIZE
from ._threads import Stopper, run_thread
from ._worker import Fanout, _wait_until
from .backends.base import Backend, SyncBackend
from .backends.jsonl import JsonlBackend
from .errors import BackendOpenError, WorkerError
from .events import BackendStats, RunEnd, RunInfo, RunStats, RunStatus
from .runfile.codec import ValueEncoder
from .runfile.schema import alert_record
from .runfile.write import RunFile
from .watch import Alert

__all__ = ["BACKLOG_BATCHES", "Writer"]

logger = logging.getLogger("steplog")

#: Async backends get batches of up to this many times ``batch_size`` events.
BACKLOG_BATCHES = 4
#: Seconds async backends get to close even when the stop's deadline has passed.
CLOSE_GRACE_SECONDS = 1.0


class _FlushRequest(concurrent.futures.Future):  # type: ignore[type-arg]
    """A ``flush()`` waiting on the writer: done once every event logged before it is
    written, and every alert those fired has been through ``on_alert`` — unless
    ``on_alert`` itself asked (``after_callbacks`` False: it would wait for itself)."""

    def __init__(self, *, after_callbacks: bool) -> None:
        super().__init__()
        self.after_callbacks = after_callbacks


class _StopRequest:
    def __init__(
        self,
        status: RunStatus,
        summary: Mapping[str, Any],
        timeout: float | None,
    ) -> None:
        #: The thread that asked (``on_alert`` finishing its own run is not waited for).
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
        self.durability = durability
        #: Where the remote backends' lanes run: ``"process"`` or ``"thread"``.
        self.delivery = delivery
        #: Seconds finish() waits for a remote backend that is down (its lane goes on
        #: in the background, or the next resume or ``steplog sync`` delivers the rest).
        self.down_grace = down_grace
        #: ``durability="process"``: the JSONL backend whose file a writer process
        #: writes, fed by ``log()`` through the ring (not by :meth:`_deliver`).
        self.ringed: DirectRunner | None = None
        self.ring: Any = None
        self.ring_taken = 0
        #: The run file's runner in ring mode (kept when the writer process dies and
        #: this thread takes the file over: ``took_over``).
        self.file_runner: DirectRunner | None = None
        self.took_over = False
        self.file_taken = 0  # events this thread wrote to the file after taking it over
        self.salvage_lost = 0  # lines of the ring that could not be written then
        self.encoder = encoder
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.snapshot = snapshot
        self.max_array_size = max_array_size
        self.retry = retry if retry is not None else RetryPolicy()
        self.resolve_stats = ResolveStats()
        self.names = [name for name, _ in backends]
        self.direct: list[DirectRunner] = []
        local: list[tuple[str, Backend]] = []
        #: The remote backends: each gets a lane that follows the run file (started
        #: once the file is open: :meth:`_start_lanes`).
        self.remote: list[tuple[str, Backend]] = []
        for name, backend in backends:
            if isinstance(backend, SyncBackend) and backend.synchronous and backend.local:
                self.direct.append(
                    DirectRunner(backend, name, retry=self.retry, deadline=self._stop_deadline)
                )
            elif backend.local:
                local.append((name, backend))
            else:
                self.remote.append((name, backend))
        self.lanes: Any = None
        self._final_lanes: dict[str, BackendStats] | None = None  # their counts at the end
        #: In-process async sinks (console, live plot, a local backend of your own).
        self.fanout: Fanout | None = None
        if local:
            self.fanout = Fanout(
                local,
                backlog_limit=buffer.capacity,
                policy=buffer.policy,
                retry=self.retry,
                deadline=self._stop_deadline,
            )
        self.taken = 0
        self.batches = 0
        # Woken through a socket pair rather than a threading.Event: sending a byte is
        # reentrant, so a signal handler that logs can wake the writer even while it
        # interrupted a wake-up on the same thread (Event.set would deadlock there).
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._thread: threading.Thread | None = None
        self._started: concurrent.futures.Future[RunInfo] = concurrent.futures.Future()
        # None once the run has ended; the lock keeps a flush() from slipping in between
        # the writer taking the requests and draining the events they wait for.
        self._flushes: list[_FlushRequest] | None = []
        #: Flushes waiting for the writer process to confirm (it may be slow).
        self._ring_flushes: list[_FlushRequest] = []
        self._flush_lock = threading.Lock()
        self._stop: _StopRequest | None = None
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
        buffer = self.buffer
        buffer.libraries = libraries_loaded()
        buffer.is_plain = plain_types().issuperset

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
        future = _FlushRequest(
            after_callbacks=callbacks is None or not callbacks.runs_in(threading.get_ident())
        )
        if not self.alive():
            future.set_exception(WorkerError("the steplog writer is not running"))
            return future
        with self._flush_lock:
            if self._flushes is None:  # the run has ended meanwhile
                future.set_exception(WorkerError("the steplog writer has stopped"))
                return future
            self._flushes.append(future)
        self.wake()
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
            self.wake()
        return request.future

    def hurry(self, status: RunStatus) -> bool:
        """Bring the run's end forward, as ``status`` (see ``_StopRequest.hurry``).

        Returns whether a stop was under way (there is nothing to hurry otherwise).
        """
        request = self._stop
        if request is None or request.future.done():
            return False
        request.hurry(status)
        self.wake()
        return True

    def pending(self) -> dict[str, int]:
        """Events each backend has yet to write (read from another thread: approximate)."""
        queued = self.buffer.count
        pending = dict.fromkeys(self.names, queued)
        if self.fanout is not None:
            for name, backlog in self.fanout.pending().items():
                pending[name] += backlog
        if self.lanes is not None:
            for name, backlog in self.lanes.pending().items():
                pending[name] += backlog
        if not self.alive():
            return {}
        return pending

    def join(self, timeout: float | None = None) -> None:
        """Wait for the writer thread to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    # -- writer thread ----------------------------------------------------------

    def _stopping(self) -> bool:
        """Whether the run is ending (a stop was asked for)."""
        return self._stop is not None

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
            self._wake_in.close()
            self._wake_out.close()
            for future in self._take_flushes(last=True):
                if not future.done():
                    future.set_exception(WorkerError("the run ended before the flush completed"))

    def _drain_wake_ups(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError: nothing left
            while self._wake_in.recv(4096):
                pass

    def _take_flushes(self, *, last: bool = False) -> list[_FlushRequest]:
        with self._flush_lock:
            flushes = self._flushes or []
            self._flushes = None if last else []
        if last:
            flushes, self._ring_flushes = self._ring_flushes + flushes, []
        return flushes

    def _main(self, info: RunInfo) -> None:
        info = dataclasses.replace(info, config=self._convert(dict(info.config)))
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
            if self.ring is not None and not self.ring.alive():
                self._take_over()
            buffer.rearm(stopping=self._stopping)
            self.refresh_inspection()
            stop = self._stop
            # Take the flush requests first, then count the events: every event logged
            # before a flush() call is already queued when its request is seen here.
            flushes = self._take_flushes()
            if stop is not None:
                # The tracker no longer accepts events: drain every one of them.
                while buffer.count:
                    self._drain()
            else:
                # Drain what is there now; what arrives meanwhile waits for the next
                # round, so flush requests and stops are never starved by a busy producer.
                self._drain()
            if monitor is not None:
                monitor.tick(self._events_seen())
                self._write_records()
            if self.ring is not None and (flushes or self._ring_flushes):
                flushes = self._flush_ring(self._ring_flushes + flushes, stop)
            self._complete_flushes(flushes)
            if stop is not None:
                self._end(info, stop)
                return

    def _flush_ring(
        self, flushes: list[_FlushRequest], stop: _StopRequest | None
    ) -> list[_FlushRequest]:
        """The flushes the writer process has confirmed (or that need it no more); the
        others wait for the next round (a stalled writer process never holds this thread:
        each round waits a flush interval at most, a stop its own deadline)."""
        ring = self.ring
        self._ring_flushes = []
        if ring.flush(stop_timeout(stop) if stop is not None else self.flush_interval):
            return flushes
        if not ring.alive():  # it died: what it had is written now
            self._take_over()
            return flushes
        if stop is None:
            self._ring_flushes = flushes
            return []
        error = WorkerError("the writer process did not confirm the flush in time")
        for future in flushes:
            if not future.done():
                future.set_exception(error)
        return []

    def _open(self, info: RunInfo) -> bool:
        opened: list[DirectRunner] = []
        for runner in self.direct:
            try:
                runner.backend.open_sync(info, self.encoder)
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
        if self.durability == "process":
            try:
                self._start_ring(info)
            except Exception as exc:
                error = BackendOpenError(f"could not start the writer process: {exc}")
                error.__cause__ = exc
                self._close_quietly(opened, info)
                self._started.set_exception(error)
                return False
        if self.fanout is not None:
            try:
                self.fanout.start(info)
            except Exception as exc:
                self._close_quietly(opened, info)
                self._started.set_exception(exc)
                return False
        if self.remote:
            try:
                self._start_lanes(info)
            except Exception as exc:
                if self.fanout is not None:
                    self.fanout.close(RunEnd(info.run_id, time.time(), "failed", {}, RunStats()), 5)
                self._close_quietly(opened, info)
                self._started.set_exception(exc)
                return False
        return True

    def _run_file(self) -> JsonlBackend | None:
        """The run file's JSONL backend (a tracker with remote backends has one)."""
        runner = self.file_runner or next(
            (r for r in self.direct if isinstance(r.backend, JsonlBackend)), None
        )
        backend = None if runner is None else runner.backend
        return backend if isinstance(backend, JsonlBackend) else None

    def _start_lanes(self, info: RunInfo) -> None:
        """A lane per remote backend, following the run file from its cursor: in the
        delivery process (``delivery="process"``: the backends that pickle), else in a
        thread of this process."""
        from ._delivery_process import ProcessLanes, movable
        from ._lane import Lane, cursor_path
        from ._lanehost import LaneGroups, ThreadLanes
        from .backends.sampled import Sampled

        jsonl = self._run_file()
        if jsonl is None or jsonl.path is None:
            raise BackendOpenError(
                "remote backends follow the run file: the tracker needs a JsonlBackend"
            )
        path = jsonl.path
        by_name = dict(self.remote)
        here = list(self.remote)
        groups: list[Any] = []
        if self.delivery == "process":
            specs = []
            for name, backend in self.remote:
                data = movable(backend)
                if data is not None:
                    specs.append((name, data, cursor_path(path, backend, name=name)))
            if specs:
                targets = {
                    name: b.backend if isinstance(b, Sampled) else b for name, b in self.remote
                }
                process = ProcessLanes(
                    path,
                    specs,
                    batch_size=BACKLOG_BATCHES * self.batch_size,
                    retry=self.retry,
                    ring_pid=self.ring.pid if self.ring is not None else None,
                    targets=targets,
                )
                errors, unmovable, states = process.start(info)
                if errors:
                    process.kill()
                    name, exc = next(iter(errors.items()))
                    error = BackendOpenError(
                        f"backend {name!r} ({by_name[name]!r}) could not open run "
                        f"{info.run_id!r}: {exc}"
                    )
                    error.__cause__ = exc
                    raise error
                process.apply_states(states)
                moved = {name for name, _, _ in specs} - set(unmovable)
                here = [(n, b) for n, b in self.remote if n not in moved]
                process.names = [n for n in process.names if n in moved]
                groups.append(process)
        if here:
            lanes = [
                Lane(
                    path,
                    backend,
                    cursor=cursor_path(path, backend, name=name),
                    name=name,
                    batch_size=BACKLOG_BATCHES * self.batch_size,
                    retry=self.retry,
                    deadline=self._stop_deadline,
                )
                for name, backend in here
            ]
            threads = ThreadLanes(path, lanes)
            try:
                threads.start(info)
            except BaseException:
                for group in groups:
                    group.kill()
                raise
            groups.append(threads)
        self.lanes = LaneGroups(groups)

    def _start_ring(self, info: RunInfo) -> None:
        from ._ring import ProcessWriter

        runner = next((r for r in self.direct if _run_file_of(r) is not None), None)
        file = None if runner is None else _run_file_of(runner)
        if runner is None or file is None:
            logger.warning(
                "steplog: durability='process' needs a JsonlBackend; run %r is written "
                "by the writer thread instead",
                info.run_id,
            )
            return
        if not ProcessWriter.supported():
            logger.warning(
                "steplog: durability='process' is not supported on this platform (it "
                "needs POSIX on x86-64); run %r is written by the writer thread instead",
                info.run_id,
            )
            return

        def start(fd: int) -> ProcessWriter:
            ring = ProcessWriter(
                fd,
                run_id=info.run_id,
                capacity=min(self.buffer.byte_budget, 16 * 2**20),
                flush_interval=self.flush_interval,
            )
            ring.start()
            return ring

        self.ring = file.hand_off(start)
        # A line the ring cannot hold would never fit: such an event is recorded as the
        # too-large marker instead (by log(), or here for the rows), as over
        # max_event_bytes.
        limit = min(self.encoder.max_event_bytes, self.ring.capacity)
        self.encoder.max_event_bytes = self.buffer.line_limit = limit
        self.direct.remove(runner)
        self.ringed = self.file_runner = runner
        # Value watchers read the lines too: log() then queues a copy for this thread.
        watching = self.monitor is not None and bool(self.monitor.needles)
        self.buffer.attach_ring(
            self.ring, others=bool(self.direct) or self.fanout is not None or watching
        )
        if self.monitor is not None:
            logger.info(
                "steplog: durability='process': system and alert records of run %r are "
                "not written to its run file (alerts still reach logging and on_alert)",
                info.run_id,
            )

    def forget_after_fork(self) -> None:
        """In a forked child: let go of the run file and the writer process.

        The child's copy of the run file's descriptor would keep the writer's lock
        (``runfile.lock``: it belongs to the open file, which the fork shares) after the
        parent is gone, and block a resume for as long as the child lives (a DataLoader
        worker, a helper process); the writer process's ring is left untouched.
        """
        runners = [*self.direct, *([self.ringed] if self.ringed is not None else [])]
        for runner in runners:
            file = _run_file_of(runner)
            if file is not None:
                file.forget_after_fork()
        if self.ring is not None:
            self.ring.forget_after_fork()
        if self.lanes is not None:
            self.lanes.forget_after_fork()
        self._wake_in.close()
        self._wake_out.close()

    def _close_quietly(self, runners: list[DirectRunner], info: RunInfo) -> None:
        end = RunEnd(info.run_id, time.time(), "failed", {}, RunStats())
        for runner in runners:
            try:
                runner.backend.close_sync(end)
            except Exception as exc:
                logger.warning("steplog: closing backend %r failed: %r", runner.name, exc)

    def _complete_flushes(self, flushes: list[_FlushRequest]) -> None:
        if not flushes:
            return
        # Markers go in now, right behind the batches (and alerts) these flushes wait for.
        waits: list[concurrent.futures.Future[None]] = []
        if self.fanout is not None:
            waits.append(self.fanout.mark())
        if self.lanes is not None:
            waits.append(self.lanes.flush(self._file_size()))
        callbacks = self.monitor.callbacks if self.monitor is not None else None
        marker = callbacks.mark() if callbacks is not None else None
        for future in flushes:
            needs = [*waits, marker] if marker is not None and future.after_callbacks else waits
            _resolve_after(future, needs)

    def _drain(self) -> None:
        """Take everything queued and deliver it as one batch."""
        items, count = self.buffer.take(stopping=self._stopping)
        if not count:
            return
        file_data: bytes | None = None  # what the run file gets, when not all of it
        file_count = count
        if self.ring is not None:
            items = self._to_ring(items)
            if not items:
                return
            file_data, file_count = b"", 0  # the ring had them, or _to_ring wrote them
        elif self.buffer.has_rows:
            items = self._encode_rows(items)
        if self.took_over and file_data is None:
            copies = sum(1 for item in items if type(item) is RingCopy)
            if copies:  # the ring had them, so the file has them
                file_data = b"".join(item for item in items if type(item) is not RingCopy)
                file_count = count - copies
        data = items[0] if len(items) == 1 else b"".join(items)
        self._deliver(data, count, file_data=file_data, file_count=file_count)
        monitor = self.monitor
        if monitor is not None and monitor.needles:
            monitor.scan(data)

    def _events_seen(self) -> int:
        """Events logged so far that the writer has seen (taken, or dropped)."""
        buffer = self.buffer
        if self.file_runner is not None:
            return buffer.ringed + self.ring_taken + self.file_taken + buffer.dropped
        return self.taken + buffer.dropped

    def _write_records(self) -> None:
        """Append the monitor's system and alert records to the run file(s)."""
        if self.monitor is None:
            return
        data = self.monitor.take_records()
        if not data:
            return
        for runner in self.direct:
            file = _run_file_of(runner)
            if file is None or runner.disabled:
                continue
            try:
                file.append(data)
            except Exception as exc:
                with contextlib.suppress(Exception):
                    file.cut_back()  # cut a partial record back out
                runner.record_error("write system and alert records", exc)

    def _encode_rows(self, items: list[Any]) -> list[Any]:
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

    def _to_ring(self, items: list[Any]) -> list[Any]:
        """Ring mode: put the rows and pending lines into the ring, in order.

        Returns what the other backends get (everything, if there are any).
        """
        pending = [type(item) is not bytearray for item in items]
        if any(pending):
            items = self._encode_rows(items)
            ring = self.ring
            for index, (line, to_ring) in enumerate(zip(items, pending, strict=True)):
                if not to_ring:
                    continue
                while not ring.put(line):
                    if not ring.wait_for_room(len(line), 0.1) and not ring.alive():
                        # It died: what it had is written now; this thread writes the rest.
                        self._take_over()
                        later = zip(items[index:], pending[index:], strict=True)
                        rest = [item for item, to_file in later if to_file]
                        self._write_file(b"".join(rest), len(rest))
                        return items if self.buffer.others else []
                self.ring_taken += 1
            ring.wake()
            self.buffer.ring_idle()
        return items if self.buffer.others else []

    def _take_over(self) -> None:
        """The writer process died mid-run (the OOM killer, a stray ``kill``): write
        what its ring held, then write the run file from this thread, as with
        ``durability="thread"``. Warns once and records it in the file (an alert record
        of watcher ``"writer_process"``) and in the statistics (``writer_takeover``)."""
        ring, runner = self.ring, self.file_runner
        assert runner is not None  # ring mode has one
        lost = ring.take_over()
        status = ring.exit_status
        file = _run_file_of(runner)
        if file is not None:
            file.take_back()
        self.direct.insert(0, runner)  # first: a fork meanwhile closes its file copy
        self.buffer.detach_ring()
        self.ring = self.ringed = None
        self.took_over = True
        self.salvage_lost = lost
        if status is not None and status < 0:
            try:
                how = f"killed by {signal.Signals(-status).name}"
            except ValueError:
                how = f"killed by signal {-status}"
        else:
            how = f"exit status {status}"
        events = self.buffer.ringed + self.ring_taken
        message = (
            f"the writer process died ({how}) after {events:,} events; the logging "
            "process writes the run file from here on, as with durability='thread' (a "
            "kill -9 of it now loses what it logged in its last flush_interval)"
            + (f"; {lost:,} events the ring held could not be written" if lost else "")
        )
        logger.warning("steplog: %s", message)
        alert = Alert("writer_process", None, status, None, time.time(), message)
        self._write_file(self.encoder.encode(alert_record(alert)), 0)

    def _write_file(self, data: bytes, count: int) -> None:
        """Write ``data`` (``count`` events) to the run file only (after a take-over)."""
        runner = self.file_runner
        if runner is None or not data:
            return
        runner.send_now(EventBatch(data, count))
        self.file_taken += count

    def _deliver(
        self,
        data: bytes | bytearray,
        count: int,
        *,
        file_data: bytes | None = None,
        file_count: int = 0,
    ) -> None:
        """Hand a batch to every backend; the run file gets ``file_data`` instead when
        given (``durability="process"``: what the ring did not have)."""
        batch = EventBatch(data, count)
        self.taken += count
        for runner in self.direct:
            if file_data is not None and runner is self.file_runner:
                if file_data:
                    runner.send_now(EventBatch(file_data, file_count))
            else:
                runner.send_now(batch)
        if self.took_over:
            self.file_taken += count if file_data is None else file_count
        if self.lanes is not None:
            self.lanes.wake()  # the file grew: the remote backends' lanes read on
        # Async sinks get batches of at most BACKLOG_BATCHES x batch_size events; the
        # direct ones the whole take, in one write.
        size = BACKLOG_BATCHES * self.batch_size
        if self.fanout is None or count <= size:
            self.batches += 1
            if self.fanout is not None:
                self.fanout.submit(batch)
            return
        lines = batch.lines
        for start in range(0, count, size):
            chunk = b"".join(lines[start : start + size])
            self.batches += 1
            self.fanout.submit(EventBatch(chunk, min(size, count - start)))

    def _file_size(self) -> int:
        """Bytes in the run file now."""
        jsonl = self._run_file()
        try:
            return os.stat(jsonl.path).st_size if jsonl is not None and jsonl.path else 0
        except OSError:
            return 0

    def _convert(self, values: dict[str, Any]) -> Any:
        """Arrays and tensors in a config or summary, as plain values."""
        if not libraries_loaded():
            return values
        return convert_now(values, self.resolve_stats, max_array_size=self.max_array_size)

    def _end(self, info: RunInfo, request: _StopRequest) -> None:
        if self.monitor is not None:
            self.monitor.finish(self._events_seen())
            self._write_records()
            callbacks = self.monitor.callbacks
            if callbacks is not None:  # the deadline holds whatever on_alert does
                callbacks.close(request.remaining(), own=callbacks.runs_in(request.requester))
        if self.fanout is not None:
            self.fanout.drain()
        if self.lanes is not None:
            # The run end's counts say how far each remote backend got by now (up to
            # the deadline); the lanes then deliver the run end itself.
            _wait_until(self.lanes.flush(self._file_size()), self._stop_deadline)
        if self.ring is not None and not self.ring.alive():
            self._take_over()  # it died just before the end: say so, write the rest
        if self.ringed is not None:
            self.ringed.delivered = self.buffer.ringed + self.ring_taken
            self.direct.insert(0, self.ringed)  # closed like the others
        elif self.took_over and self.file_runner is not None:
            # What the writer process wrote, and what it left in the ring (written by
            # the take-over); this thread's own writes are counted already.
            runner = self.file_runner
            runner.delivered += self.buffer.ringed + self.ring_taken - self.salvage_lost
            runner.failed += self.salvage_lost
        stats = self._stats(drain_seconds=time.perf_counter() - request.received)
        end = RunEnd(
            run_id=info.run_id,
            end_time=time.time(),
            status=request.status,
            summary=self._convert(dict(request.summary)),
            stats=stats,
        )
        for runner in self.direct:
            backend = runner.backend
            try:
                if runner is self.ringed and isinstance(backend, JsonlBackend):
                    backend.close_sync(end, request.close_budget())  # the stop's deadline
                else:
                    backend.close_sync(end)
            except Exception as exc:
                runner.record_error("close", exc)
        ring = self.ring
        if ring is not None and ring.salvaged:
            # It died (or stalled and was killed) while it ended the run: its lines
            # and the run end were written from here.
            self.took_over = True
            logger.warning(
                "steplog: the writer process of run %s was gone when the run ended (exit "
                "status %s); this process wrote what it had left and the run end",
                info.run_id,
                ring.exit_status,
            )
        if self.fanout is not None:
            self.fanout.close(end, request.close_budget())
        if self.lanes is not None:
            budget = request.close_budget()
            self._final_lanes = self.lanes.finish(
                None if budget is None else time.monotonic() + budget,
                down_grace=self.down_grace,
                written=stats.written,
                shared_drops=stats.dropped,
            )
            self._report_behind(info)
        request.future.set_result(self._stats(drain_seconds=stats.drain_seconds))

    def _report_behind(self, info: RunInfo) -> None:
        """Say which remote backends have not got every event when the run ends (the
        file has them: nothing is lost), and what delivers the rest."""
        behind = {n: b for n, b in (self._final_lanes or {}).items() if b.missing}
        if not behind:
            return
        jsonl = self._run_file()
        path = jsonl.path if jsonl is not None else "the run file"
        detail = ", ".join(f"{n}: {b.missing:,} events" for n, b in behind.items())
        logger.warning(
            "steplog: run %s ended before every remote backend had it (%s behind); the "
            "run file has them: its delivery process goes on in the background for a "
            "while, and the next resume of the run or `steplog sync %s --to ...` "
            "delivers the rest (`steplog show` says where each backend stands)",
            info.run_id,
            detail,
            path,
        )

    def _stats(self, *, drain_seconds: float) -> RunStats:
        buffer = self.buffer
        dropped = buffer.drop_count(stopping=self._stopping)
        runners: dict[str, Any] = {r.name: r for r in self.direct}
        if self.fanout is not None:
            runners.update((r.name, r) for r in self.fanout.runners)
        written = self.taken
        pending = buffer.count
        # Ring mode: copies the other backends missed are their drops, not the run's.
        shared = dict.fromkeys(self.names, dropped + buffer.others_dropped)
        if self.file_runner is not None:
            runners[self.file_runner.name] = self.file_runner
            written = buffer.ringed + self.ring_taken + self.file_taken
            pending = 0  # the queue holds copies; the stop drained the rest
            shared[self.file_runner.name] = dropped
        lanes: dict[str, BackendStats] = {}
        if self._final_lanes is not None:
            lanes = self._final_lanes
        elif self.lanes is not None:
            lanes = self.lanes.stats(written, dropped)
        return RunStats(
            logged=written + dropped + pending,
            written=written,
            dropped=dropped,
            batches=self.batches,
            backend_errors=sum(r.errors for r in runners.values())
            + sum(b.errors for b in lanes.values()),
            max_buffer_depth=buffer.max_depth,
            drain_seconds=drain_seconds,
            device_syncs=self.resolve_stats.device_syncs,
            device_copies=self.resolve_stats.device_copies,
            changed_values=self.resolve_stats.changed,
            alerts=self.monitor.alerts if self.monitor is not None else 0,
            alert_callback_errors=self.monitor.callback_errors if self.monitor is not None else 0,
            writer_takeover=self.took_over,
            backends={
                name: lanes[name] if name in lanes else runners[name].stats(shared[name])
                for name in self.names
            },
        )


def _run_file_of(runner: DirectRunner) -> RunFile | None:
    """The open run file of the JSONL backend ``runner`` drives; ``None`` for others."""
    backend = runner.backend
    return backend.run_file if isinstance(backend, JsonlBackend) else None


def stop_timeout(stop: _StopRequest | None) -> float | None:
    """Seconds a flush of the writer process may take: the stop's, or unbounded."""
    return None if stop is None else stop.remaining()


def _resolve_after(
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
