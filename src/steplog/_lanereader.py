"""What a lane sends: the run file, read from the lane's cursor, turned into points.

A :class:`LaneReader` reads the complete lines of the run file from where its lane's
cursor stands (with :func:`~steplog.runfile.follow.complete_lines`, the follower every
reader of a growing run file shares), decodes the step records, samples them for a
:class:`~steplog.Sampled` backend (with its
:class:`~steplog.backends.sampled.WindowSampler`), and puts the points in its
:attr:`~LaneReader.outbox`, each with the checkpoint the cursor may move to once the
backend has acknowledged it. It also notes what is not a point: the run-end record (the
lane closes the backend with it), the resume record of the segment the lane's process
logs (where that segment's counts start) and corrupt lines. The lane
(:mod:`steplog._lane`) sends the outbox and moves the cursor; the reader never writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from ._batch import _new_tuple
from .backends.sampled import Checkpoint, Sampled, WindowSampler
from .errors import RunFileError
from .events import Event
from .runfile.codec import decode
from .runfile.follow import complete_lines
from .runfile.records import CorruptLineError, RecordKind, kind_of, parse_record
from .runfile.schema import is_number
from .runfile.snapshot import line_number

__all__ = ["LaneReader", "Point"]

#: A point and the checkpoint the cursor may move to once it is acknowledged: the byte
#: after its line, the run's events up to it, and the sampler's state there (for a
#: pass-through lane, where the step record starts, an int: the cursor's
#: ``last_step_at``).
Point = tuple[Event, tuple[int, int, Any]]


class _Pass:
    """Events pass unchanged: each is its own point, safe once acknowledged."""

    def __init__(self, state: dict[str, Any], events: int) -> None:
        self.run_events = events
        self.safe: Checkpoint = (0, events, {})

    def start(self, offset: int) -> None:
        self.safe = (offset, self.run_events, {})

    def add(self, event: Event, start: int, end: int) -> list[tuple[Event, Any]]:
        self.run_events += 1
        self.safe = (end, self.run_events, {})
        return [(event, (end, self.run_events, start))]

    def end_segment(self, end: int) -> list[tuple[Event, Checkpoint]]:
        self.safe = (end, self.run_events, {})
        return []


class LaneReader:
    """Reads one lane's run file from its cursor into points with checkpoints (see the
    module docstring).

    Args:
        path: The run file.
        sampled: The lane's backend when it is :class:`~steplog.Sampled` (its points
            are sampled windows), ``None`` (every event is a point).
        strict: Stop at a corrupt line and keep the error for the lane to raise
            (:attr:`fatal`) instead of skipping it (:attr:`corrupt`).
        limit: Read the file up to this offset only (a replay of a snapshot).
    """

    def __init__(
        self, path: Path, sampled: Sampled | None, *, strict: bool, limit: int | None
    ) -> None:
        self.path = path
        self.sampled = sampled
        self.strict = strict
        #: Read no further than this offset (a replay reads the file as it was).
        self.limit = limit
        #: Where reading goes on (the end of the last line read).
        self.read_to = 0
        #: Points made from what was read and not acknowledged yet, with their checkpoints.
        self.outbox: list[Point] = []
        self.sampler: WindowSampler | _Pass | None = None
        self.end_record: dict[str, Any] | None = None  # the last run end read, if last
        self.end_at = 0  # the byte after it
        #: Where the corrupt lines skipped start.
        self.corrupt: set[int] = set()
        #: A corrupt line met in strict mode: raised once what came before it is sent.
        self.fatal: RunFileError | None = None
        #: Events of the run before the segment this lane's process logs (delivered
        #: counts in the run end are this segment's); ``None`` until it is met.
        self.segment: int | None = None
        self.segment_start_events: int | None = None

    def start(
        self, offset: int, events: int, state: dict[str, Any], *, segment: int | None
    ) -> None:
        """Read from ``offset``, where the run has had ``events`` events and the sampler
        was in ``state`` (a cursor's); ``segment``: the number of the segment this
        lane's process logs (``None``: count the whole file as this lane's)."""
        self.read_to = offset
        self.segment = segment
        if segment is None or segment == 0:
            self.segment_start_events = 0
        if self.sampled is not None:
            self.sampler = self.sampled.sampler(state)
        else:
            self.sampler = _Pass(state, events)
        self.sampler.start(offset)
        self.end_record = None

    def rewind(self, offset: int, events: int) -> None:
        """Read again from the step record at ``offset``, the run's event number
        ``events`` (a pass-through lane that sends its last acknowledged step again)."""
        self.read_to = offset
        self.sampler = _Pass({}, events - 1)
        self.sampler.start(offset)

    def size(self) -> int:
        """How far the file can be read now."""
        size = os.stat(self.path).st_size
        return size if self.limit is None else min(size, self.limit)

    def caught_up(self) -> bool:
        """Whether every point is taken from the outbox and nothing is left to read."""
        try:
            size = self.size()
        except OSError:
            return False
        return not self.outbox and self.read_to >= size

    def safe(self) -> Checkpoint | None:
        """The checkpoint that is safe once the outbox is empty (what was read is
        acknowledged); ``None`` while it is not."""
        if self.outbox or self.sampler is None:
            return None
        return self.sampler.safe

    def end_segment(self) -> None:
        """The file ends here without a run end (a killed run): so does the segment
        (a sampled backend's last window becomes a point)."""
        if self.sampler is not None:
            self.outbox += self.sampler.end_segment(self.read_to)

    def read(self, size: int, *, final: bool) -> bool:
        """Read complete lines from :attr:`read_to` (one block at most) into the outbox;
        whether there was one."""
        sampler = self.sampler
        assert sampler is not None
        data = complete_lines(self.path, self.read_to, size, final=final)
        if not data:
            return False  # a line still being written
        cut = len(data)
        offset = self.read_to
        limit = self.read_to + cut
        loads = orjson.loads
        outbox = self.outbox
        passing = self.sampled is None
        events = sampler.run_events
        for line in data.split(b"\n"):
            start = offset
            offset += len(line) + 1
            end = offset if offset < limit else limit
            # The common case first (a step record), with records.parse_record's rules.
            try:
                record = loads(line)
                step, when, values = record["step"], record["time"], record["data"]
                if type(step) is not int or type(values) is not dict or "type" in record:
                    raise ValueError
                if type(when) is not float and not is_number(when):
                    raise ValueError
            except Exception:  # another record type, a blank or corrupt line
                if passing:
                    sampler.run_events = events
                if not self._other(line, start, end):
                    return True  # a corrupt line in strict mode: stop before it
                events = sampler.run_events
                continue
            if b'"$' in line:
                values = decode(values)
            event = _new_tuple(Event, (step, when, values))
            self.end_record = None
            if passing:
                events += 1
                outbox.append((event, (end, events, start)))
            else:
                outbox += sampler.add(event, start, end)
        if passing and events != sampler.run_events:
            sampler.run_events = events
            sampler.safe = (offset if offset < limit else limit, events, {})
        self.read_to += cut
        return True

    def _other(self, line: bytes, start: int, end: int) -> bool:
        """A line that is not a plain step record: another record type (a resume, a run
        end), a blank one, or a corrupt one; False: stop reading (strict mode)."""
        sampler = self.sampler
        assert sampler is not None
        if not line.strip():
            return True
        try:
            record = parse_record(line)
        except CorruptLineError as exc:
            if self.strict:
                number = line_number(self.path, start)
                self.fatal = RunFileError(f"{self.path}:{number}: corrupt record ({exc})")
                self.read_to = start
                return False
            self.corrupt.add(start)
            return True
        if record is None:
            return True
        kind = kind_of(record)
        if kind is RecordKind.STEP:  # one parse_record accepts (an int time, say)
            event = _new_tuple(Event, (record["step"], record["time"], record["data"]))
            self.outbox += sampler.add(event, start, end)
            self.end_record = None
        elif kind is RecordKind.RESUME:
            self.outbox += sampler.end_segment(end)
            self.end_record = None
            if self.segment is not None and record.get("segment") == self.segment:
                self.segment_start_events = sampler.run_events
        elif kind is RecordKind.RUN_END:
            self.outbox += sampler.end_segment(end)
            self.end_record = record
            self.end_at = end
        return True
