"""Reading run files: THE parser, used by every reader (``read_run``, the CLI commands,
``replay``, plots and exports).

Every reader works on a :class:`RunSnapshot`: the file up to the end of its last
complete line when it was opened. A reader that reads a file several times (the
header, then every record; export's two passes) so describes one set of records while
another process keeps appending. Damaged lines, one rule:

* a torn last line (the writer killed mid-line, or still writing) is left out silently
  (:attr:`RunSnapshot.torn`, :attr:`Run.torn`);
* a corrupt line before it: the streaming readers (:func:`iter_steps`,
  :func:`last_steps`) skip it and add its number to :attr:`RunSnapshot.corrupt`, for
  the caller to warn about with the count; :func:`read_run` is strict and raises
  :class:`steplog.RunFileError` naming the line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import gc
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from ..errors import RunFileError
from ..events import Event, RunStats
from ..watch import Alert
from .codec import decode
from .lock import LOCKS, holders, lock
from .schema import (
    ALERT,
    INCOMPLETE,
    KILLED,
    RESUME,
    RUN_END,
    RUN_START,
    RUNNING,
    SCHEMA_VERSION,
    SYSTEM,
    flat_data,
    is_number,
    is_step,
)

__all__ = [
    "WRITER_GONE_GRACE",
    "CorruptLineError",
    "MetricStats",
    "MonitorScan",
    "ResumePoint",
    "Run",
    "RunHeader",
    "RunSegment",
    "RunSnapshot",
    "StepScan",
    "SystemSample",
    "WriterState",
    "alert_of",
    "gc_paused",
    "iter_line_blocks",
    "iter_lines",
    "iter_steps",
    "last_resume",
    "last_steps",
    "last_summary",
    "line_number",
    "metric_stats",
    "open_run",
    "parse_line",
    "parse_record",
    "read_header",
    "read_run",
    "read_start",
    "resume_point",
    "run_config",
    "step_records",
    "writer_state",
]

TAIL_BYTES = 64 * 1024
CHUNK_BYTES = 4 * 1024 * 1024


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a reader builds millions of records.

    The JSON values a reader makes cannot form cycles, yet each dict it allocates
    counts towards the collector's thresholds, and every full collection walks all of
    them again: on a 2 M-step run that was 40 % of the reading time. Collection
    resumes (as it was) when the block ends, whatever happens in it.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def parse_line(line: bytes) -> dict[str, Any] | None:
    """Decode one JSONL record (``None`` if it is not a JSON object)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    if b'"$' in line:
        decoded: dict[str, Any] = decode(record)
        return decoded
    return record


class CorruptLineError(ValueError):
    """Raised by :func:`parse_record` for a line that is not a valid record."""


def parse_record(line: bytes) -> dict[str, Any] | None:
    """Decode one line of a run file: its record, or ``None`` for a blank line.

    Raises:
        CorruptLineError: The line is not a JSON object, or is a step record (no
            ``type``) without an integer ``step``, a numeric ``time`` and an object
            ``data`` — the checks ``read_run`` makes.
    """
    if not line.strip():
        return None
    record = parse_line(line)
    if record is None:
        raise CorruptLineError("corrupt record (not a JSON object)")
    if "type" not in record and not is_step(record):
        raise CorruptLineError(
            "a step record needs an integer 'step', a numeric 'time' and an object 'data'"
        )
    return record


@dataclasses.dataclass(slots=True)
class RunSnapshot:
    """A run file as it stood when a command opened it (see the module docstring).

    Attributes:
        path: The run file.
        start: Its run-start record.
        body: Offset of the line after the run-start line.
        end: Readers stop here: after the last complete line at opening time.
        torn: Bytes of an unfinished line followed ``end`` at opening time.
        corrupt: Numbers (from 1) of the corrupt lines readers skipped so far.
        resume: The last resume record, once :func:`last_resume` (or
            :func:`read_header`, in the tail) has found it; see ``resume_known``.
        resume_known: Whether ``resume`` was searched for already (the search can
            read the whole file: done once per snapshot).
    """

    path: Path
    start: dict[str, Any]
    body: int
    end: int
    torn: bool
    corrupt: set[int] = dataclasses.field(default_factory=set)
    resume: dict[str, Any] | None = None
    resume_known: bool = False


def read_start(path: Path) -> dict[str, Any] | None:
    """The run-start record of the file at ``path``, or ``None`` if it has none (not a
    run, empty, or its first line torn)."""
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except OSError:
        return None
    record = parse_line(first)
    return record if record is not None and record.get("type") == RUN_START else None


