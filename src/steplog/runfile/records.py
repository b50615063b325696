"""What a line of a run file is: THE rules every reader applies (``read_run``, the
snapshot readers, the lanes, ``steplog tail``).

A line is decoded by :func:`parse_line` (values tagged by :mod:`.codec` come back as
themselves) and checked by :func:`parse_record`: a blank line, a corrupt one
(:class:`CorruptLineError`), a step record (no ``type``: an integer ``step``, a
numeric ``time``, an object ``data``), or a typed record. :func:`kind_of` says which
(:class:`RecordKind`: step, run start, resume, system sample, alert, run end, or a type
this version does not know, which every reader skips); readers dispatch on it.
:func:`step_records` is the same rule for a stream of lines; readers whose hot loop
inlines the common case (a step record) say so and fall back to :func:`parse_record`
for everything else. :func:`alert_of` and :func:`sample_of` turn the typed records
into values.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson

from ..watch import Alert
from .codec import decode
from .schema import ALERT, RESUME, RUN_END, RUN_START, SYSTEM, is_step

__all__ = [
    "CorruptLineError",
    "RecordKind",
    "SystemSample",
    "alert_of",
    "int_of",
    "is_whole_record",
    "kind_of",
    "parse_line",
    "parse_record",
    "sample_of",
    "step_records",
    "tags_of",
    "text_of",
]


class RecordKind(enum.Enum):
    """What a decoded record is: the one classification every reader dispatches on
    (:func:`kind_of`)."""

    STEP = "step"  # no ``type``: one ``log()`` call
    RUN_START = RUN_START  # the first line
    RESUME = RESUME  # starts a resumed run's new segment
    SYSTEM = SYSTEM  # a system-metrics sample
    ALERT = ALERT  # an alert a watcher fired
    RUN_END = RUN_END  # ends the run (or a segment of a resumed one)
    OTHER = "other"  # a type of a newer minor version: every reader skips it


_KINDS = {kind.value: kind for kind in RecordKind if kind is not RecordKind.STEP}


def kind_of(record: Mapping[str, Any]) -> RecordKind:
    """The kind of a decoded record (a step record is one without a ``type``; whether it
    is a valid one is :func:`parse_record`'s question)."""
    if "type" not in record:
        return RecordKind.STEP
    kind = record["type"]
    return _KINDS.get(kind, RecordKind.OTHER) if isinstance(kind, str) else RecordKind.OTHER


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


def is_whole_record(line: bytes) -> bool:
    """Whether ``line``, a last line without its newline, is a whole record (a JSON
    object) and so counts as complete; else it is torn (its writer killed mid-line, or
    still writing it)."""
    if not line.strip():
        return False
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


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


def sample_of(record: Mapping[str, Any]) -> SystemSample | None:
    data, when = record.get("data"), record.get("time")
    if type(data) is not dict or not isinstance(when, (int, float)):
        return None
    events = record.get("events")
    return SystemSample(float(when), events if type(events) is int else 0, data)


def text_of(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def tags_of(value: Any) -> tuple[str, ...]:
    return tuple(t for t in value if isinstance(t, str)) if isinstance(value, list) else ()


def int_of(value: Any, default: int | None = None) -> Any:
    return value if type(value) is int else default
