"""Finding run files and reading them fast: headers from the first and last lines,
step records as a stream (for files too large to load at once, or still being written).

Every reader works on a :class:`RunSnapshot`: the file up to the end of its last
complete line when the command opened it. A command that reads a file several times
(the header, then every record; export's two passes) so describes one set of records
while another process keeps appending. The rule for damaged lines, shared by the
commands: a corrupt line before the end of the snapshot is skipped and its number
collected (the command warns about it); a torn last line — the writer killed mid-line,
or still writing — is left out silently. ``read_run`` raises for the first kind.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from ._values import decode

__all__ = [
    "CorruptLineError",
    "MetricStats",
    "RunHeader",
    "RunNotFoundError",
    "RunSnapshot",
    "StepScan",
    "WriterState",
    "find_runs",
    "flat_data",
    "iter_lines",
    "iter_steps",
    "last_steps",
    "line_number",
    "metric_stats",
    "open_run",
    "parse_line",
    "parse_record",
    "read_header",
    "resolve_run",
    "writer_state",
]

TAIL_BYTES = 64 * 1024
CHUNK_BYTES = 4 * 1024 * 1024


class RunNotFoundError(LookupError):
    """No run file matches what the user asked for (or more than one does)."""


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
        raise CorruptLineError("not a JSON object")
    if "type" not in record and not _is_step(record):
        raise CorruptLineError("not a step record")
    return record


def _is_step(record: dict[str, Any]) -> bool:
    return (
        type(record.get("step")) is int
        and isinstance(record.get("time"), (int, float))
        and type(record.get("data")) is dict
    )


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
    """

    path: Path
    start: dict[str, Any]
    body: int
    end: int
    torn: bool
    corrupt: set[int] = dataclasses.field(default_factory=set)


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
        if start is None or start.get("type") != "run_start":
            raise ValueError(f"{path}: not a steplog run file")
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
    config: dict[str, Any]
    summary: dict[str, Any]
    stats: dict[str, Any] | None  # the run-end record's statistics
    host: str | None
    pid: int | None
    torn: bool  # the file ends in a line without its newline (killed or still writing)
    ended: bool  # the run-end record is there

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
    last_step: dict[str, Any] | None = None
    last: dict[str, Any] = {}
    for line in reversed(lines):
        record = parse_line(line)
        if record is None:
            continue
        kind = record.get("type")
        if kind == "run_end":
            end = record
        elif kind is None and _is_step(record):
            if last_step is None:
                last_step = record
            for key, value in record["data"].items():
                last.setdefault(key, value)
    if end is not None:
        status = str(end.get("status"))
        last_time = float(end.get("end_time") or start["start_time"])
    else:
        alive = writer_state(start) is WriterState.ALIVE
        status = "running" if alive else "incomplete"
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
        summary=(end or {}).get("summary") or {},
        stats=(end or {}).get("stats"),
        host=start.get("host"),
        pid=start.get("pid"),
        torn=snapshot.torn,
        ended=end is not None,
    )


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


def find_runs(root: Path) -> list[Path]:
    """Every ``*.jsonl`` file under ``root`` (``root/<experiment>/<run id>.jsonl``)."""
    if root.is_file():
        return [root]
    return sorted(root.rglob("*.jsonl"))


def resolve_run(spec: str, root: Path) -> Path:
    """Turn what the user typed into one run file.

    ``spec`` may be a file; a directory (its most recent run); ``latest``; a run id, a
    unique prefix of one, or ``experiment/run-id`` under ``root``.
    """
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        return _latest(find_runs(path), spec)
    if spec == "latest":
        return _latest(find_runs(root) if root.is_dir() else [], f"{root}/")
    if not root.is_dir():
        raise RunNotFoundError(f"no run file {spec!r}, and no run directory {str(root)!r}")
    experiment, _, run_id = spec.rpartition("/")
    matches = [
        p
        for p in find_runs(root)
        if p.stem.startswith(run_id) and (not experiment or p.parent.name == experiment)
    ]
    exact = [p for p in matches if p.stem == run_id]
    if len(exact) == 1:
        return exact[0]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunNotFoundError(f"no run matches {spec!r} under {str(root)!r}")
    names = ", ".join(str(p) for p in matches[:5])
    more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
    raise RunNotFoundError(f"{spec!r} matches {len(matches)} runs: {names}{more}")


def _latest(paths: list[Path], where: str) -> Path:
    if not paths:
        raise RunNotFoundError(f"no runs under {where!r}")
    return max(paths, key=lambda p: p.stat().st_mtime)


def iter_lines(
    snapshot: RunSnapshot, progress: Callable[[int], None] | None = None
) -> Iterator[bytes]:
    """The lines of the snapshot after the run-start line (line 2 onwards), read in
    large chunks."""
    with open(snapshot.path, "rb") as f:
        f.seek(snapshot.body)
        left = snapshot.end - snapshot.body
        rest = b""
        while left > 0 and (chunk := f.read(min(CHUNK_BYTES, left))):
            left -= len(chunk)
            if progress is not None:
                progress(len(chunk))
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            yield from lines
        if rest:
            yield rest  # a whole record without its newline (see open_run)


def iter_steps(
    snapshot: RunSnapshot, progress: Callable[[int], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Step records of the snapshot (``{"step", "time", "data"}``), in file order.

    Corrupt lines are skipped and their numbers added to ``snapshot.corrupt``.
    """
    loads = orjson.loads
    corrupt = snapshot.corrupt
    for number, line in enumerate(iter_lines(snapshot, progress), start=2):
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
        if "type" in record:
            continue  # run end, or a record type of a newer minor version
        if b'"$' in line:
            record = decode(record)
        when = record.get("time")
        if (
            type(record.get("step")) is int
            and type(record.get("data")) is dict
            and (type(when) is float or isinstance(when, (int, float)))
        ):
            yield record
        else:
            corrupt.add(number)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


def metric_stats(snapshot: RunSnapshot, progress: Callable[[int], None] | None = None) -> StepScan:
    """Per-key statistics over every step record of the snapshot."""
    stats: dict[str, MetricStats] = {}
    records = 0
    step: int | None = None
    for record in iter_steps(snapshot, progress):
        records += 1
        step = record["step"]
        for key, value in flat_data(record["data"]).items():
            entry = stats.get(key)
            if entry is None:
                entry = stats[key] = MetricStats()
            entry.add(step, value)
    return StepScan(stats, records, step)


def flat_data(data: dict[str, Any]) -> dict[str, Any]:
    """A step's data with dotted keys: ``data`` itself unless it holds a nested mapping
    (the common case, so long runs skip building a copy of every record)."""
    for value in data.values():
        if type(value) is dict:
            return flatten(data)
    return data


def flatten(data: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Nested mappings become joined keys: ``{"a": {"b": 1}}`` → ``{"a.b": 1}``.

    Empty mappings stay as values. Shared by the CLI and the backends that need flat
    keys (MLflow params and metrics, TensorBoard tags with ``sep="/"``).
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, sep, f"{name}{sep}"))
        else:
            out[name] = value
    return out
