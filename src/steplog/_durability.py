"""Who writes the run file: the writer thread or the writer process (``durability=``).

A run picks its strategy once, when its writer is made (:func:`durability_for`):

* :class:`ThreadDurability` (``durability="thread"``, and the fallback where the
  writer process cannot run): the run file is one of the writer thread's direct sinks,
  written with the rest of each batch in one ``os.write``;
* :class:`ProcessDurability` (``durability="process"``): ``log()`` puts each line into
  the shared-memory ring of a writer process (:mod:`steplog._ring`, through
  :class:`steplog._ringbuffer.RingBuffer`), which writes the file and survives a
  SIGKILL of this process. The writer thread only puts what ``log()`` could not (rows
  it reads back from a device, lines queued behind them) and hands copies to the other
  sinks. When the writer process dies mid-run, the writer thread writes what its ring
  held and then the file itself (the *take-over*, docs/reliability.md).

The writer thread (:class:`steplog._writer.Writer`) asks its strategy at each step of
the run: what a drained batch leaves for the other sinks (:meth:`~DurabilityStrategy.route`),
whether a flush is confirmed, what the statistics count, and how the file is closed.
"""

from __future__ import annotations

import abc
import logging
import signal
import time
from typing import TYPE_CHECKING, Any

from ._batch import EventBatch
from ._buffer import LineBuffer
from ._readback import Readback
from ._ringbuffer import RingBuffer, RingCopy
from .backends.jsonl import JsonlBackend
from .errors import BackendOpenError, WorkerError
from .events import RunEnd, RunInfo
from .runfile.codec import ValueEncoder
from .runfile.schema import alert_record
from .runfile.write import RunFile
from .watch import Alert

if TYPE_CHECKING:
    from ._delivery import DirectRunner
    from ._monitor import Monitor
    from ._requests import FlushRequest, StopRequest
    from ._ring import ProcessWriter

__all__ = [
    "DurabilityStrategy",
    "ProcessDurability",
    "ThreadDurability",
    "buffer_type",
    "durability_for",
    "run_file_of",
]

logger = logging.getLogger("steplog")

_Flushes = list["FlushRequest"]


def buffer_type(durability: str) -> type[LineBuffer]:
    """The buffer a run of this durability needs between ``log()`` and the writer."""
    return RingBuffer if durability == "process" else LineBuffer


def run_file_of(runner: DirectRunner) -> RunFile | None:
    """The open run file of the JSONL backend ``runner`` drives; ``None`` for others
    (and before the run is open)."""
    backend = runner.backend
    return backend.run_file if isinstance(backend, JsonlBackend) else None


def durability_for(
    durability: str,
    direct: list[DirectRunner],
    *,
    buffer: LineBuffer,
    readback: Readback,
    flush_interval: float,
    monitor: Monitor | None,
) -> DurabilityStrategy:
    """The strategy of a run (``direct``: the writer's direct sinks, run file included).

    ``durability="process"`` falls back to the writer thread, with a warning when the
    run starts, without a JSONL backend or where the writer process cannot run.
    """
    if durability != "process":
        return ThreadDurability(buffer, readback)
    if not isinstance(buffer, RingBuffer):
        raise TypeError("durability='process' needs the buffer of buffer_type('process')")
    runner = next((r for r in direct if isinstance(r.backend, JsonlBackend)), None)
    if runner is None:
        return ThreadDurability(
            buffer,
            readback,
            fallback="durability='process' needs a JsonlBackend; run %r is written by "
            "the writer thread instead",
        )
    if not _process_writer_supported():
        return ThreadDurability(
            buffer,
            readback,
            fallback="durability='process' is not supported on this platform (it needs "
            "POSIX on x86-64); run %r is written by the writer thread instead",
        )
    return ProcessDurability(
        runner,
        direct,
        buffer=buffer,
        readback=readback,
        flush_interval=flush_interval,
        monitor=monitor,
    )


