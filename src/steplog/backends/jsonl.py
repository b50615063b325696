"""The default backend: one JSON-lines file per run — its configuration (where, fsync,
the largest event); the bytes are written by :class:`steplog.runfile.write.RunFile`."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread

from .._batch import EventBatch
from .._names import check_name
from ..events import Event, RunEnd, RunInfo
from ..runfile.codec import ValueEncoder
from ..runfile.schema import SCHEMA_VERSION, end_record, resume_record, start_record
from ..runfile.write import RunFile
from .base import SyncBackend

__all__ = ["SCHEMA_VERSION", "JsonlBackend"]

logger = logging.getLogger("steplog")


def default_root() -> str:
    """The run directory when none is given: ``$STEPLOG_ROOT``, else ``runs`` (the
    directory the command line looks in too)."""
    return os.environ.get("STEPLOG_ROOT") or "runs"


class JsonlBackend(SyncBackend):
    """Writes each run to ``<root>/<experiment>/<run_id>.jsonl``.

    The first line is the run-start record, then one line per ``log()`` call, then the
    run-end record (see ``docs/schema.md``). A resumed run (``init(resume=...)``) is
    appended to its file, after a resume record. Each batch is encoded into one buffer and
    handed to the operating system in one ``write`` (the file is unbuffered), so a
    process that is killed leaves every earlier batch intact and at most the last line
    torn, which :func:`steplog.read_run` tolerates.

    The backend is the run file's configuration: each run it opens a
    :class:`steplog.runfile.write.RunFile` (:attr:`run_file`), which owns the file's bytes.
    In a tracker, the run's writer thread writes every batch itself (a
    :class:`SyncBackend`), as the lines ``log()`` encoded, joined, in one ``os.write``
    (which releases the GIL); if a write fails part-way, its retry resumes after the
    bytes that made it, and a batch given up is cut back out of the file, so the file
    holds whole lines only and matches the run statistics. Driven as an async backend
    instead (a subclass that replaces ``write``, or :func:`steplog.replay`), batches are
    written straight from the event loop while writes stay fast; when the moving average
    of write times (weight 1/10 for the newest) exceeds ``inline_write_limit`` — a
    network filesystem, a stalling disk — later writes of the run move to a thread.

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
        run_file: The current run's open file; ``None`` before the first run.
    """

    # Its async methods are its own (written from a thread), not a subclass's override.
    synchronous = True

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
        self.run_file: RunFile | None = None
        self._inline = inline_write_limit > 0
        self._write_seconds = 0.0  # moving average of direct writes
        self._encoder = ValueEncoder(max_event_bytes=max_event_bytes)
        self._expect_size: int | None = None  # see expect_resume

    def __repr__(self) -> str:
        return f"JsonlBackend({str(self.root)!r}, fsync={self.fsync})"

    def __getstate__(self) -> dict[str, Any]:
        # Pickled (an integration's logger carried to another process, e.g. by
        # Lightning's ddp_spawn), a JsonlBackend is its configuration: the copy has no
        # open run — no file, writer process or half-written batch of this one.
        state = self.__dict__.copy()
        state.update(
            run_file=None,
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

    def expect_resume(self, size: int) -> None:
        """Say that the next run opened continues a run file that held ``size`` bytes
        when it was looked up (``init(resume=...)`` does): opening it then fails with
        :class:`steplog.RunFileError` if anybody wrote to it since."""
        self._expect_size = size

    # -- the writer thread's side (a SyncBackend) -----------------------------------

    def open_sync(self, run: RunInfo, encoder: ValueEncoder) -> None:
        """Create the run file (exclusively), or continue a resumed run's, and write
        the run-start (or resume) record, encoded with the run's ``encoder``."""
        directory = self.root / check_name(run.experiment, what="experiment name")
        # Never world-writable, whatever the umask (it still narrows these further).
        os.makedirs(directory, mode=0o755, exist_ok=True)
        path = directory / f"{check_name(run.run_id, what='run id')}.jsonl"
        self._encoder = encoder
        self._inline = self.inline_write_limit > 0
        self._write_seconds = 0.0
        expect, self._expect_size = self._expect_size, None
        if run.resumed is not None and path.exists():
            file = self.run_file = RunFile.resume(path, fsync=self.fsync, expect_size=expect)
            self.path = path
        else:  # a new run (or a resumed one this backend has no file of: start one)
            file = self.run_file = RunFile.create(path, fsync=self.fsync)
            self.path = path
            file.append(encoder.encode(start_record(run)))
        if run.resumed is not None:
            file.append(encoder.encode(resume_record(run)))

    def write_sync(self, events: Sequence[Event]) -> None:
        """Append one line per event, in one system call (a retry writes the rest of
        the batch whose write failed)."""
        self._file().append(
            events.data if isinstance(events, EventBatch) else self._encoder.encode_events(events)
        )

    def discard_sync(self) -> int:
        """Cut the batch that could not be written in full back to its whole lines."""
        return 0 if self.run_file is None else self.run_file.cut_back()

    def close_sync(self, end: RunEnd, timeout: float | None = None) -> None:
        """Append the run-end record and close the file; ``timeout``: seconds a writer
        process that has the file (``durability="process"``) gets to finish it."""
        file = self.run_file
        if file is None:
            return
        fallbacks = self._encoder.fallbacks
        file.close(self._encoder.encode(end_record(end, encoding_fallbacks=fallbacks)), timeout)

    def _file(self) -> RunFile:
        if self.run_file is None:
            raise OSError("the JSONL backend has no open run (a write before open)")
        return self.run_file

    # -- the async interface (used when driven as any other backend, e.g. by replay) ---

    async def open(self, run: RunInfo) -> None:
        """Create the run file (exclusively) and write the run-start record."""
        encoder = ValueEncoder(max_event_bytes=self.max_event_bytes)
        await anyio.to_thread.run_sync(self.open_sync, run, encoder)

    async def write(self, events: Sequence[Event]) -> None:
        """Append one line per event, in one system call."""
        if isinstance(events, EventBatch):
            data = bytes(events.data)
        else:
            data = self._encoder.encode_events(events)
        file = self._file()
        if not self._inline:
            await anyio.to_thread.run_sync(file.append, data)
            return
        started = time.perf_counter()
        file.append(data)
        took = time.perf_counter() - started
        self._write_seconds += (took - self._write_seconds) / 10
        if self._write_seconds > self.inline_write_limit:
            self._inline = False
            logger.info("steplog: writes to %s are slow; moving them off the event loop", self.path)

    async def close(self, end: RunEnd) -> None:
        """Append the run-end record and close the file."""
        await anyio.to_thread.run_sync(self.close_sync, end)
