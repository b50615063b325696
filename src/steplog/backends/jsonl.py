"""The default backend: one JSON-lines file per run."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
import anyio.to_thread

from .._names import check_name
from .._values import ValueEncoder
from ..events import Event, RunEnd, RunInfo
from .base import Backend

__all__ = ["SCHEMA_VERSION", "JsonlBackend"]

logger = logging.getLogger("steplog")

#: Version of the record schema written by :class:`JsonlBackend` (see docs/schema.md).
SCHEMA_VERSION = 1


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o644)


class JsonlBackend(Backend):
    """Writes each run to ``<root>/<experiment>/<run_id>.jsonl``.

    The first line is the run-start record, then one line per ``log()`` call, then the
    run-end record (see ``docs/schema.md``). Each batch is encoded into one buffer and
    handed to the operating system in one ``write`` (the file is unbuffered), so a
    process that is killed leaves every earlier batch intact and at most the last line
    torn, which :func:`steplog.read_run` tolerates.

    Where batches go: a write into the page cache of a local disk takes a fraction of a
    millisecond, less than handing it to a thread (the aiofiles hop cost more CPU per
    event than the write itself, measured in docs/benchmarks.md). So batches are written
    straight from the worker's loop while writes stay fast. When the moving average of
    write times (weight 1/10 for the newest) exceeds ``inline_write_limit`` — a network
    filesystem, a stalling disk, or one write ten times slower than the limit — every
    later write of the run moves to a thread through aiofiles, so a slow disk cannot hold
    up the other backends for long. (The average, not single writes, decides: a write
    also waits for the GIL on its way back, a few milliseconds on a busy loop.)
    Opening, closing and ``fsync`` always go through a thread.

    Args:
        root: Directory holding one sub-directory per experiment.
        fsync: Also ``fsync`` after every batch, so batches survive a power loss or
            kernel crash, not just a killed process. Costs a disk flush per batch.
        inline_write_limit: Average seconds a direct write may take before writes move
            to a thread; ``0`` always writes from a thread.
        max_event_bytes: An event whose line would be longer is recorded as
            ``{"$too_large": {"bytes": N, "keys": [...]}}`` instead, with a warning.

    Attributes:
        path: The file of the current (or last) run; ``None`` before the first run.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = "runs",
        *,
        fsync: bool = False,
        inline_write_limit: float = 0.02,
        max_event_bytes: int = 16 * 2**20,
    ) -> None:
        if not inline_write_limit >= 0:
            raise ValueError(f"inline_write_limit must be >= 0, got {inline_write_limit!r}")
        self.root = Path(root)
        self.fsync = fsync
        self.inline_write_limit = inline_write_limit
        if max_event_bytes < 1024:
            raise ValueError(f"max_event_bytes must be at least 1024, got {max_event_bytes!r}")
        self.max_event_bytes = max_event_bytes
        self.path: Path | None = None
        self._file: Any = None
        self._fd = -1
        self._inline = inline_write_limit > 0
        self._write_seconds = 0.0  # moving average of direct writes
        self._encoder = ValueEncoder(max_event_bytes=max_event_bytes)

    def __repr__(self) -> str:
        return f"JsonlBackend({str(self.root)!r}, fsync={self.fsync})"

    @property
    def fallbacks(self) -> int:
        """Values of the current run not stored as themselves (repr, markers, str keys)."""
        return self._encoder.fallbacks

    @property
    def writes_inline(self) -> bool:
        """Whether batches are currently written straight from the event loop."""
        return self._inline

    async def open(self, run: RunInfo) -> None:
        """Create the run file (exclusively) and write the run-start record."""
        directory = self.root / check_name(run.experiment, what="experiment name")
        # Never world-writable, whatever the umask (it still narrows these further).
        await aiofiles.os.makedirs(directory, mode=0o755, exist_ok=True)
        path = directory / f"{check_name(run.run_id, what='run id')}.jsonl"
        self._encoder = ValueEncoder(max_event_bytes=self.max_event_bytes)
        self._file = await aiofiles.open(path, "xb", buffering=0, opener=_private_opener)
        self._fd = self._file.fileno()
        self._inline = self.inline_write_limit > 0
        self._write_seconds = 0.0
        self.path = path
        await self._write(
            self._encoder.encode(
                {
                    "type": "run_start",
                    "schema": SCHEMA_VERSION,
                    "run_id": run.run_id,
                    "experiment": run.experiment,
                    "start_time": run.start_time,
                    "pid": run.pid,
                    "host": run.host,
                    "config": run.config,
                }
            )
        )

    async def write(self, events: Sequence[Event]) -> None:
        """Append one line per event, in one system call."""
        await self._write(self._encoder.encode_events(events))

    async def close(self, end: RunEnd) -> None:
        """Append the run-end record and close the file."""
        if self._file is None:
            return
        try:
            await self._write(
                self._encoder.encode(
                    {
                        "type": "run_end",
                        "run_id": end.run_id,
                        "end_time": end.end_time,
                        "status": end.status,
                        "summary": end.summary,
                        "stats": end.stats.to_dict(),
                        "encoding_fallbacks": self._encoder.fallbacks,
                    }
                )
            )
        finally:
            file, self._file = self._file, None
            await file.close()

    async def _write(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        # An unbuffered write may be partial (signals, a full disk); finish it.
        while view:
            if self._inline:
                started = time.perf_counter()
                written = os.write(self._fd, view)
                took = time.perf_counter() - started
                self._write_seconds += (took - self._write_seconds) / 10
                if self._write_seconds > self.inline_write_limit:
                    self._inline = False
                    logger.info(
                        "steplog: writes to %s are slow; moving them off the event loop",
                        self.path,
                    )
            else:
                written = await self._file.write(view)
            view = view[written:]
        if self.fsync:
            await anyio.to_thread.run_sync(os.fsync, self._fd)