def _process_writer_supported() -> bool:
    try:  # (imports POSIX-only modules)
        from ._ring import ProcessWriter
    except ImportError:
        return False
    return ProcessWriter.supported()


class DurabilityStrategy(abc.ABC):
    """Where a run's drained lines go, as the writer thread sees it.

    Attributes:
        runner: The run file's runner when this strategy owns it (not among the
            writer's direct sinks), else None.
        took_over: Whether the writer thread took the run file over from a writer
            process that died (``RunStats.writer_takeover``).
    """

    runner: DirectRunner | None = None
    took_over = False

    def __init__(self, buffer: LineBuffer, readback: Readback) -> None:
        self.buffer = buffer
        self.readback = readback

    @property
    @abc.abstractmethod
    def pid(self) -> int | None:
        """The writer process's id (the delivery process waits for it after a kill)."""

    @abc.abstractmethod
    def open(self, info: RunInfo, *, others: bool) -> None:
        """Start writing the run file (its runner is open; ``others``: whether other
        sinks than the run file get the batches).

        Raises:
            BackendOpenError: The writer process could not start.
        """

    @abc.abstractmethod
    def check(self) -> None:
        """Called at the start of every round of the writer thread."""

    @abc.abstractmethod
    def route(self, items: list[Any], count: int) -> list[Any] | None:
        """Write what the run file gets of a batch taken off the buffer (``count``
        events), and return the encoded items every direct sink gets — None when
        nothing is left for them to do."""

    @abc.abstractmethod
    def written(self, taken: int) -> int:
        """Events stored so far (``taken``: those the writer delivered)."""

    @abc.abstractmethod
    def queued(self) -> int:
        """Events queued that are not stored yet."""

    @abc.abstractmethod
    def copies_dropped(self) -> int:
        """Copies for the sinks other than the run file dropped (the events are stored)."""

    @abc.abstractmethod
    def confirm(self, flushes: _Flushes, stop: StopRequest | None) -> _Flushes:
        """Of ``flushes`` (and those still waiting), those whose events are written."""

    @abc.abstractmethod
    def waiting(self) -> _Flushes:
        """Take the flushes still waiting for the writer process (the run has ended)."""

    @abc.abstractmethod
    def own_writes(self) -> list[DirectRunner]:
        """Runners of the run file the writer thread writes itself beside the direct
        sinks (system and alert records go there too)."""

    @abc.abstractmethod
    def finish(self) -> None:
        """The run is ending: everything is drained; the counts must be final."""

    @abc.abstractmethod
    def close(self, end: RunEnd, budget: float | None) -> None:
        """Close the run file if this strategy owns it (``budget``: seconds left)."""

    @abc.abstractmethod
    def forget_after_fork(self) -> None:
        """In a forked child: let go of what this strategy holds."""


class ThreadDurability(DurabilityStrategy):
    """``durability="thread"``: the writer thread writes the run file.

    Args:
        fallback: Why ``durability="process"`` was asked for and this runs instead
            (a warning, with ``%r`` for the run id, logged when the run starts).
    """

    def __init__(self, buffer: LineBuffer, readback: Readback, *, fallback: str = "") -> None:
        super().__init__(buffer, readback)
        self.fallback = fallback

    def open(self, info: RunInfo, *, others: bool) -> None:
        if self.fallback:
            logger.warning("steplog: " + self.fallback, info.run_id)

    def route(self, items: list[Any], count: int) -> list[Any] | None:
        # The run file is one of the direct sinks: it gets the whole batch with them.
        if self.buffer.has_rows:
            return self.readback.encode_rows(items)
        return items

    def written(self, taken: int) -> int:
        return taken

    def queued(self) -> int:
        return self.buffer.count

    # The writer thread owns nothing more than its direct sinks, which it writes,
    # flushes and closes itself: the other hooks have nothing to do.

    @property
    def pid(self) -> int | None:
        return None

    def check(self) -> None:
        pass

    def copies_dropped(self) -> int:
        return 0

    def confirm(self, flushes: _Flushes, stop: StopRequest | None) -> _Flushes:
        return flushes

    def waiting(self) -> _Flushes:
        return []

    def own_writes(self) -> list[DirectRunner]:
        return []

    def finish(self) -> None:
        pass

    def close(self, end: RunEnd, budget: float | None) -> None:
        pass

    def forget_after_fork(self) -> None:
        pass


