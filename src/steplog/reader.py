"""Reading a JSONL run file back."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from ._values import decode
from .backends.jsonl import SCHEMA_VERSION
from .errors import RunFileError
from .events import Event, RunStats

__all__ = ["Run", "RunFileError", "read_run"]

#: Status reported for a file that has no run-end record: the writer is still running,
#: or was killed before it could finish the run.
INCOMPLETE = "incomplete"


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
        summary: The summary passed to ``finish()`` (empty if the run did not finish).
        status: The end status, or ``"incomplete"`` if the file has no run-end record
            (still being written, or the writer was killed).
        stats: The run statistics from the run-end record, or ``None``.
        start_time: Wall-clock start time.
        end_time: Wall-clock end time, or ``None``.
        torn: Whether the last line was cut short (a writer killed mid-write); it is
            skipped.
        schema: The record schema version of the file.
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

    def series(self, key: str) -> list[tuple[int, Any]]:
        """Return ``(step, value)`` pairs for ``key``, in file order."""
        return [(e.step, e.data[key]) for e in self.records if key in e.data]


def read_run(path: str | os.PathLike[str]) -> Run:
    """Read a run written by :class:`steplog.JsonlBackend`.

    A torn last line (the writer was killed mid-write) is skipped and reported in
    :attr:`Run.torn`; NaN, ±infinity and big integers come back as themselves.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RunFileError: The file is not a steplog run, or a line other than the last is
            corrupt.
    """
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    # A complete file ends with a newline: the last piece is empty. Anything else is
    # a last line the writer did not finish.
    tail = lines.pop()
    torn = False
    if tail.strip():
        try:
            orjson.loads(tail)
        except orjson.JSONDecodeError:
            torn = True
        else:
            lines.append(tail)
    if not lines or not lines[0].strip():
        raise RunFileError(f"{path}: empty file, not a steplog run")
    start = _parse(path, 1, lines[0])
    if start.get("type") != "run_start":
        raise RunFileError(f"{path}: first line is not a steplog run-start record")
    schema = start.get("schema")
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise RunFileError(
            f"{path}: record schema {schema!r} is not supported by this steplog "
            f"(it reads versions up to {SCHEMA_VERSION}); upgrade steplog"
        )
    records: list[Event] = []
    history: dict[str, list[Any]] = {}
    end: dict[str, Any] | None = None
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        record = _parse(path, number, line)
        if "type" in record:
            if record["type"] == "run_end":
                end = record
            continue  # record types from newer minor versions are skipped
        step, time, data = record.get("step"), record.get("time"), record.get("data")
        if not (type(step) is int and isinstance(time, (int, float)) and isinstance(data, dict)):
            raise RunFileError(
                f"{path}:{number}: a step record needs an integer 'step', a numeric 'time' "
                f"and an object 'data'"
            )
        records.append(Event(step, time, data))
        for key, value in data.items():
            series = history.get(key)
            if series is None:
                history[key] = [value]
            else:
                series.append(value)
    missing = [k for k in ("run_id", "experiment", "start_time") if k not in start]
    if missing:
        raise RunFileError(f"{path}:1: the run-start record lacks {', '.join(missing)}")
    if end is not None and not isinstance(end.get("status"), str):
        raise RunFileError(f"{path}: the run-end record has no status")
    if end is not None and not isinstance(end.get("stats") or {}, dict):
        raise RunFileError(f"{path}: the run-end record's stats are not an object")
    return Run(
        path=path,
        run_id=start["run_id"],
        experiment=start["experiment"],
        config=start.get("config") or {},
        records=records,
        history=history,
        summary=(end or {}).get("summary") or {},
        status=end["status"] if end else INCOMPLETE,
        stats=RunStats.from_dict(end["stats"]) if end and end.get("stats") else None,
        start_time=start["start_time"],
        end_time=end.get("end_time") if end else None,
        torn=torn,
        schema=schema,
    )


def _parse(path: Path, number: int, line: bytes) -> dict[str, Any]:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise RunFileError(f"{path}:{number}: corrupt record ({exc})") from None
    if not isinstance(record, dict):
        raise RunFileError(f"{path}:{number}: a record must be a JSON object")
    if b'"$' in line:  # only lines with tagged values need the slower decoding walk
        decoded: dict[str, Any] = decode(record)
        return decoded
    return record