def open_run(path: Path) -> RunSnapshot:
    """Take a :class:`RunSnapshot` of ``path``: read its first line and find the end of
    its last complete line.

    A last line without its newline counts as complete when it is a whole JSON object
    (as ``read_run`` counts it), else it is torn and left out.

    Raises:
        OSError: The file cannot be read.
        ValueError: The file is not a steplog run.
    """
    with open(path, "rb") as f:
        first = f.readline()
        start = parse_line(first)
        if not first.strip():
            raise ValueError(f"{path}: empty file, not a steplog run")
        if start is None or start.get("type") != RUN_START:
            raise ValueError(f"{path}: not a steplog run file (no run-start record)")
        size = os.fstat(f.fileno()).st_size
        body = len(first)
        end = body
        block = TAIL_BYTES
        while True:  # back from the end until a newline (lines can be megabytes long)
            offset = max(body, size - block)
            f.seek(offset)
            data = f.read(size - offset)
            size = offset + len(data)  # the file may have grown or shrunk meanwhile
            cut = data.rfind(b"\n")
            if cut >= 0 or offset == body:
                end = offset + cut + 1
                tail = data[cut + 1 :]
                break
            block *= 4
    torn = False
    if tail.strip():
        if isinstance(parse_line(tail), dict):
            end = size  # a whole record that only lacks its newline
        else:
            torn = True
    return RunSnapshot(path=path, start=start, body=body, end=end, torn=torn)


def line_number(path: Path, offset: int) -> int:
    """The number (from 1) of the line that starts at byte ``offset`` of ``path``.

    Counts the newlines before it: only for messages about the rare corrupt line.
    """
    count = 0
    with open(path, "rb") as f:
        left = offset
        while left > 0 and (chunk := f.read(min(CHUNK_BYTES, left))):
            count += chunk.count(b"\n")
            left -= len(chunk)
    return count + 1


#: A follower (``steplog tail -f``, ``steplog sync --follow``) gives up on a run whose
#: writer process is gone once the file has not grown for this long, in seconds (a
#: ``durability="process"`` writer outlives the logging process by about a flush
#: interval to drain and end the run).
WRITER_GONE_GRACE = 3.0


class WriterState(enum.Enum):
    """Whether the process that writes a run is still running."""

    ALIVE = "alive"
    GONE = "gone"  # on this host, and no such process any more
    UNKNOWN = "unknown"  # written on another host (or without a pid): cannot tell


def writer_state(start: dict[str, Any]) -> WriterState:
    """The state of the process named in a run-start record."""
    pid = start.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return WriterState.UNKNOWN
    if start.get("host") != socket.gethostname():
        return WriterState.UNKNOWN
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return WriterState.GONE
    except PermissionError:  # alive, owned by another user
        return WriterState.ALIVE
    return WriterState.ALIVE


@dataclasses.dataclass(frozen=True, slots=True)
class RunHeader:
    """What the first and last lines of a run file say, without reading the rest."""

    path: Path
    run_id: str
    experiment: str
    start_time: float
    status: str  # the end status, "running" (writer alive on this host) or "incomplete"
    steps: int  # last step + 1 (0 when no step was written yet)
    last_time: float  # end time, or the time of the last step written
    last: dict[str, Any]  # the data of the last step records, later ones winning
    config: dict[str, Any]  # the run-start record's (as it stands: run_config(snapshot))
    summary: dict[str, Any]
    stats: dict[str, Any] | None  # the run-end record's statistics
    host: str | None
    pid: int | None
    torn: bool  # the file ends in a line without its newline (killed or still writing)
    ended: bool  # the run-end record is there (of the last segment, in a resumed run)
    group: str | None = None
    tags: tuple[str, ...] = ()
    rank: int | None = None
    world_size: int | None = None
    segments: int = 1  # 1 + the resumes seen (only those in the tail and the last one)

    @property
    def duration(self) -> float:
        return max(0.0, self.last_time - self.start_time)