class ProcessDurability(DurabilityStrategy):
    """``durability="process"``: the writer process writes the run file (see the module
    docstring); after a take-over, the writer thread does.

    Args:
        runner: The run file's runner (it drives a :class:`steplog.JsonlBackend`, whose
            :class:`~steplog.runfile.write.RunFile` is handed to the writer process):
            opened as a direct sink, then taken out of ``direct`` once the ring runs.
        direct: The writer's direct sinks.
    """

    buffer: RingBuffer

    def __init__(
        self,
        runner: DirectRunner,
        direct: list[DirectRunner],
        *,
        buffer: RingBuffer,
        readback: Readback,
        flush_interval: float,
        monitor: Monitor | None,
    ) -> None:
        super().__init__(buffer, readback)
        self.runner = runner
        self.direct = direct
        self.encoder: ValueEncoder = readback.encoder
        self.flush_interval = flush_interval
        self.monitor = monitor
        self.ring: ProcessWriter | None = None
        self.ring_taken = 0  # rows and pending lines this thread put into the ring
        self.file_taken = 0  # events this thread wrote to the file after taking it over
        self.salvage_lost = 0  # lines of the ring that could not be written then
        #: Flushes waiting for the writer process to confirm (it may be slow).
        self._flushes: _Flushes = []

    @property
    def pid(self) -> int | None:
        return self.ring.pid if self.ring is not None else None

    def open(self, info: RunInfo, *, others: bool) -> None:
        from ._ring import ProcessWriter

        runner = self.runner
        assert runner is not None
        file = run_file_of(runner)
        if file is None:
            raise BackendOpenError("could not start the writer process: the run file is not open")
        capacity = min(self.buffer.byte_budget, 16 * 2**20)

        def start(fd: int) -> ProcessWriter:
            ring = ProcessWriter(
                fd, run_id=info.run_id, capacity=capacity, flush_interval=self.flush_interval
            )
            ring.start()
            return ring

        try:
            ring = file.hand_off(start)
        except Exception as exc:
            raise BackendOpenError(f"could not start the writer process: {exc}") from exc
        self.ring = ring
        # A line the ring cannot hold would never fit: such an event is recorded as the
        # too-large marker instead (by log(), or here for the rows), as over
        # max_event_bytes.
        limit = min(self.encoder.max_event_bytes, ring.capacity)
        self.encoder.max_event_bytes = self.buffer.line_limit = limit
        self.direct.remove(runner)
        # (Value watchers need no copy of the lines: log() hands them the values.)
        self.buffer.attach(ring, others=bool(self.direct) or others)
        if self.monitor is not None:
            logger.info(
                "steplog: durability='process': system and alert records of run %r are "
                "not written to its run file (alerts still reach logging and on_alert)",
                info.run_id,
            )

    def check(self) -> None:
        if self.ring is not None and not self.ring.alive():
            self._take_over()

    def route(self, items: list[Any], count: int) -> list[Any] | None:
        if self.ring is not None:
            return self._to_ring(items)
        # Taken over: this thread writes the file.
        if self.buffer.has_rows:
            items = self.readback.encode_rows(items)
        copies = sum(1 for item in items if type(item) is RingCopy)
        if copies:  # the ring had them, so the file has them
            file_items = [item for item in items if type(item) is not RingCopy]
            self._write_file(b"".join(file_items), count - copies)
        else:
            self._write_file(items[0] if len(items) == 1 else b"".join(items), count)
        return items

    def _to_ring(self, items: list[Any]) -> list[Any] | None:
        """Put the rows and pending lines into the ring, in order.

        Returns what the other backends get (everything, if there are any).
        """
        pending = [type(item) is not bytearray for item in items]
        if any(pending):
            items = self.readback.encode_rows(items)
            ring = self.ring
            assert ring is not None
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
                        return items if self.buffer.others else None
                self.ring_taken += 1
            ring.wake()
            self.buffer.ring_idle()
        return items if self.buffer.others else None

    def _take_over(self) -> None:
        """The writer process died mid-run (the OOM killer, a stray ``kill``): write
        what its ring held, then write the run file from this thread, as with
        ``durability="thread"``. Warns once and records it in the file (an alert record
        of watcher ``"writer_process"``) and in the statistics (``writer_takeover``)."""
        ring, runner = self.ring, self.runner
        assert ring is not None and runner is not None
        lost = ring.take_over()
        status = ring.exit_status
        file = run_file_of(runner)
        if file is not None:
            file.take_back()
        self.buffer.detach()
        self.ring = None
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

    def _write_file(self, data: bytes | bytearray, count: int) -> None:
        """Write ``data`` (``count`` events) to the run file (after a take-over)."""
        runner = self.runner
        if runner is None or not data:
            return
        runner.send_now(EventBatch(data, count))
        self.file_taken += count

    def written(self, taken: int) -> int:
        return self.buffer.ringed + self.ring_taken + self.file_taken

    def queued(self) -> int:
        return 0  # the queue holds copies; the stop drained the rest

    def copies_dropped(self) -> int:
        return self.buffer.others_dropped

    def confirm(self, flushes: _Flushes, stop: StopRequest | None) -> _Flushes:
        """The flushes the writer process has confirmed (or that need it no more); the
        others wait for the next round (a stalled writer process never holds the
        writer thread: each round waits a flush interval at most, a stop its own
        deadline)."""
        flushes, self._flushes = self._flushes + flushes, []
        ring = self.ring
        if ring is None or not flushes:  # taken over: the ring's lines are written
            return flushes
        if ring.flush(stop.remaining() if stop is not None else self.flush_interval):
            return flushes
        if not ring.alive():  # it died: what it had is written now
            self._take_over()
            return flushes
        if stop is None:
            self._flushes = flushes
            return []
        error = WorkerError("the writer process did not confirm the flush in time")
        for future in flushes:
            if not future.done():
                future.set_exception(error)
        return []

    def waiting(self) -> _Flushes:
        flushes, self._flushes = self._flushes, []
        return flushes

    def own_writes(self) -> list[DirectRunner]:
        return [self.runner] if self.took_over and self.runner is not None else []

    def finish(self) -> None:
        if self.ring is not None and not self.ring.alive():
            self._take_over()  # it died just before the end: say so, write the rest
        runner = self.runner
        assert runner is not None
        if self.ring is not None:
            runner.delivered = self.buffer.ringed + self.ring_taken
        else:
            # What the writer process wrote, and what it left in the ring (written by
            # the take-over); this thread's own writes are counted already.
            runner.delivered += self.buffer.ringed + self.ring_taken - self.salvage_lost
            runner.failed += self.salvage_lost

    def close(self, end: RunEnd, budget: float | None) -> None:
        runner, ring = self.runner, self.ring
        assert runner is not None
        backend = runner.backend
        try:
            if ring is not None and isinstance(backend, JsonlBackend):
                backend.close_sync(end, budget)  # the writer process gets the stop's deadline
            else:
                backend.close_sync(end)
        except Exception as exc:
            runner.record_error("close", exc)
        if ring is not None and ring.salvaged:
            # It died (or stalled and was killed) while it ended the run: its lines
            # and the run end were written from here.
            self.took_over = True
            logger.warning(
                "steplog: the writer process of run %s was gone when the run ended (exit "
                "status %s); this process wrote what it had left and the run end",
                end.run_id,
                ring.exit_status,
            )

    def forget_after_fork(self) -> None:
        file = None if self.runner is None else run_file_of(self.runner)
        if file is not None:
            file.forget_after_fork()  # (and the writer process's channels)
        if self.ring is not None:
            self.ring.forget_after_fork()
