"""Where a run's batches go: the run file, the local sinks and the remote backends' lanes.

:class:`Outputs` is what the writer thread (:class:`steplog._writer.Writer`) hands each
drained batch to, and what it opens, flushes and closes with the run:

* the run file, written as its durability strategy says (:mod:`steplog._durability`:
  by this thread, or by the writer process);
* the direct sinks, every :class:`steplog.SyncBackend` (JSONL — its
  :class:`steplog.runfile.write.RunFile` —, memory, null): one ``os.write`` or append
  per batch, on the writer thread (:class:`steplog._delivery.DirectRunner`);
* the in-process async sinks (console, live plot, a local backend of your own): a
  :class:`steplog._fanout.Fanout`, started only when one is attached;
* the remote backends: a lane each, following the run file (:mod:`steplog._lanestart`),
  woken once per batch.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._batch import EventBatch
from ._buffer import LineBuffer
from ._delivery import DirectRunner, RetryPolicy
from ._durability import durability_for, run_file_of
from ._fanout import Fanout, _wait_until
from ._lanestart import start_lanes
from ._monitor import Monitor
from ._readback import Readback
from .backends.base import Backend, SyncBackend
from .backends.jsonl import JsonlBackend
from .errors import BackendOpenError
from .events import BackendStats, RunEnd, RunInfo, RunStats
from .runfile.codec import ValueEncoder

__all__ = ["BACKLOG_BATCHES", "Outputs"]

logger = logging.getLogger("steplog")

#: Async backends get batches of up to this many times ``batch_size`` events.
BACKLOG_BATCHES = 4


class Outputs:
    """A run's outputs, as the writer thread feeds them.

    Args:
        backends: The run's backends, by name.
        buffer: The run's buffer (its capacity and policy bound the async sinks').
        durability: ``"thread"`` or ``"process"`` (see :mod:`steplog._durability`).
        deadline: The stop's deadline, once there is one.

    Attributes:
        direct: The direct sinks' runners, in the order of ``backends`` (the run file
            among them unless its durability strategy owns it).
        remote: The remote backends: each gets a lane that follows the run file
            (started once the file is open).
        fanout: The in-process async sinks, if any.
        lanes: The lanes, once started.
        durability: Who writes the run file.
        taken: Events handed to the sinks so far.
        batches: Batches handed to them.
    """

    def __init__(
        self,
        backends: Sequence[tuple[str, Backend]],
        *,
        buffer: LineBuffer,
        readback: Readback,
        batch_size: int,
        flush_interval: float,
        retry: RetryPolicy,
        durability: str,
        delivery: str,
        down_grace: float,
        monitor: Monitor | None,
        deadline: Callable[[], float | None],
    ) -> None:
        self.names = [name for name, _ in backends]
        self.batch_size = batch_size
        self.retry = retry
        self.delivery = delivery
        #: Seconds finish() waits for a remote backend that is down (its lane goes on
        #: in the background, or the next resume or ``steplog sync`` delivers the rest).
        self.down_grace = down_grace
        self.deadline = deadline
        self.direct: list[DirectRunner] = []
        local: list[tuple[str, Backend]] = []
        self.remote: list[tuple[str, Backend]] = []
        for name, backend in backends:
            if isinstance(backend, SyncBackend) and backend.synchronous and backend.local:
                self.direct.append(DirectRunner(backend, name, retry=self.retry, deadline=deadline))
            elif backend.local:
                local.append((name, backend))
            else:
                self.remote.append((name, backend))
        self.lanes: Any = None
        self._final_lanes: dict[str, BackendStats] | None = None  # their counts at the end
        self.fanout: Fanout | None = None
        if local:
            self.fanout = Fanout(
                local,
                backlog_limit=buffer.capacity,
                policy=buffer.policy,
                retry=self.retry,
                deadline=deadline,
            )
        self.durability = durability_for(
            durability,
            self.direct,
            buffer=buffer,
            readback=readback,
            flush_interval=flush_interval,
            monitor=monitor,
        )
        self.taken = 0
        self.batches = 0

    # -- the run's start ---------------------------------------------------------

    def open(self, info: RunInfo, encoder: ValueEncoder) -> None:
        """Open every output: the direct sinks, the run file's writer, the async sinks,
        the lanes. On an error, what was opened is closed again.

        Raises:
            BackendOpenError: A backend could not open the run, or the writer process
                could not start.
            Exception: The async sinks' loop or a lane could not start.
        """
        opened: list[DirectRunner] = []
        for runner in self.direct:
            try:
                runner.backend.open_sync(info, encoder)
            except Exception as exc:
                self._close_quietly(opened, info)
                raise BackendOpenError(
                    f"backend {runner.name!r} ({runner.backend!r}) could not open run "
                    f"{info.run_id!r}: {exc}"
                ) from exc
            opened.append(runner)
        try:
            self.durability.open(info, others=self.fanout is not None)
            if self.fanout is not None:
                self.fanout.start(info)
        except Exception:
            self._close_quietly(opened, info)
            raise
        if self.remote:
            try:
                self._start_lanes(info)
            except Exception:
                if self.fanout is not None:
                    self.fanout.close(RunEnd(info.run_id, time.time(), "failed", {}, RunStats()), 5)
                self._close_quietly(opened, info)
                raise

    def _start_lanes(self, info: RunInfo) -> None:
        jsonl = self.run_file()
        if jsonl is None or jsonl.path is None:
            raise BackendOpenError(
                "remote backends follow the run file: the tracker needs a JsonlBackend"
            )
        self.lanes = start_lanes(
            info,
            jsonl.path,
            self.remote,
            delivery=self.delivery,
            batch_size=BACKLOG_BATCHES * self.batch_size,
            retry=self.retry,
            ring_pid=self.durability.pid,
            deadline=self.deadline,
        )

    def _close_quietly(self, runners: list[DirectRunner], info: RunInfo) -> None:
        end = RunEnd(info.run_id, time.time(), "failed", {}, RunStats())
        for runner in runners:
            try:
                runner.backend.close_sync(end)
            except Exception as exc:
                logger.warning("steplog: closing backend %r failed: %r", runner.name, exc)

    def run_file(self) -> JsonlBackend | None:
        """The run file's JSONL backend (a tracker with remote backends has one)."""
        runner = self.durability.runner or next(
            (r for r in self.direct if isinstance(r.backend, JsonlBackend)), None
        )
        backend = None if runner is None else runner.backend
        return backend if isinstance(backend, JsonlBackend) else None

    def file_size(self) -> int:
        """Bytes in the run file now."""
        jsonl = self.run_file()
        try:
            return os.stat(jsonl.path).st_size if jsonl is not None and jsonl.path else 0
        except OSError:
            return 0

    # -- during the run ----------------------------------------------------------

    def deliver(self, items: list[Any], count: int) -> bytes | bytearray | None:
        """Hand a batch taken off the buffer (``count`` events) to every output;
        returns its lines (None when only the writer process had to have them)."""
        routed = self.durability.route(items, count)
        if not routed:
            return None
        data = routed[0] if len(routed) == 1 else b"".join(routed)
        batch = EventBatch(data, count)
        self.taken += count
        for runner in self.direct:
            runner.send_now(batch)
        if self.lanes is not None:
            self.lanes.wake()  # the file grew: the remote backends' lanes read on
        # Async sinks get batches of at most BACKLOG_BATCHES x batch_size events; the
        # direct ones the whole take, in one write.
        size = BACKLOG_BATCHES * self.batch_size
        if self.fanout is None or count <= size:
            self.batches += 1
            if self.fanout is not None:
                self.fanout.submit(batch)
            return data
        lines = batch.lines
        for start in range(0, count, size):
            chunk = b"".join(lines[start : start + size])
            self.batches += 1
            self.fanout.submit(EventBatch(chunk, min(size, count - start)))
        return data

    def write_records(self, data: bytes) -> None:
        """Append system and alert records to the run file(s) this thread writes."""
        for runner in [*self.durability.own_writes(), *self.direct]:
            file = run_file_of(runner)
            if file is None or runner.disabled:
                continue
            try:
                file.append(data)
            except Exception as exc:
                with contextlib.suppress(Exception):
                    file.cut_back()  # cut a partial record back out
                runner.record_error("write system and alert records", exc)

    def flush_waits(self) -> list[concurrent.futures.Future[None]]:
        """Markers right behind the batches handed over so far: done once the async
        sinks and the lanes have them."""
        waits: list[concurrent.futures.Future[None]] = []
        if self.fanout is not None:
            waits.append(self.fanout.mark())
        if self.lanes is not None:
            waits.append(self.lanes.flush(self.file_size()))
        return waits

    def backlogs(self) -> dict[str, int]:
        """Events the async sinks and the lanes have yet to deliver, by backend."""
        backlogs: dict[str, int] = {}
        if self.fanout is not None:
            backlogs.update(self.fanout.pending())
        if self.lanes is not None:
            backlogs.update(self.lanes.pending())
        return backlogs

    # -- the run's end -----------------------------------------------------------

    def settle(self) -> None:
        """Everything is drained: let the async sinks and the lanes catch up (up to the
        stop's deadline) and make the run file's counts final."""
        if self.fanout is not None:
            self.fanout.drain()
        if self.lanes is not None:
            # The run end's counts say how far each remote backend got by now (up to
            # the deadline); the lanes then deliver the run end itself.
            _wait_until(self.lanes.flush(self.file_size()), self.deadline)
        self.durability.finish()

    def close(self, end: RunEnd, budget: Callable[[], float | None]) -> None:
        """Close every output with the run end (``budget``: seconds the async sinks and
        the lanes get, asked for at each step)."""
        self.durability.close(end, budget())  # first, as the run file opened first
        for runner in self.direct:
            try:
                runner.backend.close_sync(end)
            except Exception as exc:
                runner.record_error("close", exc)
        if self.fanout is not None:
            self.fanout.close(end, budget())
        if self.lanes is not None:
            seconds = budget()
            self._final_lanes = self.lanes.finish(
                None if seconds is None else time.monotonic() + seconds,
                down_grace=self.down_grace,
                written=end.stats.written,
                shared_drops=end.stats.dropped,
            )
            self._report_behind(end.run_id)

    def _report_behind(self, run_id: str) -> None:
        """Say which remote backends have not got every event when the run ends (the
        file has them: nothing is lost), and what delivers the rest."""
        behind = {n: b for n, b in (self._final_lanes or {}).items() if b.missing}
        if not behind:
            return
        jsonl = self.run_file()
        path = jsonl.path if jsonl is not None else "the run file"
        detail = ", ".join(f"{n}: {b.missing:,} events" for n, b in behind.items())
        logger.warning(
            "steplog: run %s ended before every remote backend had it (%s behind); the "
            "run file has them: its delivery process goes on in the background for a "
            "while, and the next resume of the run or `steplog sync %s --to ...` "
            "delivers the rest (`steplog show` says where each backend stands)",
            run_id,
            detail,
            path,
        )

    def stats(self, written: int, dropped: int) -> tuple[dict[str, BackendStats], int]:
        """Each backend's counts, and the errors of all of them (``written`` and
        ``dropped``: the run's)."""
        durability = self.durability
        runners: dict[str, Any] = {r.name: r for r in self.direct}
        if self.fanout is not None:
            runners.update((r.name, r) for r in self.fanout.runners)
        # Copies of stored events the other backends missed are their drops only.
        shared = dict.fromkeys(self.names, dropped + durability.copies_dropped())
        if durability.runner is not None:
            runners[durability.runner.name] = durability.runner
            shared[durability.runner.name] = dropped
        lanes: dict[str, BackendStats] = {}
        if self._final_lanes is not None:
            lanes = self._final_lanes
        elif self.lanes is not None:
            lanes = self.lanes.stats(written, dropped)
        errors = sum(r.errors for r in runners.values()) + sum(b.errors for b in lanes.values())
        backends = {
            name: lanes[name] if name in lanes else runners[name].stats(shared[name])
            for name in self.names
        }
        return backends, errors

    def forget_after_fork(self) -> None:
        """In a forked child: let go of the run file (the writer process's ring is left
        untouched) and the lanes."""
        for runner in self.direct:
            file = run_file_of(runner)
            if file is not None:
                file.forget_after_fork()
        self.durability.forget_after_fork()
        if self.lanes is not None:
            self.lanes.forget_after_fork()