def read_header(snapshot: RunSnapshot, tail_bytes: int = TAIL_BYTES) -> RunHeader:
    """What the run-start line and the last ``tail_bytes`` of the snapshot say."""
    start = snapshot.start
    with open(snapshot.path, "rb") as f:
        offset = max(snapshot.body, snapshot.end - tail_bytes)
        f.seek(offset)
        tail = f.read(snapshot.end - offset)
    lines = tail.split(b"\n")
    if offset > snapshot.body:
        lines = lines[1:]  # the first piece starts mid-line
    end: dict[str, Any] | None = None
    resume: dict[str, Any] | None = None
    last_step: dict[str, Any] | None = None
    last: dict[str, Any] = {}
    for line in reversed(lines):
        record = parse_line(line)
        if record is None:
            continue
        kind = record.get("type")
        if kind == RUN_END:
            if end is None and resume is None:  # a resume after it reopened the run
                end = record
        elif kind == RESUME:
            if resume is None:  # the last one of the file: remember it for last_resume
                resume = snapshot.resume = record
                snapshot.resume_known = True
        elif kind is None and is_step(record):
            if last_step is None:
                last_step = record
            for key, value in record["data"].items():
                last.setdefault(key, value)
    if end is not None:
        status = str(end.get("status"))
        last_time = float(end.get("end_time") or start["start_time"])
    else:
        # Who writes the run now: its first process, or the one that resumed it last.
        alive = writer_state(start) is WriterState.ALIVE
        if not alive:
            if resume is None:
                resume = last_resume(snapshot)
            alive = resume is not None and writer_state(resume) is WriterState.ALIVE
        status = RUNNING if alive else INCOMPLETE
        last_time = float(last_step["time"]) if last_step else float(start["start_time"])
    return RunHeader(
        path=snapshot.path,
        run_id=str(start.get("run_id")),
        experiment=str(start.get("experiment")),
        start_time=float(start["start_time"]),
        status=status,
        steps=int(last_step["step"]) + 1 if last_step else 0,
        last_time=last_time,
        last=last,
        config=start.get("config") or {},
        summary=_summary(snapshot, end),
        stats=(end or {}).get("stats"),
        host=start.get("host"),
        pid=start.get("pid"),
        torn=snapshot.torn,
        ended=end is not None,
        group=_text(start.get("group")),
        tags=_tags(start.get("tags")),
        rank=_int(start.get("rank")),
        world_size=_int(start.get("world_size")),
        segments=1 + _int((resume or {}).get("segment"), 0),
    )


def _summary(snapshot: RunSnapshot, end: dict[str, Any] | None) -> dict[str, Any]:
    """The run's summary as it stands: its last end's, unless that end could not know
    it (none yet, or a writer process's ``"killed"`` end): then the last one a segment
    ended with (searched for only then: an end a tracker wrote carries the summary on)."""
    if end is not None and (end.get("summary") or end.get("status") != KILLED):
        summary = end.get("summary")
        return summary if isinstance(summary, dict) else {}
    return last_summary(snapshot)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _tags(value: Any) -> tuple[str, ...]:
    return tuple(t for t in value if isinstance(t, str)) if isinstance(value, list) else ()


def _int(value: Any, default: int | None = None) -> Any:
    return value if type(value) is int else default


_RESUME_LINE = b'\n{"type":"' + RESUME.encode() + b'"'
_RUN_END_LINE = b'\n{"type":"' + RUN_END.encode() + b'"'


def last_resume(snapshot: RunSnapshot) -> dict[str, Any] | None:
    """The snapshot's last resume record, or ``None`` if the run was never resumed.

    Searches backwards for a line that starts with the record's type (step records start
    with ``{"step"``), so a never-resumed file is read once, at memory speed, and a
    resumed one only back to its last resume; once per snapshot (the answer is kept in
    it).
    """
    if not snapshot.resume_known:
        snapshot.resume = _search_resume(snapshot)
        snapshot.resume_known = True
    return snapshot.resume


def run_config(snapshot: RunSnapshot) -> dict[str, Any]:
    """The run's config as it stands: the last resume record's (the resuming ``init``'s
    config merged over the run's), else the run-start record's. The one answer that
    ``read_run``, ``scan``, ``show``, ``compare`` and ``init(resume=...)`` give."""
    config = (last_resume(snapshot) or snapshot.start).get("config")
    return config if isinstance(config, dict) else {}


def last_summary(snapshot: RunSnapshot) -> dict[str, Any]:
    """The summary of the snapshot's last run-end record that has one, or ``{}``.

    A segment killed before it could end (no run-end record), or ended by the writer
    process of ``durability="process"`` (a ``"killed"`` run end, which cannot know the
    summary), leaves the run's summary as the last segment that ended with one had it:
    what ``read_run`` reports and what ``init(resume=...)`` starts ``tracker.summary``
    from.
    """
    record = _search_back(
        snapshot, _RUN_END_LINE, lambda r: r.get("type") == RUN_END and bool(r.get("summary"))
    )
    summary = (record or {}).get("summary")
    return dict(summary) if isinstance(summary, dict) else {}


def _search_resume(snapshot: RunSnapshot) -> dict[str, Any] | None:
    return _search_back(snapshot, _RESUME_LINE, lambda r: r.get("type") == RESUME)


