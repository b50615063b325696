"""A run read back whole: :class:`steplog.Run` and :func:`steplog.read_run` (strict:
a corrupt line raises), with the segments of a resumed run (:class:`RunSegment`).

For columns rather than an :class:`~steplog.Event` per step, :mod:`.columns` reads the
file straight into arrays (``Run.to_pandas()`` and co use it on the records read)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from ..errors import RunFileError
from ..events import Event, RunStats
from ..watch import Alert
from .codec import decode
from .columns import frame_of_events, key_list, numpy_columns, to_pandas, to_polars
from .records import (
    CorruptLineError,
    RecordKind,
    SystemSample,
    alert_of,
    int_of,
    kind_of,
    parse_record,
    sample_of,
    tags_of,
    text_of,
)
from .schema import INCOMPLETE, SCHEMA_VERSION, is_number, is_step
from .snapshot import gc_paused, iter_lines, open_run

__all__ = ["Run", "RunSegment", "read_run"]


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

        return numpy_columns(frame_of_events(self.records, key_list(keys)))

    def to_pandas(self, keys: str | Sequence[str] | None = None) -> Any:
        """The run's steps as a ``pandas.DataFrame``: ``step``, ``time`` and one column
        per key, as :meth:`to_numpy` describes.

        Raises:
            KeyError: A key of ``keys`` is in no step record of the run.
            MissingExtraError: pandas is not installed (``pip install "steplog[pandas]"``).
        """

        return to_pandas(frame_of_events(self.records, key_list(keys)))

    def to_polars(self, keys: str | Sequence[str] | None = None) -> Any:
        """The run's steps as a ``polars.DataFrame``: ``step``, ``time`` and one column
        per key; a step without the key has null there (a logged NaN stays NaN).

        Raises:
            KeyError: A key of ``keys`` is in no step record of the run.
            MissingExtraError: polars is not installed (``pip install "steplog[polars]"``).
        """

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
    snapshot = open_run(path)
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
            0, start["start_time"], None, INCOMPLETE, 0, int_of(start.get("pid")), start.get("host")
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
            kind = kind_of(record)
            if kind is RecordKind.RUN_END:
                end = record
                segments[-1] = _ended(segments[-1], record)
                if record.get("summary"):
                    summary = record["summary"]
            elif kind is RecordKind.RESUME:
                end = None
                segments.append(_segment(record, len(segments), path, number))
                given = record.get("config")
                config = given if isinstance(given, dict) else config
            elif kind is RecordKind.SYSTEM:
                sample = sample_of(record)
                if sample is not None:
                    system.append(sample)
            elif kind is RecordKind.ALERT:
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
        group=text_of(start.get("group")),
        tags=tags_of(start.get("tags")),
        rank=int_of(start.get("rank")),
        world_size=int_of(start.get("world_size")),
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
        number, float(when), None, INCOMPLETE, step, int_of(record.get("pid")), record.get("host")
    )
