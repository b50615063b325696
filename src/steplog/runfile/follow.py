"""Following a run file that another process still writes: its complete lines from a
byte offset as they come, and whether its writer is gone.

One mechanism for every follower: the lanes (:mod:`steplog._lanereader`, live delivery
and ``steplog sync``) read with :func:`complete_lines` from their cursor;
``steplog tail -f`` reads records with a :class:`RunFollower`; a follower that does not
read the records itself (``steplog sync --follow``, whose lane reads them) asks a
:class:`WriterWatch` when to give up. A line still being written is held back until its
newline arrives (the snapshot rule of :mod:`.snapshot`); a follower stops at the run-end
record, or once the writer is gone from this host and the file has been quiet for
:data:`WRITER_GONE_GRACE`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .header import WriterState, writer_state
from .records import CorruptLineError, RecordKind, is_whole_record, kind_of, parse_record
from .snapshot import RunSnapshot, last_resume, open_run

__all__ = [
    "READ_BYTES",
    "WRITER_GONE_GRACE",
    "RunFollower",
    "WriterWatch",
    "complete_lines",
]

#: A follower (``steplog tail -f``, ``steplog sync --follow``) gives up on a run whose
#: writer process is gone once the file has not grown for this long, in seconds (a
#: ``durability="process"`` writer outlives the logging process by about a flush
#: interval to drain and end the run).
WRITER_GONE_GRACE = 3.0

#: Bytes of the run file a follower reads at a time.
READ_BYTES = 4 * 2**20


def complete_lines(path: Path, offset: int, size: int, *, final: bool = False) -> bytes:
    """The complete lines of the file at ``path`` from byte ``offset`` (the start of a
    line) up to ``size`` at most: one block of :data:`READ_BYTES`, or one whole line
    that is longer; ``b""`` when only a line still being written is there.

    With ``final`` (the file will not grow any more), a last line without its newline
    counts as complete when it is a whole record (as :func:`.snapshot.open_run` counts
    it).
    """
    if size <= offset:
        return b""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(min(READ_BYTES, size - offset))
        cut = data.rfind(b"\n") + 1
        if cut:
            return data[:cut] if cut < len(data) else data
        if len(data) == READ_BYTES:  # a line longer than a block: read it whole
            f.seek(offset)
            data = f.readline()
    if data.endswith(b"\n") or (final and is_whole_record(data)):
        return data
    return b""  # a line still being written


class WriterWatch:
    """Whether the writer of a run file being followed is gone.

    The file counts as quiet from its last change of size (or its modification time,
    when that is older: a writer killed long ago is given up at once).

    Args:
        path: The run file.
        writer: The record (run start or resume) naming the process that writes the
            run; ``None``: looked up in the file each time (its last resume record,
            else its run start), for a follower that does not read the records.
        grace: Seconds the file must have been quiet before a gone writer counts.
    """

    def __init__(
        self,
        path: Path,
        writer: dict[str, Any] | None = None,
        *,
        grace: float = WRITER_GONE_GRACE,
    ) -> None:
        self.path = path
        self.writer = writer
        self.grace = grace
        stat = os.stat(path)
        self.size = stat.st_size
        self.quiet_since = min(time.time(), stat.st_mtime)

    def grew(self) -> bool:
        """Whether the file's size changed since it was last seen (then it is not quiet)."""
        size = os.stat(self.path).st_size
        if size == self.size:
            return False
        self.size, self.quiet_since = size, time.time()
        return True

    def gone(self) -> bool:
        """Whether the writer is gone from this host and the file has been quiet for
        the grace period."""
        return self._writer_gone() and time.time() - self.quiet_since >= self.grace

    def _writer_gone(self) -> bool:
        writer = self.writer
        if writer is None:
            try:
                snapshot = open_run(self.path)
            except (OSError, ValueError):
                return True
            writer = last_resume(snapshot) or snapshot.start
        return writer_state(writer) is WriterState.GONE


class RunFollower:
    """The records appended to a run file after a snapshot of it, as they come
    (``steplog tail -f``).

    A resume record read makes the process it names the writer watched (it took the
    run over).

    Attributes:
        path: The run file.
        offset: Where the next line to read starts.
        watch: Whether the writer is gone (:meth:`WriterWatch.gone`).
    """

    def __init__(self, snapshot: RunSnapshot, *, grace: float = WRITER_GONE_GRACE) -> None:
        self.path = snapshot.path
        self.offset = snapshot.end
        # Who writes the run now: the process that resumed it last, else the one that
        # started it.
        self.watch = WriterWatch(self.path, last_resume(snapshot) or snapshot.start, grace=grace)

    def poll(self) -> list[tuple[int, dict[str, Any] | None]]:
        """The lines completed since the last poll (one block at most; empty if none):
        for each, the offset where it starts and its record, or ``None`` for a corrupt
        line. Blank lines are left out."""
        self.watch.grew()
        data = complete_lines(self.path, self.offset, self.watch.size)
        records: list[tuple[int, dict[str, Any] | None]] = []
        offset = self.offset
        for line in data.split(b"\n")[:-1]:
            start, offset = offset, offset + len(line) + 1
            try:
                record = parse_record(line)
            except CorruptLineError:
                records.append((start, None))
                continue
            if record is None:
                continue
            if kind_of(record) is RecordKind.RESUME:
                self.watch.writer = record
            records.append((start, record))
        self.offset = offset
        return records

    @property
    def writer(self) -> dict[str, Any]:
        """The record naming the process that writes the run."""
        assert self.watch.writer is not None
        return self.watch.writer