def _search_back(
    snapshot: RunSnapshot, needle: bytes, accept: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    """The last record of the snapshot whose line starts with ``needle`` (which begins
    with the newline before it) and that ``accept`` takes; read backwards in chunks."""
    with open(snapshot.path, "rb") as f:
        end = snapshot.end
        while end > snapshot.body:
            offset = max(snapshot.body - 1, end - CHUNK_BYTES)
            f.seek(offset)
            data = f.read(end - offset)
            hit = data.rfind(needle)
            if hit >= 0:
                line_end = data.find(b"\n", hit + 1)
                if line_end < 0:  # the line runs past this chunk: read it whole
                    f.seek(offset + hit + 1)
                    line = f.readline()
                else:
                    line = data[hit + 1 : line_end]
                record = parse_line(line)
                if record is not None and accept(record):
                    return record
                end = offset + hit  # not a match after all: search before it
                continue
            if offset <= snapshot.body - 1:
                return None
            end = offset + len(needle)  # a match may straddle the chunk boundary
    return None


def last_steps(snapshot: RunSnapshot, count: int) -> list[dict[str, Any]]:
    """The last ``count`` step records of the snapshot.

    Reads backwards from the end in growing blocks, so a long file is not read whole.
    Corrupt lines after the first record returned (or anywhere, when the whole file
    was read) go into ``snapshot.corrupt``.
    """
    path, end = snapshot.path, snapshot.end
    with open(path, "rb") as f:
        block = TAIL_BYTES
        while True:
            offset = max(snapshot.body, end - block)
            f.seek(offset)
            data = f.read(end - offset)
            lines = data.split(b"\n")
            first = 1 if offset > snapshot.body else 0  # the first piece starts mid-line
            steps: list[tuple[int, dict[str, Any]]] = []
            corrupt: list[int] = []
            for index in range(first, len(lines)):
                try:
                    record = parse_record(lines[index])
                except CorruptLineError:
                    corrupt.append(index)
                    continue
                if record is not None and "type" not in record:
                    steps.append((index, record))
            whole = offset == snapshot.body
            if len(steps) >= count or whole:
                chosen = steps[-count:] if count else []
                if count == 0:
                    corrupt = []
                elif not (whole and len(steps) <= count):  # the lines shown, not before
                    corrupt = [i for i in corrupt if i > chosen[0][0]]
                if corrupt:
                    base = line_number(path, offset)  # the number of lines[0]
                    snapshot.corrupt.update(base + i for i in corrupt)
                return [record for _, record in chosen]
            block *= 4


def iter_line_blocks(
    snapshot: RunSnapshot,
    progress: Callable[[int], None] | None = None,
    *,
    start: int | None = None,
) -> Iterator[list[bytes]]:
    """The lines of the snapshot after the run-start line (line 2 onwards), a block of
    lines per chunk read (about ``CHUNK_BYTES``); from byte ``start`` (the first byte of
    a line) instead, if given. Readers that work on many lines at once (the columnar
    reader) take the blocks; the others take :func:`iter_lines`."""
    begin = snapshot.body if start is None else start
    with open(snapshot.path, "rb") as f:
        f.seek(begin)
        left = snapshot.end - begin
        rest = b""
        while left > 0 and (chunk := f.read(min(CHUNK_BYTES, left))):
            left -= len(chunk)
            if progress is not None:
                progress(len(chunk))
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            if lines:
                yield lines
        if rest:
            yield [rest]  # a whole record without its newline (see open_run)


def iter_lines(
    snapshot: RunSnapshot,
    progress: Callable[[int], None] | None = None,
    *,
    start: int | None = None,
) -> Iterator[bytes]:
    """The lines of the snapshot after the run-start line (line 2 onwards), read in
    large chunks; from byte ``start`` (the first byte of a line) instead, if given."""
    for lines in iter_line_blocks(snapshot, progress, start=start):
        yield from lines


def iter_steps(
    snapshot: RunSnapshot,
    progress: Callable[[int], None] | None = None,
    *,
    others: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Step records of the snapshot (``{"step", "time", "data"}``), in file order.

    Corrupt lines are skipped and their numbers added to ``snapshot.corrupt``. Records
    with a ``type`` (run end, system samples, alerts, newer kinds) are skipped, or
    handed to ``others`` (decoded) as they come.
    """
    lines = iter_lines(snapshot, progress)
    return step_records(lines, 2, snapshot.corrupt, others=others)


def step_records(
    lines: Iterable[bytes],
    first: int,
    corrupt: set[int],
    *,
    others: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """The step records among ``lines`` (line number ``first`` onwards): the one rule
    for what is a step, what is another record (to ``others``, if given) and what is a
    corrupt line (its number into ``corrupt``)."""
    loads = orjson.loads
    for number, line in enumerate(lines, start=first):
        # The hot loop of show/export/compare/plot on long runs: orjson straight on
        # the line, the tag-decoding walk only where a tagged value ($float, $int) is.
        if not line:
            continue
        try:
            record = loads(line)
        except orjson.JSONDecodeError:
            if line.strip():
                corrupt.add(number)
            continue
        if type(record) is not dict:
            corrupt.add(number)
            continue
        if b'"$' in line:
            record = decode(record)
        if "type" in record:
            if others is not None:
                others(record)
            continue  # run end, or a record type of a newer minor version
        when = record.get("time")
        if (
            type(record.get("step")) is int
            and type(record.get("data")) is dict
            and (type(when) is float or type(when) is int)  # is_step's rule, inlined
        ):
            yield record
        else:
            corrupt.add(number)


@dataclasses.dataclass(slots=True)
class MetricStats:
    """Running statistics of one key over a run."""

    count: int = 0
    first: Any = None
    last: Any = None
    numeric: int = 0
    nan: int = 0
    inf: int = 0
    min: float = math.inf
    min_step: int | None = None
    max: float = -math.inf
    max_step: int | None = None
    total: float = 0.0
    finite: int = 0

    def add(self, step: int, value: Any) -> None:
        if self.count == 0:
            self.first = value
        self.count += 1
        self.last = value
        if type(value) is not float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return
            try:
                value = float(value)
            except OverflowError:  # an int beyond float range (stored as a $int tag)
                value = math.inf if value > 0 else -math.inf
        self.numeric += 1
        if value - value != 0:  # NaN or ±inf (and never true for finite values)
            if value != value:
                self.nan += 1
            else:
                self.inf += 1
            return
        self.finite += 1
        self.total += value
        if value < self.min:
            self.min, self.min_step = value, step
        if value > self.max:
            self.max, self.max_step = value, step

    @property
    def mean(self) -> float | None:
        return self.total / self.finite if self.finite else None


@dataclasses.dataclass(slots=True)
class StepScan:
    """What one pass over a snapshot's step records found."""

    metrics: dict[str, MetricStats]
    records: int = 0
    last_step: int | None = None  # the step of the last record
    others: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # typed records

    def last_resume(self) -> dict[str, Any] | None:
        """The last resume record met, or ``None`` (a run never resumed)."""
        return next((r for r in reversed(self.others) if r.get("type") == RESUME), None)

    def config(self, start: Mapping[str, Any]) -> dict[str, Any]:
        """The run's config as it stands: the last resume record's (the resuming
        ``init``'s config merged over the run's), else the run-start record ``start``'s."""
        config = (self.last_resume() or start).get("config")
        return config if isinstance(config, dict) else {}

    def segment_statuses(self) -> list[str]:
        """How each segment of the run ended, in order (one unless it was resumed)."""
        statuses = [INCOMPLETE]
        for record in self.others:
            kind = record.get("type")
            if kind == RESUME:
                statuses.append(INCOMPLETE)
            elif kind == RUN_END:
                statuses[-1] = str(record.get("status"))
        return statuses


def metric_stats(
    snapshot: RunSnapshot,
    progress: Callable[[int], None] | None = None,
    *,
    into: dict[str, MetricStats] | None = None,
    monitor: MonitorScan | None = None,
) -> StepScan:
    """Per-key statistics over every step record of the snapshot (added to ``into``, if
    given: statistics over several runs, such as the ranks of a group), and into
    ``monitor`` its system samples and alerts, in the same pass."""
    stats: dict[str, MetricStats] = {} if into is None else into
    records = 0
    step: int | None = None
    others: list[dict[str, Any]] = []

    def other(record: dict[str, Any]) -> None:
        others.append(record)
        if monitor is not None:
            monitor.add(record)

    for record in iter_steps(snapshot, progress, others=other):
        records += 1
        step = record["step"]
        for key, value in flat_data(record["data"]).items():
            entry = stats.get(key)
            if entry is None:
                entry = stats[key] = MetricStats()
            entry.add(step, value)
    return StepScan(stats, records, step, others)


@dataclasses.dataclass(frozen=True, slots=True)
class RunSegment:
    """One stretch of a run written by one process: the whole run, unless it was
    resumed (``init(resume=...)``), which starts a new segment.

    Attributes:
        number: 0 for the run's start, 1 for the first resume, and so on.
        start_time: When the segment started (the run started, or was resumed).
        end_time: When it ended, or ``None`` (no run-end record: killed, or running).
        status: How it ended: a run-end status, or ``"incomplete"``.
        first_step: The step the segment started from.
        pid: The process that wrote it.
        host: The machine it ran on.
    """

    number: int
    start_time: float
    end_time: float | None
    status: str
    first_step: int
    pid: int | None
    host: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class SystemSample:
    """One system-metrics sample of a run (``Tracker(system_metrics=)``).

    Attributes:
        time: Wall-clock time of the sample.
        events: Events logged by then.
        data: ``cpu_percent``, ``rss_mb`` (``max_rss_mb`` off Linux), ``steps_per_s``,
            and per GPU ``gpu<i>.util_percent``, ``gpu<i>.mem_mb``, ``gpu<i>.power_w``.
    """

    time: float
    events: int
    data: dict[str, Any]


def alert_of(record: Mapping[str, Any]) -> Alert:
    """The :class:`steplog.Alert` of an ``"alert"`` record (missing fields as ``None``)."""
    step = record.get("step")
    key = record.get("key")
    return Alert(
        watcher=str(record.get("watcher")),
        key=key if isinstance(key, str) else None,
        value=record.get("value"),
        step=step if type(step) is int else None,
        time=float(record.get("time") or 0.0),
        message=str(record.get("message") or ""),
        suppressed=int(record.get("suppressed") or 0),
    )


def _sample_of(record: Mapping[str, Any]) -> SystemSample | None:
    data, when = record.get("data"), record.get("time")
    if type(data) is not dict or not isinstance(when, (int, float)):
        return None
    events = record.get("events")
    return SystemSample(float(when), events if type(events) is int else 0, data)


@dataclasses.dataclass(slots=True)
class MonitorScan:
    """System samples and alerts met by a streaming pass (``metric_stats(monitor=)``).

    Attributes:
        system: Per system key, its statistics (the "step" of a value is the count of
            events logged by then).
        samples: System samples read.
        alerts: The alerts, in file order.
    """

    system: dict[str, MetricStats] = dataclasses.field(default_factory=dict)
    samples: int = 0
    alerts: list[Alert] = dataclasses.field(default_factory=list)

    def add(self, record: dict[str, Any]) -> None:
        """Take one typed record (others are ignored)."""
        kind = record.get("type")
        if kind == SYSTEM:
            sample = _sample_of(record)
            if sample is None:
                return
            self.samples += 1
            for key, value in flat_data(sample.data).items():
                entry = self.system.get(key)
                if entry is None:
                    entry = self.system[key] = MetricStats()
                entry.add(sample.events, value)
        elif kind == ALERT:
            self.alerts.append(alert_of(record))


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """A run read back from its JSONL file.

    Attributes:
        path: The file that was read.
        run_id: The run's id.
        experiment: The experiment name.
        config: The merged config recorded at ``init()``.
        records: One :class:`steplog.Event` per ``log()`` call, in file order.
        history: Per key, its values in file order (only events that have the key).
        summary: The summary passed to ``finish()``; of a resumed run, the last one a
            segment ended with (a segment killed before its end keeps the one before;
            see :func:`last_summary`); empty if no segment ended with one.
        status: The end status, or ``"incomplete"`` if the file has no run-end record
            (still being written, or the writer was killed).
        stats: The run statistics from the run-end record, or ``None``.
        start_time: Wall-clock start time.
        end_time: Wall-clock end time, or ``None``.
        torn: Whether the last line was cut short (a writer killed mid-write); it is
            skipped.
        schema: The record schema version of the file.
        group: The run's group (see ``Tracker(group=)``), or ``None``.
        tags: The run's tags.
        rank: The rank of the process in a distributed job, or ``None``.
        world_size: The number of processes in that job, or ``None``.
        segments: The run's segments, one per process that wrote it: one unless it was
            resumed; their statuses are its status history.
        system: The system-metrics samples (``Tracker(system_metrics=)``), in order.
        alerts: The alerts the run's watchers fired, in order.
    """

    path: Path
    run_id: str
    experiment: str
    config: Mapping[str, Any]
    records: list[Event]
    history: dict[str, list[Any]]
    summary: Mapping[str, Any]
    status: str
    stats: RunStats | None
    start_time: float
    end_time: float | None
    torn: bool
    schema: int
    group: str | None = None
    tags: tuple[str, ...] = ()
    rank: int | None = None
    world_size: int | None = None
    segments: tuple[RunSegment, ...] = ()
    system: list[SystemSample] = dataclasses.field(default_factory=list)
    alerts: list[Alert] = dataclasses.field(default_factory=list)

    def series(self, key: str) -> list[tuple[int, Any]]:
        """Return ``(step, value)`` pairs for ``key``, in file order."""
        return [(e.step, e.data[key]) for e in self.records if key in e.data]

    def system_series(self, key: str) -> list[tuple[float, Any]]:
        """Return ``(time, value)`` pairs of a system metric (``"rss_mb"``), in order."""
        return [(s.time, s.data[key]) for s in self.system if key in s.data]

    def to_numpy(self, keys: str | Sequence[str] | None = None) -> dict[str, Any]:
        """The run's steps as columns: a dict of column name → ``numpy.ndarray``.

        The columns are ``step`` (int64), ``time`` (float64) and one per key (nested
        keys dotted: ``eval.acc``), in first-seen order; a step without the key has
        NaN there (``None`` in an object column). Column types and the rules for
        mixed values are in docs/dataframes.md. For a long run, read the columns
        straight from the file instead: :func:`steplog.scan` (``backend="numpy"``).

        Args:
            keys: The data keys to keep (a single string is one key); ``None``: all.

        Raises:
            KeyError: A key of ``keys`` is in no step record of the run.
            MissingExtraError: numpy is not installed (``pip install "steplog[numpy]"``).
        """
        from .columns import frame_of_events, key_list, numpy_columns

        return numpy_columns(frame_of_events(self.records, key_list(keys)))

    def to_pandas(self, keys: str | Sequence[str] | None = None) -> Any:
        """The run's steps as a ``pandas.DataFrame``: ``step``, ``time`` and one column
        per key, as :meth:`to_numpy` describes.

        Raises:
            KeyError: A key of ``keys`` is in no step record of the run.
            MissingExtraError: pandas is not installed (``pip install "steplog[pandas]"``).
        """
        from .columns import frame_of_events, key_list, to_pandas

        return to_pandas(frame_of_events(self.records, key_list(keys)))

    def to_polars(self, keys: str | Sequence[str] | None = None) -> Any:
        """The run's steps as a ``polars.DataFrame``: ``step``, ``time`` and one column
        per key; a step without the key has null there (a logged NaN stays NaN).

        Raises:
            KeyError: A key of ``keys`` is in no step record of the run.
            MissingExtraError: polars is not installed (``pip install "steplog[polars]"``).
        """
        from .columns import frame_of_events, key_list, to_polars

        return to_polars(frame_of_events(self.records, key_list(keys)))


def read_run(path: str | os.PathLike[str]) -> Run:
    """Read a run written by :class:`steplog.JsonlBackend`, strictly.

    A torn last line (the writer was killed mid-write) is skipped and reported in
    :attr:`Run.torn`; NaN, ±infinity and big integers come back as themselves.

    It builds an :class:`~steplog.Event` per step and a list per key: for a long run
    whose columns are what you want, :func:`steplog.scan` reads them straight from the
    file, in a fraction of the time and memory (docs/dataframes.md).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RunFileError: The file is not a steplog run, or a line other than the last is
            corrupt (its number is in the message).
    """
    with gc_paused():  # a long run is millions of records
        return _read_run(Path(path))


def _read_run(path: Path) -> Run:
    try:
        snapshot = open_run(path)
    except ValueError as exc:
        raise RunFileError(str(exc)) from None
    start = snapshot.start
    schema = start.get("schema")
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise RunFileError(
            f"{path}: record schema {schema!r} is not supported by this steplog "
            f"(it reads versions up to {SCHEMA_VERSION}); upgrade steplog"
        )
    missing = [k for k in ("run_id", "experiment", "start_time") if k not in start]
    if missing:
        raise RunFileError(f"{path}:1: the run-start record lacks {', '.join(missing)}")
    records: list[Event] = []
    history: dict[str, list[Any]] = {}
    end: dict[str, Any] | None = None
    config: dict[str, Any] = start.get("config") or {}
    summary: dict[str, Any] = {}  # the last run end's that has one (see last_summary)
    segments: list[RunSegment] = [
        RunSegment(
            0, start["start_time"], None, INCOMPLETE, 0, _int(start.get("pid")), start.get("host")
        )
    ]
    system: list[SystemSample] = []
    alerts: list[Alert] = []
    loads = orjson.loads
    for number, line in enumerate(iter_lines(snapshot), start=2):
        # parse_record's rules, with its common case inlined (the loop of long runs).
        try:
            record = loads(line)
            if b'"$' in line:
                record = decode(record)
            step, time, data = record["step"], record["time"], record["data"]
            good = type(step) is int and type(data) is dict and "type" not in record
            good = good and (type(time) is float or is_step(record))
        except Exception:  # not JSON, not an object, a run-end or newer record, blank
            good = False
        if not good:
            try:
                record = parse_record(line)
            except CorruptLineError as exc:
                raise RunFileError(f"{path}:{number}: {exc}") from None
            if record is None:
                continue
            kind = record.get("type")
            if kind == RUN_END:
                end = record
                segments[-1] = _ended(segments[-1], record)
                if record.get("summary"):
                    summary = record["summary"]
            elif kind == RESUME:
                end = None
                segments.append(_segment(record, len(segments), path, number))
                given = record.get("config")
                config = given if isinstance(given, dict) else config
            elif kind == SYSTEM:
                sample = _sample_of(record)
                if sample is not None:
                    system.append(sample)
            elif kind == ALERT:
                alerts.append(alert_of(record))
            continue  # record types from newer minor versions are skipped
        records.append(Event(step, time, data))
        for key, value in data.items():
            series = history.get(key)
            if series is None:
                history[key] = [value]
            else:
                series.append(value)
    if end is not None and not isinstance(end.get("status"), str):
        raise RunFileError(f"{path}: the run-end record has no status")
    if end is not None and not isinstance(end.get("stats") or {}, dict):
        raise RunFileError(f"{path}: the run-end record's stats are not an object")
    return Run(
        path=path,
        run_id=start["run_id"],
        experiment=start["experiment"],
        config=config,
        records=records,
        history=history,
        summary=summary,
        status=end["status"] if end else INCOMPLETE,
        stats=RunStats.from_dict(end["stats"]) if end and end.get("stats") else None,
        start_time=start["start_time"],
        end_time=end.get("end_time") if end else None,
        torn=snapshot.torn,
        schema=schema,
        group=_text(start.get("group")),
        tags=_tags(start.get("tags")),
        rank=_int(start.get("rank")),
        world_size=_int(start.get("world_size")),
        segments=tuple(segments),
        system=system,
        alerts=alerts,
    )


def _ended(segment: RunSegment, end: dict[str, Any]) -> RunSegment:
    when: Any = end.get("end_time")
    return dataclasses.replace(
        segment,
        end_time=float(when) if is_number(when) else None,
        status=str(end.get("status")),
    )


def _segment(record: dict[str, Any], number: int, path: Path, line: int) -> RunSegment:
    when: Any = record.get("time")
    step = record.get("step")
    if not is_number(when) or type(step) is not int:
        raise RunFileError(f"{path}:{line}: a resume record needs a numeric 'time' and 'step'")
    return RunSegment(
        number, float(when), None, INCOMPLETE, step, _int(record.get("pid")), record.get("host")
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where ``init(resume=...)`` continues a run file (see :func:`resume_point`).

    Attributes:
        path: The run file.
        start: Its run-start record.
        config: The run's config (the start record's, or the last resume's).
        summary: The summary of the run's last end that had one, or ``{}``.
        next_step: One past the last step in the file (0 if it has none).
        segment: The number the new segment gets.
        previous_status: How the last segment ended (``"incomplete"`` if it did not).
        size: The file's size when it was inspected: the JSONL backend refuses to
            continue a file that has changed since.
    """

    path: Path
    start: dict[str, Any]
    config: dict[str, Any]
    summary: dict[str, Any]
    next_step: int
    segment: int
    previous_status: str
    size: int


#: How long ``init(resume=...)`` waits for the writer process of a killed run
#: (``durability="process"``) to finish draining it, in seconds.
RESUME_WAIT = 10.0


def resume_point(path: Path, *, wait: float = RESUME_WAIT) -> ResumePoint:
    """Inspect the run file at ``path`` for resuming it, holding its writer's lock
    (:mod:`steplog.runfile.lock`) while it does.

    A file whose lock is held by a process that is gone here (the writer process of a
    ``durability="process"`` run, still draining after its parent was killed) is waited
    for, up to ``wait`` seconds.

    Raises:
        RunFileError: The file is not a steplog run, or it is still being written.
        OSError: It cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if not lock(fd):
            _wait_for_writer(fd, path, wait)
        try:
            snapshot = open_run(path)  # as it is now that nobody writes it
        except ValueError as exc:
            raise RunFileError(str(exc)) from None
        header = read_header(snapshot)
        if not LOCKS and header.status == RUNNING:  # pragma: no cover - not POSIX
            writer = last_resume(snapshot) or snapshot.start
            raise RunFileError(
                f"{path}: run {header.run_id} is still being written by process "
                f"{writer.get('pid')} on this host; resume it once that has ended"
            )
        steps = last_steps(snapshot, 1)
        resumed = last_resume(snapshot)
        return ResumePoint(
            path=path,
            start=snapshot.start,
            config=run_config(snapshot),
            summary=last_summary(snapshot),
            next_step=steps[0]["step"] + 1 if steps else 0,
            segment=_int((resumed or {}).get("segment"), 0) + 1,
            previous_status=header.status if header.ended else INCOMPLETE,
            size=os.fstat(fd).st_size,
        )
    finally:
        os.close(fd)  # and the lock with it: the JSONL backend takes it again


def _wait_for_writer(fd: int, path: Path, wait: float) -> None:
    """Wait, up to ``wait`` seconds, for the run file's lock (open at ``fd``) to be free,
    and take it.

    Only the writer process of a killed ``durability="process"`` run, still draining
    it, is waited for. A live writer (another process, or this very one) is refused at
    once, and so is any other process that holds the lock (one that inherited the file
    from its writer): the error names it, with its command line.

    Raises:
        RunFileError: The file is still being written or held (or is not a run).
    """
    try:
        snapshot = open_run(path)
    except ValueError as exc:
        raise RunFileError(str(exc)) from None
    writer = last_resume(snapshot) or snapshot.start
    run = f"{path}: run {snapshot.start.get('run_id')}"
    deadline = time.monotonic() + wait
    while not lock(fd):
        held = holders(path)
        if held == []:  # let go meanwhile: try again
            continue
        named = ", ".join(map(str, held or ()))
        if writer_state(writer) is WriterState.ALIVE:
            who = named or f"process {writer.get('pid')}"
            raise RunFileError(
                f"{run} is still being written by {who}; resume it once that has ended"
            )
        if held is not None and not any(h.writer_process for h in held):
            raise RunFileError(
                f"{run} is held by {named}, not by its writer (pid {writer.get('pid')}, "
                "gone): a process that inherited the run file from it keeps the "
                "writer's lock; end that process, then resume"
            )
        if time.monotonic() >= deadline:
            who = named or "its writer process"
            raise RunFileError(
                f"{run} is still being written by {who} after {wait:g} s; resume it once "
                "that has ended"
            )
        time.sleep(0.05)
