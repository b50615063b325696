"""The default backend: one JSON-lines file per run."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread

from .._batch import EventBatch
from .._names import check_name
from ..errors import RunFileError
from ..events import Event, RunEnd, RunInfo
from ..runfile.codec import ValueEncoder
from ..runfile.lock import holders, lock
from ..runfile.schema import SCHEMA_VERSION, end_record, resume_record, start_record
from ..runfile.snapshot import open_run
from .base import Backend, _overrides

__all__ = ["SCHEMA_VERSION", "JsonlBackend"]

logger = logging.getLogger("steplog")


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def default_root() -> str:
    """The run directory when none is given: ``$STEPLOG_ROOT``, else ``runs`` (the
    directory the command line looks in too)."""
    return os.environ.get("STEPLOG_ROOT") or "runs"


class JsonlBackend(Backend):
    """Writes each run to ``<root>/<experiment>/<run_id>.jsonl``.

    The first line is the run-start record, then one line per ``log()`` call, then the
    run-end record (see ``docs/schema.md``). A resumed run (``init(resume=...)``) is
    appended to its file, after a resume record. Each batch is encoded into one buffer and
    handed to the operating system in one ``write`` (the file is unbuffered), so a
    process that is killed leaves every earlier batch intact and at most the last line
    torn, which :func:`steplog.read_run` tolerates.

    Where batches go: in a tracker, the run's writer thread writes every batch itself,
    as the lines ``log()`` encoded, joined, in one ``os.write`` (which releases the GIL);
    if a write fails part-way, its retry resumes after the bytes that made it, and a
    batch given up is cut back out of the file, so the file holds whole lines only and
    matches the run statistics. Driven as an async backend instead (a subclass that
    replaces ``write``, or :func:`steplog.replay`), batches are written straight from the
    event loop while writes stay fast; when the moving average of write times (weight
    1/10 for the newest) exceeds ``inline_write_limit`` — a network filesystem, a
    stalling disk — later writes of the run move to a thread.

    Args:
        root: Directory holding one sub-directory per experiment; default
            ``$STEPLOG_ROOT``, else ``runs``.
        fsync: Also ``fsync`` after every batch, so batches survive a power loss or
            kernel crash, not just a killed process. Costs a disk flush per batch.
        inline_write_limit: When driven as an async backend: average seconds a write
            on the event loop may take before writes move to a thread; ``0`` always
            writes from a thread.
        max_event_bytes: An event whose line would be longer is recorded as
            ``{"$too_large": {"bytes": N, "keys": [...]}}`` instead, with a warning.

    Attributes:
        path: The file of the current (or last) run; ``None`` before the first run.
    """

    local = True  # the run file itself, written by the writer thread (or process)

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        fsync: bool = False,
        inline_write_limit: float = 0.02,
        max_event_bytes: int = 16 * 2**20,
    ) -> None:
        if not inline_write_limit >= 0:
            raise ValueError(f"inline_write_limit must be >= 0, got {inline_write_limit!r}")
        self.root = Path(root if root is not None else default_root())
        self.fsync = fsync
        self.inline_write_limit = inline_write_limit
        if max_event_bytes < 1024:
            raise ValueError(f"max_event_bytes must be at least 1024, got {max_event_bytes!r}")
        self.max_event_bytes = max_event_bytes
        self.path: Path | None = None
        self._fd = -1
        self._size = 0  # bytes in the file
        self._batch_start = 0  # its size before the batch being written
        self._unwritten: memoryview | None = None  # what a retry still has to write
        self._ring: Any = None  # durability="process": the writer process
        self._run_id = ""
        self._inline = inline_write_limit > 0
        self._write_seconds = 0.0  # moving average of direct writes
        self._encoder = ValueEncoder(max_event_bytes=max_event_bytes)
        #: Set by a tracker that resumes a run into this backend's file: the size it
        #: saw, which the file must still have when it is opened (nobody wrote since).
        self._expect_size: int | None = None

    def __repr__(self) -> str:
        return f"JsonlBackend({str(self.root)!r}, fsync={self.fsync})"

    def __getstate__(self) -> dict[str, Any]:
        # Pickled (an integration's logger carried to another process, e.g. by
        # Lightning's ddp_spawn), a JsonlBackend is its configuration: the copy has no
        # open run — no file descriptor, writer process or half-written batch of this one.
        state = self.__dict__.copy()
        state.update(
            _fd=-1,
            _size=0,
            _batch_start=0,
            _unwritten=None,
            _ring=None,
            _run_id="",
            _inline=self.inline_write_limit > 0,
            _write_seconds=0.0,
            _encoder=ValueEncoder(max_event_bytes=self.max_event_bytes),
            _expect_size=None,
        )
        return state

    @property
    def fallbacks(self) -> int:
        """Values of the current run not stored as themselves (repr, markers, str keys)."""
        return self._encoder.fallbacks

    def _direct_sink(self) -> _FileSink | None:
        if _overrides(self, JsonlBackend, "open", "write", "close"):
            return None
        return _FileSink(self)

    # -- the writer thread's side (see Backend._direct_sink) ------------------------

    def _open_file(self, run: RunInfo, encoder: ValueEncoder | None) -> None:
        directory = self.root / check_name(run.experiment, what="experiment name")
        # Never world-writable, whatever the umask (it still narrows these further).
        os.makedirs(directory, mode=0o755, exist_ok=True)
        path = directory / f"{check_name(run.run_id, what='run id')}.jsonl"
        if encoder is None:
            encoder = ValueEncoder(max_event_bytes=self.max_event_bytes)
        self._encoder = encoder
        self._unwritten = None
        self._run_id = run.run_id
        self._inline = self.inline_write_limit > 0
        self._write_seconds = 0.0
        expect, self._expect_size = self._expect_size, None
        if run.resumed is not None and path.exists():
            fd = os.open(path, os.O_RDWR | _O_CLOEXEC)
            try:
                # The writer's lock (runfile.lock): held until the file is closed, and
                # by a writer process while it drains, so no two processes append.
                if not lock(fd):
                    held = ", ".join(map(str, holders(path) or ())) or "another process"
                    raise RunFileError(f"{path} is being written by {held}")
                if expect is not None and os.fstat(fd).st_size != expect:
                    raise RunFileError(f"{path} changed while run {run.run_id} was resumed")
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            self.path = path
            self._continue_file(path)
        else:  # a new run (or a resumed one this backend has no file of: start one)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o644)
            lock(self._fd)  # a new file: free
            self._size = 0
            self.path = path
            self._write_all(self._encoder.encode(start_record(run)))
        if run.resumed is not None:
            self._write_all(self._encoder.encode(resume_record(run)))

    def _continue_file(self, path: Path) -> None:
        """Make the file of a run being resumed ready to append to: cut off the line a
        killed writer left torn, end a whole last record that lacks its newline."""
        snapshot = open_run(path)  # raises RunFileError for a file that is not a run
        if snapshot.torn:
            logger.info(
                "steplog: resuming %s: cut off the torn last line (%d bytes)",
                path,
                os.fstat(self._fd).st_size - snapshot.end,
            )
        os.ftruncate(self._fd, snapshot.end)
        self._size = snapshot.end
        os.lseek(self._fd, self._size, os.SEEK_SET)
        if os.pread(self._fd, 1, self._size - 1) != b"\n":
            self._write_all(b"\n")

    def _write_all(self, data: bytes | bytearray) -> None:
        """Append ``data``; after a failure, a retry resumes after the bytes that made it."""
        if self._unwritten is None:
            self._unwritten = memoryview(data)
            self._batch_start = self._size
        view = self._unwritten
        # An unbuffered write may be partial (signals, a full disk); finish it.
        while view:
            written = os.write(self._fd, view)
            self._size += written
            view = self._unwritten = view[written:]
        self._unwritten = None
        if self.fsync:
            os.fsync(self._fd)

    def _abandon(self) -> int:
        """Give up a batch that could not be written in full; returns the events kept.

        The file is cut back to the last whole line of what made it, so a reader sees
        whole lines only and the run statistics match the file.
        """
        view, self._unwritten = self._unwritten, None
        if view is None:
            return 0
        written = self._size - self._batch_start
        batch = view.obj
        kept = bytes(memoryview(batch)[:written]).rfind(b"\n") + 1
        if kept < written:
            os.ftruncate(self._fd, self._batch_start + kept)
            self._size = self._batch_start + kept
            os.lseek(self._fd, self._size, os.SEEK_SET)
        return bytes(memoryview(batch)[:kept]).count(b"\n")

    def _start_ring(self, *, capacity: int, flush_interval: float) -> Any:
        """Hand the open run file to a writer process (``durability="process"``)."""
        from .._ring import ProcessWriter

        ring = ProcessWriter(
            self._fd, run_id=self._run_id, capacity=capacity, flush_interval=flush_interval
        )
        ring.start()
        self._ring = ring
        return ring

    def _ring_gone(self) -> None:
        """The writer process died and its ring was written out (``ProcessWriter.take_over``):
        the writer thread writes the file from now on, from its end."""
        self._ring = None
        self._unwritten = None
        self._size = os.lseek(self._fd, 0, os.SEEK_END)

    def _forget_after_fork(self) -> None:
        """In a forked child: close this process's copy of the run file (and of the
        writer process's channels) without writing anything: the run stays the
        parent's, and so does the writer's lock."""
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.forget_after_fork()
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _close_file(self, end: RunEnd, timeout: float | None = None) -> None:
        if self._fd < 0:
            return
        try:
            self._unwritten = None
            self._end_line(
                self._encoder.encode(end_record(end, encoding_fallbacks=self._encoder.fallbacks)),
                timeout,
            )
        finally:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _end_line(self, line: bytes, timeout: float | None = None) -> None:
        """Append the run end: itself, or (``durability="process"``) through the writer
        process, given ``timeout`` seconds (30 by default) before a stalled one is
        killed and what it left is written from here."""
        ring, self._ring = self._ring, None
        if ring is None:
            self._write_all(line)
        elif not ring.close(line, timeout=30.0 if timeout is None else timeout):
            raise OSError("the writer process did not finish the run file")

    # -- the async interface (used when driven as any other backend, e.g. by replay) ---

    async def open(self, run: RunInfo) -> None:
        """Create the run file (exclusively) and write the run-start record."""
        await anyio.to_thread.run_sync(self._open_file, run, None)

    async def write(self, events: Sequence[Event]) -> None:
        """Append one line per event, in one system call."""
        if isinstance(events, EventBatch):
            data = bytes(events.data)
        else:
            data = self._encoder.encode_events(events)
        if not self._inline:
            await anyio.to_thread.run_sync(self._write_all, data)
            return
        started = time.perf_counter()
        self._write_all(data)
        took = time.perf_counter() - started
        self._write_seconds += (took - self._write_seconds) / 10
        if self._write_seconds > self.inline_write_limit:
            self._inline = False
            logger.info("steplog: writes to %s are slow; moving them off the event loop", self.path)

    async def close(self, end: RunEnd) -> None:
        """Append the run-end record and close the file."""
        await anyio.to_thread.run_sync(self._close_file, end)


class _FileSink:
    """The writer thread's side of a :class:`JsonlBackend` (see ``DirectSink``)."""

    __slots__ = ("backend",)

    def __init__(self, backend: JsonlBackend) -> None:
        self.backend = backend

    def open(self, run: RunInfo, encoder: ValueEncoder) -> None:
        self.backend._open_file(run, encoder)

    def write(self, data: bytes | bytearray, batch: Sequence[Event]) -> None:
        self.backend._write_all(data)

    def abandon(self) -> int:
        return self.backend._abandon()

    def close(self, end: RunEnd, timeout: float | None = None) -> None:
        self.backend._close_file(end, timeout)

    def start_ring(self, *, capacity: int, flush_interval: float) -> Any:
        return self.backend._start_ring(capacity=capacity, flush_interval=flush_interval)

    def ring_gone(self) -> None:
        self.backend._ring_gone()

    def forget_after_fork(self) -> None:
        self.backend._forget_after_fork()
